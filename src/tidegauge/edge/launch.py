"""Run ``tidegauge agent`` in a lean process: one that never imports the command line's libraries.

The agent's goal is under 100 MB resident when idle on a gateway. Parsing its ~25 flags with typer loads
typer, click, rich and pydantic (about 15 MB that stay resident for the agent's whole life). So
``tidegauge agent`` parses and validates its flags, builds the :class:`~tidegauge.edge.agent.AgentConfig`,
and :func:`exec_agent` replaces the process (same PID: signals, systemd and the benchmarks see one
process) with ``python -m tidegauge.edge.launch``, which reads the config and runs
:func:`~tidegauge.edge.agent.run_agent`. The config travels in an anonymous file (``memfd``, or an unlinked
temporary file) whose descriptor the new program inherits: the token stays out of ``ps`` and the
environment.

The lean process also keeps httpx from importing its own command line (``httpx._main``: click, rich and
pygments, ~8 MB), which the uplink never uses.

``--process same`` (``TIDEGAUGE_AGENT_PROCESS=same``) runs the agent in the CLI's process instead
(:func:`run`), as does a platform without ``os.execv`` semantics (Windows).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal, NoReturn

import msgspec

from tidegauge.edge.agent import AgentConfig

__all__ = ["LaunchConfig", "Process", "exec_agent", "main", "run"]

logger = logging.getLogger(__name__)

Process = Literal["lean", "same"]
"""Where ``tidegauge agent`` runs the agent: a re-executed lean process, or the CLI's own."""


class LaunchConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What the lean process runs: the agent's config and, instead of the default pipeline, a pipeline file."""

    agent: AgentConfig
    pipeline: str | None = None


def can_exec() -> bool:
    """``os.execv`` replaces the process (POSIX; on Windows it starts another one) and needs a Python to run."""
    return os.name == "posix" and bool(sys.executable)


def exec_agent(launch: LaunchConfig) -> NoReturn:
    """Replace this process with ``python -m tidegauge.edge.launch`` running ``launch``."""
    payload = msgspec.json.encode(launch)
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("tidegauge-agent-config", 0)  # no MFD_CLOEXEC: the new program inherits it
    else:
        fd = os.dup(tempfile.TemporaryFile().fileno())  # already unlinked: gone when the agent exits
    view = memoryview(payload)
    while view:  # a file takes it whole in practice; a short write must not cut the config
        view = view[os.write(fd, view):]
    os.set_inheritable(fd, True)
    args = [sys.executable, "-m", "tidegauge.edge.launch", f"--id={launch.agent.node_id}", f"--config-fd={fd}"]
    sys.stdout.flush()
    sys.stderr.flush()
    logger.debug("agent %s: re-executing as %s", launch.agent.node_id, " ".join(args))
    os.execv(sys.executable, args)


def run(launch: LaunchConfig) -> Any:
    """Run the agent in this process until SIGINT/SIGTERM (or the flow ends); returns the runner's result."""
    from tidegauge.edge.agent import run_agent

    config = launch.agent
    flow = None
    if launch.pipeline is not None:
        from tidegauge.edge.sink import agent_outbox
        from tidegauge.pipeline import build_pipeline, load_pipeline

        path = Path(launch.pipeline)
        parsed = load_pipeline(path)

        def flow(outbox: Any) -> Any:
            # `sink: {outbox: STREAM}` in the file writes to this agent's outbox
            with agent_outbox(outbox, config.streams):
                return build_pipeline(parsed, base_dir=path.parent).flow

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_agent(config, flow=flow, stop=stop)

    result = asyncio.run(main())
    print(f"agent {config.node_id}: {result.records_in:,} records in, {result.checkpoints} checkpoints", flush=True)
    return result


def _read(fd: int) -> LaunchConfig:
    with os.fdopen(fd, "rb") as f:
        f.seek(0)
        return msgspec.json.decode(f.read(), type=LaunchConfig)


def main(argv: list[str] | None = None) -> None:
    """``python -m tidegauge.edge.launch --config-fd N``: what :func:`exec_agent` runs.

    Errors are one line (``error: ...``, exit 2) as in the ``tidegauge`` command; ``TIDEGAUGE_DEBUG=1``
    shows the traceback.
    """
    from tidegauge.errors import TidegaugeError

    ap = argparse.ArgumentParser(prog="python -m tidegauge.edge.launch",
                                 description="The edge agent's lean process (started by `tidegauge agent`).")
    ap.add_argument("--config-fd", type=int, required=True, help="descriptor of the LaunchConfig (JSON)")
    ap.add_argument("--id", help="the agent's id (only so `ps` shows which agent this is)")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("TIDEGAUGE_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run(_read(args.config_fd))
    except (TidegaugeError, ValueError, TypeError, FileNotFoundError, OSError) as exc:
        if os.environ.get("TIDEGAUGE_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    # httpx imports its command line (click, rich, pygments) when importable: a None entry makes that import
    # fail, and httpx falls back to a stub `httpx.main` that the agent never calls
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    main()

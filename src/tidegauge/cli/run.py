"""``tidegauge run PIPELINE.yaml``: run a pipeline file until its sources are exhausted or Ctrl-C.

A file with a ``server:`` section is served too, dashboard included, as with ``tidegauge serve``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tidegauge.cli import app

logger = logging.getLogger(__name__)


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file.", envvar="TIDEGAUGE_PIPELINE",
                                             show_envvar=True)],
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option("--checkpoint-dir", help="Override checkpoint.dir of the file.",
                     envvar="TIDEGAUGE_CHECKPOINT_DIR", show_envvar=True),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.",
                                        envvar="TIDEGAUGE_QUIET", show_envvar=True)] = False,
) -> None:
    """Run a pipeline file. Restarts from its latest checkpoint when it has one."""
    from tidegauge.dataflow import CheckpointConfig, Runner
    from tidegauge.pipeline import build_pipeline, load_pipeline

    config = load_pipeline(pipeline)
    built = build_pipeline(config, base_dir=pipeline.parent)
    cp = built.checkpoint
    if checkpoint_dir is not None:
        cp = CheckpointConfig(checkpoint_dir, interval=cp.interval if cp else "10s", keep=cp.keep if cp else 3)
    console = Console()
    if config.server is not None:
        from tidegauge.cli.serve import run_served, served_pipeline

        served = served_pipeline(pipeline, config, built, checkpoint=cp)
        # serve() handles SIGINT/SIGTERM itself: stop accepting requests, then checkpoint and stop the flow
        result = run_served(served.runner, served.server, built.alerting, environ=os.environ, live=served.live)
        if not quiet:
            _summary(console, config.name, built.flow, result, built.alerting)
        return
    runner = Runner(built.flow, checkpoint=cp, max_batch=built.max_batch, max_delay=built.max_delay)
    if built.alerting is not None:
        built.alerting.attach(runner)

    signalled: list[int] = []

    def _stop(signum: int, frame: object) -> None:
        signalled.append(signum)
        runner.stop()

    # restored afterwards: the command may run inside another program (a test runner, a notebook)
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if quiet or not console.is_terminal:
            result = runner.run()
        else:
            result = asyncio.run(_run_with_progress(runner, built.flow, console))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if built.alerting is not None:
            # a run that ended on its own (its sources are done) has no later for group_wait to end in:
            # notify what waits; then deliver what is due once more and stop the delivery threads
            built.alerting.close(flush=not signalled)
    if not quiet:
        _summary(console, config.name, built.flow, result, built.alerting)


def _summary(console: Console, name: str, flow: Any, result: Any, alerting: Any = None) -> None:
    restored = f", resumed from checkpoint {result.restored_from}" if result.restored_from is not None else ""
    console.print(
        f"[bold]{name}[/]: {result.records_in:,} records in, "
        f"{sum(v for k, v in result.records_out.items() if k in _sink_ids(flow)):,} out, "
        f"{sum(result.dead_letters.values()):,} dead letters, {result.late:,} late, "
        f"{result.checkpoints} checkpoints in {result.seconds:.2f}s{restored}",
        highlight=False,
    )
    for reason, n in sorted(result.dead_letters.items()):
        console.print(f"  dead letters: {n:,} {reason}", highlight=False)
    if alerting is not None:
        console.print(f"  {alerting.summary()}", highlight=False)


async def _run_with_progress(runner: Any, flow: Any, console: Console) -> Any:
    """Run with a progress bar per file source (share of the file read) and a live record count."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    totals = {sid: _file_size(node.definition) for sid, node in flow.nodes.items() if node.kind == "source"}
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[records]}"), console=console, transient=True) as progress:
        tasks = {sid: progress.add_task(sid, total=total, records="") for sid, total in totals.items()}
        job = asyncio.create_task(runner.run_async())
        while not job.done():
            await asyncio.wait({job}, timeout=0.2)
            positions = runner.positions()
            for sid, task in tasks.items():
                pos = positions.get(sid)
                done = getattr(pos, "offset", None)
                if totals[sid] and done is not None and getattr(pos, "format", "") != "parquet":
                    progress.update(task, completed=done)
                elif totals[sid] and getattr(pos, "rows", None) is not None:
                    progress.update(task, completed=pos.rows)
                progress.update(task, records=f"{runner.metrics.records_in[sid]:,} records")
        return job.result()


def _file_size(definition: Any) -> int | None:
    """Bytes of a CSV/JSONL file or rows of a Parquet file behind a file source (None otherwise)."""
    path = getattr(definition, "path", None)
    if path is None:
        return None
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return path.stat().st_size if path.exists() else None


def _sink_ids(flow: object) -> set[str]:
    nodes = getattr(flow, "nodes", {})
    return {nid for nid, n in nodes.items() if n.kind == "sink"}

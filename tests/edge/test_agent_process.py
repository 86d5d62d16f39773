"""The ``tidegauge agent`` process: lean (no CLI, ASGI, Arrow or numba libraries loaded) and its small HTTP server.

The idle agent's goal is under 100 MB resident (figures in benchmarks/README.md). What keeps it there is
what the process has imported, so that is what is checked: a ``sitecustomize`` on ``PYTHONPATH`` writes the
agent's ``sys.modules`` and PID when it exits (it is loaded again after the re-exec, the environment is kept).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.edge.procs import Proc, free_port, http_ok, metrics, status, wait_for

HEAVY = ("typer", "click", "rich", "pydantic", "pygments", "starlette", "uvicorn", "pyarrow", "numba", "llvmlite")
"""Libraries an idle agent has no use for: the CLI's (~15 MB), httpx's CLI's, the ASGI server's, Arrow, numba."""

_SITE = """\
import atexit, json, os, sys

def _dump():
    with open(os.environ["TIDEGAUGE_TEST_MODULES"], "w") as f:
        json.dump({"pid": os.getpid(), "modules": sorted(sys.modules)}, f)

atexit.register(_dump)
"""


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("process", ["lean", "same"])
def test_agent_process_imports_and_endpoints(tmp_path: Path, process: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITE)
    dump = tmp_path / "modules.json"
    listen = free_port()
    args = [sys.executable, "-m", "tidegauge", "agent", "--id", "gw-lean", "--upstream",
            f"http://127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "agent"), "--limit", "0",
            "--listen", f"127.0.0.1:{listen}", "--process", process]
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    p = Proc(args, tmp_path / "agent.log", env={"PYTHONPATH": path, "TIDEGAUGE_TEST_MODULES": str(dump)})
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{listen}/healthz"), 90, "agent", p)
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/healthz", timeout=5) as r:
            assert r.headers["Content-Type"] == "application/json"
            assert json.loads(r.read())["status"] == "alive"
        st = status(listen)
        assert st["node_id"] == "gw-lean"
        assert set(st["outbox"]) == {"readings", "windows", "anomalies", "alerts"}
        m = metrics(f"http://127.0.0.1:{listen}/metrics?x=1")
        assert m['tidegauge_outbox_depth{stream="alerts"}'] == 0
        assert "tidegauge_uplink_up" in m
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{listen}/nope", timeout=5)
        missing.value.close()
        assert missing.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as post:
            urllib.request.urlopen(f"http://127.0.0.1:{listen}/status", data=b"{}", timeout=5)
        post.value.close()
        assert post.value.code == 405
        head = _raw(listen, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")  # headers, no body
        assert _raw(listen, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert p.alive()
    finally:
        code = p.stop()
    assert code == 0, p.tail()
    assert "agent gw-lean: 0 records in" in p.log.read_text()
    seen = json.loads(dump.read_text())
    loaded = {m.split(".")[0] for m in seen["modules"]}
    if process == "lean":
        assert p.p is not None and seen["pid"] == p.p.pid  # re-executed in place, not a child process
        assert sorted(loaded & set(HEAVY)) == []
    else:
        assert "typer" in loaded  # --process same: the CLI's process runs the agent


def test_a_taken_listen_port_is_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [sys.executable, "-m", "tidegauge", "agent", "--id", "gw-x", "--upstream",
                f"http://127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "agent"), "--limit", "0",
                "--listen", f"127.0.0.1:{port}"]
        p = Proc(args, tmp_path / "agent.log")
        assert p.p is not None
        code = p.p.wait(90)
    log = p.log.read_text()
    assert code == 2, log
    assert f"error: --listen 127.0.0.1:{port}: cannot serve /metrics there" in log
    assert "Traceback" not in log


def test_launch_config_survives_the_re_exec_encoding() -> None:
    """What the CLI parsed reaches the lean process unchanged (every field away from its default)."""
    import msgspec

    from tidegauge.edge.agent import DEFAULT_STREAMS, AgentConfig
    from tidegauge.edge.jetstream import JetStreamConfig
    from tidegauge.edge.launch import LaunchConfig
    from tidegauge.edge.mqtt import MqttEdgeConfig
    from tidegauge.edge.uplink import UplinkConfig

    streams = dict(DEFAULT_STREAMS)
    streams["readings"] = msgspec.structs.replace(streams["readings"], max_bytes=123, overflow="drop_oldest",
                                                  max_age="3d")
    config = AgentConfig(node_id="gw", upstream="nats://x:4222", data_dir="/tmp/x", token="t", streams=streams,
                         fsync="always", uplink=UplinkConfig(batch_records=17, timeout="3s"), checkpoint_interval="2s",
                         heartbeat_interval="3s", sensors=5, rate=1.5, seed=3, limit=9, detect=False,
                         listen="[::1]:1", location=(1.5, -2.25), labels={"a": "b"}, capacity=4,
                         follow_assignment=True, jetstream=JetStreamConfig(stream="S", subject="s.x"),
                         mqtt=MqttEdgeConfig(prefix="site/edge", ca_file="/ca.pem"))
    launch = LaunchConfig(agent=config, pipeline="p.yaml")
    assert msgspec.json.decode(msgspec.json.encode(launch), type=LaunchConfig) == launch

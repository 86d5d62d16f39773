"""``/readyz`` of ``tidegauge serve``: not ready while the flow starts, and ready only when ingest is taken.

A load balancer sends traffic once ``/readyz`` answers 200; ingest must then not be refused because the
flow is not yet reading its source (while it restores state and builds its steps, which load or compile
their numba kernels: seconds, half a minute with a cold cache). The test cannot choose how warm the numba
cache is: it holds whatever the start takes, and checks the promise from the first moment the port answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl

from tests.net import free_port, until, wait_port
from tests.server.helpers import TOKENS, auth, server_config
from tidegauge.connectors.http import HttpIngestSource
from tidegauge.dataflow import CheckpointConfig, Flow, Runner
from tidegauge.dataflow.base import StepContext
from tidegauge.server import hash_token, serve
from tidegauge.testing import MemorySink

_POST_EVERY_S = 0.02
"""50 posts a second of ~32 KiB (1.6 MB/s): a small load the flow keeps up with by far once it reads, and
under which 1 MiB of unread log (``max_lag``) piles up in 0.6 s when nothing reads it"""


def _body(n: int) -> bytes:
    now = time.time()  # readings of now: none of them late or future-stamped
    lines = [json.dumps({"sensor_id": f"S{(n + i) % 20}", "timestamp": round(now + i * 1e-5, 6),
                         "temperature": 20.0 + (i % 7)}) for i in range(400)]
    return ("\n".join(lines) + "\n").encode()


def test_readyz_says_ready_only_once_ingest_is_taken(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "pipeline.yaml").write_text(f"""
name: ready
source: {{http: {{log_dir: intake, durability: os, max_lag: 1MiB}}}}
steps:
  - detect: {{type: zscore, fields: [temperature]}}
sink: {{file: out/readings.parquet}}
checkpoint: {{dir: cp, interval: 1s}}
server:
  port: {port}
  dashboard: false
  tokens: [{{name: gw, hash: "{hash_token(TOKENS['ingest'])}", scopes: [ingest, read]}}]
""")
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tidegauge", "serve", "pipeline.yaml"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=err, env=os.environ.copy())
    ready: list[tuple[float, int, object]] = []  # (answered at, status, reasons)
    posts: list[tuple[float, int, str]] = []  # (sent at, status, body)
    stop = threading.Event()

    def poll_readyz(client: httpx.Client) -> None:
        while not stop.is_set():
            r = client.get("/readyz", headers=auth("ingest"))
            ready.append((time.monotonic(), r.status_code, r.json().get("reasons")))
            time.sleep(0.005)

    def post(client: httpx.Client) -> None:
        n = 0
        while not stop.is_set():
            sent = time.monotonic()
            r = client.post("/api/v1/ingest", content=_body(n), headers={
                **auth("ingest"), "content-type": "application/x-ndjson"})
            posts.append((sent, r.status_code, r.text[:200]))
            n += 1
            time.sleep(max(0.0, sent + _POST_EVERY_S - time.monotonic()))

    try:
        wait_port(port, timeout=120, proc=proc, log=log, what="tidegauge serve")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as a, \
                httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as b:
            threads = [threading.Thread(target=poll_readyz, args=(a,)), threading.Thread(target=post, args=(b,))]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(status == 200 for _, status, _ in ready):
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
            time.sleep(3)  # the promise holds after ready too: keep posting a while
            stop.set()
            for t in threads:
                t.join(timeout=150)
    finally:
        stop.set()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    first_ready = next((at for at, status, _ in ready if status == 200), None)
    assert first_ready is not None, f"/readyz never said ready: {ready[-3:]}\n{log.read_text()[-2000:]}"
    refused = [(round(at - first_ready, 3), status, text) for at, status, text in posts
               if at >= first_ready and status == 503]
    assert not refused, f"ingest refused after /readyz said ready: {refused[:3]} ({len(refused)} in all)"
    assert any(at >= first_ready and status == 200 for at, status, _ in posts)
    # before ready, /readyz said why (when the start was slow enough to be seen at all)
    for _, status, reasons in ready:
        if status != 200:
            assert isinstance(reasons, list) and reasons


class _SlowToBuild:
    """A step whose build waits for ``released`` (a model loaded, kernels compiled), passing batches on."""

    snapshot_type = None

    def __init__(self, released: threading.Event) -> None:
        self.released = released

    def build(self, resume_state: object) -> _SlowToBuild:
        assert self.released.wait(60), "the test never released the step"
        return self

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame:
        return df

    def on_watermark(self, ctx: StepContext) -> None:
        return None

    def snapshot(self) -> None:
        return None


def test_readyz_is_not_ready_while_the_flow_builds_its_steps(tmp_path: Path) -> None:
    """The HTTP source is built before the steps: /readyz must wait for the flow, not for the source."""
    released = threading.Event()
    flow = Flow("slow-start")
    out = MemorySink()
    source = HttpIngestSource(tmp_path / "intake", durability="os")
    flow.source(source).then(_SlowToBuild(released)).sink(out)
    runner = Runner(flow, checkpoint=CheckpointConfig(tmp_path / "cp", interval="100ms"), max_delay="2ms",
                    tick="20ms")
    port = free_port()

    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        started = asyncio.Event()
        task = asyncio.create_task(serve(runner, server_config(port=port), environ={"TG_TEST_ADMIN": TOKENS["admin"]},
                                         started=started, handle_signals=False))
        await asyncio.wait_for(started.wait(), 30)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert await until(lambda: source.logic is not None, timeout=30)
                await asyncio.sleep(0.2)  # the flow thread is held in the step's build, its source built
                starting = await client.get("/readyz", headers=auth("read"))
                released.set()
                for _ in range(300):
                    ready = await client.get("/readyz", headers=auth("read"))
                    if ready.status_code == 200:
                        break
                    await asyncio.sleep(0.02)
                accepted = await client.post("/api/v1/ingest", content=_body(0), headers={
                    **auth("ingest"), "content-type": "application/x-ndjson"})
            return starting, ready, accepted
        finally:
            released.set()
            runner.stop()
            await task

    starting, ready, accepted = asyncio.run(main())
    assert starting.status_code == 503, starting.text
    assert any("flow starting" in r for r in starting.json()["reasons"]), starting.text
    assert ready.status_code == 200, ready.text
    assert accepted.status_code == 200 and accepted.json()["accepted"] == 400, accepted.text
    assert runner.phase == "stopped"

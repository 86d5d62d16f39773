"""Crash test of HTTP ingest: ``tidegauge serve`` SIGKILLed while a client posts, then restarted; every record
answered 2xx must reach the (exactly-once) file sink, exactly once, whichever way the server decoded it. A
request cut off by the kill is sent again by the client: it may have been appended before the kill, so its
records may come twice (no idempotency key over plain HTTP); every other batch must come exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from tests.net import free_port
from tidegauge.server import hash_token

TOKEN = "crash-token"
BATCHES = 400
PER_BATCH = 50


def _pipeline(port: int) -> str:
    return f"""
name: ingest-crash
source: {{http: {{log_dir: intake, durability: fsync}}}}
sink: {{file: out/readings.parquet}}
dead_letter: {{file: out/dead.parquet}}
checkpoint: {{dir: cp, interval: 300ms}}
server:
  port: {port}
  tokens:
    - {{name: gw, hash: "{hash_token(TOKEN)}", scopes: [ingest]}}
"""


def _body(k: int) -> tuple[bytes, str, int]:
    """Batch ``k``: (body, content type, records in it that are valid). Readings carry their number in ``power``.

    Three shapes, so that the server's three decoders all take part: plain NDJSON (the compiled reader),
    NDJSON with escapes and one bad record (msgspec, one reject), a JSON array (msgspec).
    """
    records = [{"sensor_id": f"S{n % 7}", "timestamp": 1767225600 + n / 100, "temperature": n % 40 + 0.5,
                "power_consumption": float(n)} for n in range(k * PER_BATCH, (k + 1) * PER_BATCH)]
    if k % 3 == 1:
        records[0]["sensor_id"] = "S\\u00e9"  # an escape: not the compiled reader's
        lines = [json.dumps(r).replace("\\\\u00e9", "\\u00e9") for r in records] + ['{"sensor_id": 5}']
        return "\n".join(lines).encode(), "application/x-ndjson", PER_BATCH
    if k % 3 == 2:
        return json.dumps(records).encode(), "application/json", PER_BATCH
    return "\n".join(json.dumps(r) for r in records).encode() + b"\n", "application/x-ndjson", PER_BATCH


def _start(workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tidegauge", "serve", "pipeline.yaml"], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})


def _post_all(url: str, batches: list[int], acked: set[int], cut: set[int], stop: threading.Event) -> None:
    """Post ``batches`` (retrying each until a 2xx, as a client would), recording the acknowledged ones and
    those whose request was cut off (the server may have appended them: a retry may duplicate them)."""
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=10) as client:
        for k in batches:
            body, ctype, _ = _body(k)
            while not stop.is_set():
                try:
                    r = client.post(url, content=body, headers={**headers, "content-type": ctype})
                except httpx.HTTPError:
                    cut.add(k)
                    time.sleep(0.05)  # the server is down: try again
                    continue
                if r.status_code == 200:
                    assert r.json()["accepted"] == PER_BATCH, r.text
                    acked.add(k)
                    break
                time.sleep(0.05)  # 503 while starting or behind: try again
            if stop.is_set():
                return


@pytest.mark.slow
def test_every_acknowledged_record_survives_sigkill_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "pipeline.yaml").write_text(_pipeline(port))
    url = f"http://127.0.0.1:{port}/api/v1/ingest"
    acked: set[int] = set()
    cut: set[int] = set()
    stop = threading.Event()
    server = _start(tmp_path)
    poster = threading.Thread(target=_post_all, args=(url, list(range(BATCHES)), acked, cut, stop))
    try:
        poster.start()
        deadline = time.monotonic() + 120
        while len(acked) < random.Random(7).randint(60, 120):  # mid-stream, at a point picked once
            if server.poll() is not None or time.monotonic() > deadline:
                log = server.stderr.read().decode() if server.stderr else ""
                raise AssertionError(f"the server did not take batches: {log[-3000:]}")
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait()
        if server.stderr:
            server.stderr.close()
        killed_at = len(acked)
        server = _start(tmp_path)  # the client keeps retrying meanwhile
        poster.join(240)
        assert not poster.is_alive(), f"posting did not finish ({len(acked)} of {BATCHES} acknowledged)"
    finally:
        stop.set()
        poster.join(10)
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # checkpoint, commit the sink, stop
            try:
                server.wait(120)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    err = server.stderr.read().decode() if server.stderr else ""
    if server.stderr:
        server.stderr.close()
    assert server.returncode == 0, err[-2000:]
    assert 0 < killed_at < BATCHES and acked == set(range(BATCHES))
    assert len(cut) <= 8  # at most the one request in flight (and its retries while the server was down)
    out = pl.concat([pl.read_parquet(p) for p in sorted((tmp_path / "out").glob("readings*.parquet"))])
    counts = out.group_by((pl.col("power_consumption").cast(pl.Int64) // PER_BATCH).alias("k")).len()
    times = dict(zip(counts["k"].to_list(), counts["len"].to_list(), strict=True))
    for k in range(BATCHES):  # every acknowledged record there; exactly once unless its request was cut off
        assert times.get(k) in ((PER_BATCH, 2 * PER_BATCH) if k in cut else (PER_BATCH,)), (k, times.get(k))
    assert out.n_unique() == out.height - sum(times[k] - PER_BATCH for k in cut)
    assert set(out["sensor_id"].unique()) == {f"S{i}" for i in range(7)} | {"Sé"}  # the escape decoded
    dead = pl.concat([pl.read_parquet(p) for p in sorted((tmp_path / "out").glob("dead*.parquet"))])
    rejects = [k for k in range(BATCHES) if k % 3 == 1]  # one bad record in each batch of that shape
    assert len(rejects) <= dead.height <= len(rejects) + len(cut)

"""Crash test through a broker: NATS JetStream -> tumbling window -> PostgreSQL upsert, run as
``python -m tidegauge run``, SIGKILLed mid-stream and restarted; the window table must equal an
uninterrupted run's, row for row."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nats
import numpy as np
import polars as pl
import psycopg
import pytest
from nats.js.api import StreamConfig

from tests.connectors.servers import POSTGRES_CONNINFO, require, unique

pytestmark = [pytest.mark.slow, pytest.mark.server]

READINGS = 30_000
SENSORS = 50
PER_MESSAGE = 50
LIVE_RATE = 1_500
"""Readings per second published while the crashed run consumes: about 20 s of stream, room for 3 kills."""
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
SPACING_US = 10_000  # 100 readings per second of event time: 300 s, 30 windows of 10 s per sensor
TIMEOUT_S = 120.0
"""Bounds a broken run only; nothing here asserts on speed."""

PIPELINE = """
name: broker-crash
source:
  nats: {{stream: {stream}, subject: "{stream}.>", durable: {durable}, ack_wait: 30s}}
steps:
  - window: {{type: tumbling, size: 10s, aggregate: {{temperature: [count, mean, min, max]}}}}
sink:
  postgres: {{table: {table}, key: [sensor_id, window_start], conninfo: "{conninfo}", create: true}}
checkpoint: {{dir: ./state, interval: 1s}}
# idle_timeout: far beyond any pause here, so processing time (restarts, kills) never moves the watermark
watermark: {{max_delay: 5s, idle_timeout: 1h}}
batch: {{max_rows: 2000}}
"""


def readings() -> pl.DataFrame:
    rng = np.random.default_rng(11)
    # event time in order up to 2 s of jitter, under the 5 s max_delay: no reading is ever late, however the
    # stream is cut into batches, so an exact comparison is fair
    ts = START_US + np.arange(READINGS, dtype=np.int64) * SPACING_US + rng.integers(0, 2_000_000, READINGS)
    return pl.DataFrame({
        "sensor_id": [f"s{i:03d}" for i in rng.integers(0, SENSORS, READINGS)],
        "timestamp": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
        "temperature": rng.normal(20, 4, READINGS).round(3),
    })


def expected_windows(df: pl.DataFrame) -> int:
    return df.select(pl.struct("sensor_id", pl.col("timestamp").dt.truncate("10s")).n_unique()).item()  # type: ignore[no-any-return]


def sentinel() -> bytes:
    # closes every window of the data (its time is past the last window's end + max_delay); its own
    # window stays open, so it never reaches the table
    ts = START_US + READINGS * SPACING_US + 60_000_000
    return pl.DataFrame({"sensor_id": ["sentinel"], "timestamp": pl.Series([ts]).cast(pl.Datetime("us", "UTC")),
                         "temperature": [0.0]}).write_json().encode()


class Publisher(threading.Thread):
    """Publishes the readings to the stream (the first ``head`` at once, the rest at ``LIVE_RATE``/s).

    The last message (and the sentinel) wait for ``finish``: on a loaded machine the restarts can take
    longer than the whole stream, and every kill must come before the stream is complete.
    """

    def __init__(self, stream: str, df: pl.DataFrame, head: int) -> None:
        super().__init__(daemon=True)
        self.stream, self.df, self.head = stream, df, head
        self.error: BaseException | None = None
        self.finish = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc

    async def _run(self) -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        start = time.monotonic()
        for offset in range(0, self.df.height, PER_MESSAGE):
            if offset + PER_MESSAGE >= self.df.height:
                await asyncio.to_thread(self.finish.wait, TIMEOUT_S)
            part = self.df.slice(offset, PER_MESSAGE)
            await js.publish(f"{self.stream}.readings", part.write_json().encode())
            if offset >= self.head:
                ahead = start + (offset - self.head) / LIVE_RATE - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await js.publish(f"{self.stream}.readings", sentinel())
        await nc.close()


async def _admin(stream: str, create: bool) -> None:
    nc = await nats.connect("nats://127.0.0.1:4222")
    if create:
        await nc.jetstream().add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
    else:
        await nc.jetstream().delete_stream(stream)
    await nc.close()


def tidegauge(workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tidegauge", "run", "pipeline.yaml", "--quiet"], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def table_rows(table: str) -> int:
    with psycopg.connect(POSTGRES_CONNINFO) as conn:
        exists = conn.execute("select to_regclass(%s)", (table,)).fetchone()
        if exists is None or exists[0] is None:
            return 0
        row = conn.execute(f'select count(*) from "{table}"').fetchone()
        return 0 if row is None else int(row[0])


def read_table(table: str) -> pl.DataFrame:
    with psycopg.connect(POSTGRES_CONNINFO) as conn:
        cur = conn.execute(f'select * from "{table}" order by sensor_id, window_start')
        names = [d.name for d in cur.description or []]
        return pl.DataFrame(cur.fetchall(), schema=names, orient="row")


def drop_table(table: str) -> None:
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
        for name in (table, f"{table}__tg_pending"):
            conn.execute(f'drop table if exists "{name}"')


def run_to_completion(proc: subprocess.Popen[bytes], table: str, want: int) -> None:
    """Wait until the table holds every window, then stop the run cleanly (SIGTERM: it never ends itself)."""
    deadline = time.monotonic() + TIMEOUT_S
    while table_rows(table) < want:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read().decode() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"{table}: {table_rows(table)} of {want} windows after {TIMEOUT_S}s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()


def test_sigkilled_broker_pipeline_gives_identical_table(tmp_path: Path) -> None:
    require("nats")
    require("postgres")
    stream = unique("tgcrash")
    tables = {"reference": f"{stream}_ref", "crashed": f"{stream}_crash"}
    df = readings()
    want = expected_windows(df)
    asyncio.run(_admin(stream, create=True))
    try:
        dirs = {}
        for name in ("reference", "crashed"):
            d = tmp_path / name
            d.mkdir()
            (d / "pipeline.yaml").write_text(PIPELINE.format(stream=stream, durable=name, table=tables[name],
                                                             conninfo=POSTGRES_CONNINFO))
            dirs[name] = d
        publisher = Publisher(stream, df, head=2_000)
        publisher.start()

        # Kill at a random moment after each restart has written a new checkpoint, while readings still
        # arrive, so every restart resumes from a checkpoint mid-stream.
        rnd = random.Random(20261123)
        state = dirs["crashed"] / "state"
        epochs: list[str] = []
        for _ in range(3):
            before = max((p.name for p in state.glob("chk-*")), default="")
            proc = tidegauge(dirs["crashed"])
            deadline = time.monotonic() + TIMEOUT_S
            while max((p.name for p in state.glob("chk-*")), default="") <= before:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "ended"
                assert time.monotonic() < deadline, f"no checkpoint within {TIMEOUT_S}s"
                time.sleep(0.05)
            time.sleep(rnd.uniform(0.0, 0.8))
            assert proc.poll() is None, "the run ended before it was killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
            epochs.append(max(p.name for p in state.glob("chk-*")))
        assert publisher.is_alive(), "the stream was fully published before the last kill"
        publisher.finish.set()
        run_to_completion(tidegauge(dirs["crashed"]), tables["crashed"], want)
        publisher.join(TIMEOUT_S)
        assert publisher.error is None, publisher.error

        run_to_completion(tidegauge(dirs["reference"]), tables["reference"], want)

        assert epochs == sorted(set(epochs)), epochs  # every restart resumed and made progress
        ref, got = read_table(tables["reference"]), read_table(tables["crashed"])
        assert ref.height == want
        assert got.equals(ref), (got.height, ref.height)
    finally:
        asyncio.run(_admin(stream, create=False))
        for table in tables.values():
            drop_table(table)

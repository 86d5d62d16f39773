"""Edge agent: outbox write and replay throughput, agent memory and CPU.

1. **Outbox write** (records/s): simulated readings (about 430 bytes of JSON each) appended in batches of
   ``--batch`` through the outbox, with one durability point (``make_durable``) every 10 batches, the way
   checkpoints do. Fsync policy ``checkpoint`` (WAL fsync'd at each checkpoint; ``synchronous=NORMAL``
   between), plus ``always`` and ``os`` for reference. Measured twice: payloads already encoded (the outbox
   alone) and from polars frames (the sink's whole path: JSON encoding + numbering + append).
   Reference in the same run: SQLite's raw insert rate, the same payloads ``executemany``'d into a bare
   ``(seq INTEGER PRIMARY KEY, payload BLOB)`` WAL table, one transaction per batch; and the same records
   pre-joined into rows of ~28 KiB of NDJSON (the outbox's block layout, so the ceiling of its appends).
2. **Replay** (records/s): an outbox pre-filled with ``--replay`` committed records drained by the uplink to a
   real upstream server process over loopback (the receiver de-duplicates, appends to the intake log, the
   upstream flow writes JSONL), until every record is acknowledged.
3. **Agent** resident memory and CPU: ``tidegauge agent`` idle (simulator exhausted at once) and at 2,000
   readings/s with the default pipeline (detector, windows, alert rules, 4 forwarded streams).

usage: python benchmarks/edge_outbox.py [--records 200000] [--batch 10000] [--replay 300000] [--agent-seconds 20]
Internal mode: ``--serve DIR PORT`` (the upstream server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import polars as pl

TOKEN = "bench-token"


def readings(n: int) -> pl.DataFrame:
    from tidegauge.simulate import FleetConfig, FleetSimulator

    return FleetSimulator(FleetConfig(sensors=1000, rate=2000.0, seed=1)).next_batch(n)


def bench_sqlite_raw(path: Path, payloads: list[bytes], batch: int, *, tuned: bool = False) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    if tuned:
        db.execute("PRAGMA wal_autocheckpoint=16384")  # the outbox's setting
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    t0 = time.perf_counter()
    for i in range(0, len(payloads), batch):
        chunk = payloads[i:i + batch]
        db.execute("BEGIN")
        db.executemany("INSERT INTO t VALUES (?, ?)", zip(range(i + 1, i + 1 + len(chunk)), chunk, strict=True))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    db.close()
    return len(payloads) / elapsed


def bench_sqlite_raw_blocks(path: Path, payloads: list[bytes], batch: int) -> float:
    """The same records as rows of ~28 KiB of NDJSON (the outbox's layout) in a bare table, 32 KiB pages."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA page_size=32768")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE t (first INTEGER PRIMARY KEY, last INTEGER NOT NULL, payload BLOB NOT NULL)")
    per = max(1, 28 * 1024 * len(payloads) // sum(map(len, payloads)))
    t0 = time.perf_counter()
    for i in range(0, len(payloads), batch):
        chunk = payloads[i:i + batch]
        rows = [(i + j + 1, i + j + len(chunk[j:j + per]), b"\n".join(chunk[j:j + per]) + b"\n")
                for j in range(0, len(chunk), per)]
        db.execute("BEGIN")
        db.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    db.close()
    return len(payloads) / elapsed


def bench_outbox(path: Path, payloads: list[bytes], batch: int, fsync: str) -> float:
    from tidegauge.edge.outbox import Outbox, StreamPolicy

    box = Outbox(path, {"readings": StreamPolicy(max_bytes=1 << 40)}, fsync=fsync)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for n, i in enumerate(range(0, len(payloads), batch)):
        box.append("readings", payloads[i:i + batch])
        if n % 10 == 9:
            box.make_durable()
    box.make_durable()
    elapsed = time.perf_counter() - t0
    box.close()
    return len(payloads) / elapsed


def bench_sink_path(path: Path, df: pl.DataFrame, batch: int) -> float:
    from tidegauge.edge.outbox import Outbox, StreamPolicy
    from tidegauge.edge.sink import OutboxSink

    box = Outbox(path, {"readings": StreamPolicy(max_bytes=1 << 40)})
    sink = OutboxSink(box, "readings").build(None)
    frames = [df.slice(i, batch) for i in range(0, df.height, batch)]
    t0 = time.perf_counter()
    for n, f in enumerate(frames):
        sink._write(f)  # what write_batch runs in its worker thread: encode, number, append
        if n % 10 == 9:
            box.make_durable()
    box.make_durable()
    elapsed = time.perf_counter() - t0
    box.close()
    return df.height / elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def serve(root: Path, port: int) -> None:
    """The upstream: every default edge stream -> its HTTP intake source -> a JSONL sink; the receiver."""
    from tidegauge.connectors.files import FileSink
    from tidegauge.dataflow import CheckpointConfig, Flow, Runner
    from tidegauge.edge.receiver import EdgeReceiver, edge_sources
    from tidegauge.server import serve as _serve
    from tidegauge.server.config import RateLimitConfig, ServerConfig, TokenConfig, hash_token

    sources = edge_sources(root / "intake", durability="fsync")
    flow = Flow("upstream")
    for stream, src in sources.items():
        flow.source(src, key=src.key, time=src.time).sink(FileSink(f"{root}/out/{stream}/", format="jsonl"))
    runner = Runner(flow, checkpoint=CheckpointConfig(root / "checkpoints", interval="1s"), max_delay="20ms")
    config = ServerConfig(port=port, max_body_bytes="64MiB", rate_limit=RateLimitConfig(requests_per_s=1e5,
                                                                                        burst=100000),
                          tokens=[TokenConfig(name="agents", hash=hash_token(TOKEN), scopes=["ingest", "read"])])
    asyncio.run(_serve(runner, config, edge_receiver=EdgeReceiver(sources, root / "edge.db")))


def start_upstream(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    p = subprocess.Popen([sys.executable, __file__, "--serve", str(root), str(port)])
    wait_http(f"http://127.0.0.1:{port}/healthz", 60)
    return p, port


def bench_replay(tmp: Path, df: pl.DataFrame, n: int, batch: int, window: int = 2) -> tuple[float, float, float]:
    """Records/s, and the CPU-seconds of the agent (this process) and of the upstream process."""
    tmp.mkdir(parents=True)
    from tidegauge.edge.outbox import Outbox, StreamPolicy
    from tidegauge.edge.sink import encode_records
    from tidegauge.edge.uplink import Uplink, UplinkConfig

    box = Outbox(tmp / "replay.db", {"readings": StreamPolicy(max_bytes=1 << 40)})
    while box.next_seq("readings") <= n:
        first = box.next_seq("readings")
        box.append("readings", encode_records(df.head(min(df.height, n - first + 1)), first), first_seq=first,
                   at_us=1)
    box.commit_seq("readings", n)
    up_proc, port = start_upstream(tmp / "upstream")
    try:
        # warm-up: the upstream flow's first batch compiles/loads its numba kernels (seconds)
        warm = Outbox(tmp / "warm.db", {"readings": StreamPolicy()})
        warm.append("readings", encode_records(df.head(1000), 1), first_seq=1)
        warm.commit_seq("readings", 1000)

        async def warm_up() -> None:
            up = Uplink(warm, f"http://127.0.0.1:{port}", node_id="warm-up", token=TOKEN)
            task = asyncio.create_task(up.run())
            while warm.stats("readings").acked_seq < 1000:
                await asyncio.sleep(0.01)
            await asyncio.sleep(3)
            up.stop()
            await task
            await up.close()
        asyncio.run(warm_up())
        warm.close()

        import psutil  # type: ignore[import-untyped]

        upstream_ps = psutil.Process(up_proc.pid)
        cpu_up0, cpu_me0 = sum(upstream_ps.cpu_times()[:2]), time.process_time()

        async def drain() -> float:
            up = Uplink(box, f"http://127.0.0.1:{port}", node_id="bench", token=TOKEN,
                        config=UplinkConfig(batch_records=batch, batch_bytes=32 * 1024 * 1024, window=window))
            t0 = time.perf_counter()
            task = asyncio.create_task(up.run())
            while box.stats("readings").acked_seq < n:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
            up.stop()
            await task
            await up.close()
            return elapsed
        elapsed = asyncio.run(drain())
        cpu_me = time.process_time() - cpu_me0
        cpu_up = sum(upstream_ps.cpu_times()[:2]) - cpu_up0
    finally:
        up_proc.send_signal(signal.SIGTERM)
        up_proc.wait(60)
    box.close()
    return n / elapsed, cpu_me, cpu_up


def bench_agent(tmp: Path, label: str, seconds: float, rate: float, limit: int | None) -> dict[str, float]:
    import psutil  # type: ignore[import-untyped]

    up_proc, port = start_upstream(tmp / f"up-{label}")
    listen = free_port()
    args = [sys.executable, "-m", "tidegauge", "agent", "--id", "bench", "--upstream", f"http://127.0.0.1:{port}",
            "--token", TOKEN, "--data-dir", str(tmp / f"agent-{label}"), "--rate", str(rate),
            "--listen", f"127.0.0.1:{listen}"]
    if limit is not None:
        args += ["--limit", str(limit)]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{listen}/healthz", 90)
        time.sleep(min(10.0, seconds))  # warm-up: detector compiled, windows filled, first checkpoints
        proc = psutil.Process(p.pid)
        cpu0, t0 = proc.cpu_times(), time.monotonic()
        rss = []
        end = t0 + seconds
        while time.monotonic() < end:
            rss.append(proc.memory_info().rss)
            time.sleep(0.5)
        cpu1, t1 = proc.cpu_times(), time.monotonic()
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0) * 100
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/status", timeout=5) as r:
            import json

            records = json.loads(r.read())["records_in"]
        return {"rss_mb_max": max(rss) / 2**20, "rss_mb_end": rss[-1] / 2**20, "cpu_pct": cpu,
                "records_in": records}
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        up_proc.send_signal(signal.SIGTERM)
        up_proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--replay", type=int, default=300_000)
    ap.add_argument("--agent-seconds", type=float, default=20.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--replay-batch", type=int, nargs="*", default=[10_000])
    ap.add_argument("--window", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--only", nargs="*", choices=["write", "replay", "agent"], default=None)
    ap.add_argument("--serve", nargs=2, metavar=("DIR", "PORT"))
    a = ap.parse_args()
    if a.serve:
        serve(Path(a.serve[0]), int(a.serve[1]))
        return
    only = set(a.only or ["write", "replay", "agent"])
    df = readings(a.records)
    from tidegauge.edge.sink import encode_records

    payloads = encode_records(df, 1)
    size = sum(map(len, payloads)) / len(payloads)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        tmp = Path(d)
        if "write" in only:
            print(f"outbox write: {len(payloads):,} readings of {size:.0f} B, batches of {a.batch:,}, "
                  f"median of {a.reps} interleaved runs")
            runs: dict[str, list[float]] = {}
            for rep in range(a.reps):
                for name, fn in (
                    ("raw", lambda p: bench_sqlite_raw(p, payloads, a.batch)),
                    ("raw_tuned", lambda p: bench_sqlite_raw(p, payloads, a.batch, tuned=True)),
                    ("raw_blocks", lambda p: bench_sqlite_raw_blocks(p, payloads, a.batch)),
                    ("checkpoint", lambda p: bench_outbox(p, payloads, a.batch, "checkpoint")),
                    ("always", lambda p: bench_outbox(p, payloads, a.batch, "always")),
                    ("os", lambda p: bench_outbox(p, payloads, a.batch, "os")),
                    ("sink", lambda p: bench_sink_path(p, df, a.batch)),
                ):
                    runs.setdefault(name, []).append(fn(tmp / f"{name}-{rep}.db"))
            med = {k: statistics.median(v) for k, v in runs.items()}
            raw = med["raw"]
            print(f"  SQLite raw executemany (WAL, synchronous=NORMAL):       {raw:>10,.0f} records/s")
            print(f"  SQLite raw, same pragmas as the outbox (+autocheckpoint): {med['raw_tuned']:>8,.0f} records/s")
            print(f"  SQLite raw, rows of ~28 KiB of NDJSON (the outbox's layout): "
                  f"{med['raw_blocks']:>5,.0f} records/s")
            for fsync in ("checkpoint", "always", "os"):
                r = med[fsync]
                print(f"  outbox append, fsync={fsync:<10}                          {r:>10,.0f} records/s "
                      f"({r / raw:.2f}x raw)")
            r = med["sink"]
            print(f"  sink path (polars -> JSON -> outbox), fsync=checkpoint: {r:>10,.0f} records/s "
                  f"({r / raw:.2f}x raw)")
        if "replay" in only:
            for batch in a.replay_batch:
                for window in a.window:
                    r, cpu_me, cpu_up = bench_replay(tmp / f"replay-{batch}-{window}", df, a.replay, batch, window)
                    print(f"replay: {a.replay:,} records to the upstream over loopback, batches of {batch:,}, "
                          f"{window} in flight: {r:,.0f} records/s ({a.replay / (cpu_me + cpu_up):,.0f} per "
                          f"CPU-second, agent + upstream; agent alone {a.replay / cpu_me:,.0f}, upstream alone "
                          f"{a.replay / cpu_up:,.0f})")
        if "agent" in only:
            idle = bench_agent(tmp, "idle", a.agent_seconds, 2000.0, 0)
            print(f"agent idle:          RSS max {idle['rss_mb_max']:.0f} MB, CPU {idle['cpu_pct']:.1f}% "
                  f"({idle['records_in']:,.0f} readings in)")
            busy = bench_agent(tmp, "busy", a.agent_seconds, 2000.0, None)
            print(f"agent 2,000 rdg/s:   RSS max {busy['rss_mb_max']:.0f} MB, CPU {busy['cpu_pct']:.1f}% "
                  f"({busy['records_in']:,.0f} readings in)")


if __name__ == "__main__":
    main()

"""Windowed aggregation throughput: tidegauge against the peer references, in one command.

Workloads (the peers' `common.py` shape, deterministic, seed 42):

- ``sparse``: 2,000,000 readings, 10,000 sensors, 1,000 readings/s -> ~1 reading per sensor and window;
- ``dense``:  2,000,000 readings, 100 sensors, 10,000 readings/s -> ~1,000 readings per sensor and window.

Task: per sensor, 10 s tumbling event-time windows, count/mean/min/max (and sum for cross-checking).
Each implementation runs in a fresh process (so one's memory or JIT warm-up cannot help another); input is
built before the timed section, as in the peers' scripts. tidegauge runs its real engine: a `Flow` with a
memory source (65,536-row batches), the ingest stage (key encoding, per-record watermarks), a
`WindowStep`, and a sink that receives every result frame. Results are cross-checked against polars.

    tidegauge bench                                        # both workloads, 3 repetitions each
    tidegauge bench --reps 1 --workload dense
    tidegauge bench --memory                               # also: RSS over a 10x longer streaming run
    python benchmarks/windows_vs_peers.py ...              # the same, from a checkout

Peers (from ../shared/bench/peers): the pure-Python dict loop, polars whole-batch group_by on one thread
(POLARS_MAX_THREADS=1) and the numpy micro-batch reference. Bytewax is run too when it is installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tidegauge.connectors.base import Guarantee

PEERS_DEFAULT = Path("../shared/bench/peers")
N = 2_000_000
WORKLOADS = {"sparse": (10_000, 1_000.0), "dense": (100, 10_000.0)}
IMPLS = ["tidegauge", "pure_python", "polars_1thread", "numpy_microbatch", "bytewax"]


def gen_columns(workload: str, n: int = N) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sensor index, ts seconds, value): the peers' generator with the workload's sensors and rate."""
    sensors, rate = WORKLOADS[workload]
    rng = np.random.default_rng(42)
    sidx = rng.integers(0, sensors, size=n, dtype=np.int64)
    ts = np.arange(n, dtype=np.float64) / rate
    return sidx, ts, rng.standard_normal(n)


def names(sensors: int) -> np.ndarray:
    return np.array([f"S{i:05d}" for i in range(sensors)])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- one implementation, in this (child) process ----------------------------------------------------
def run_tidegauge(workload: str) -> dict[str, Any]:
    import polars as pl

    from tidegauge.dataflow import Flow
    from tidegauge.testing import MemorySource
    from tidegauge.windows import Tumbling

    sidx, ts, val = gen_columns(workload)
    df = pl.DataFrame(
        {
            "sensor_id": names(WORKLOADS[workload][0])[sidx],
            "timestamp": pl.Series((ts * 1e6).round().astype(np.int64)).cast(pl.Datetime("us", "UTC")),
            "value": val,
        }
    ).rechunk()
    sink = _CountingSink()

    def build() -> Flow:
        flow = Flow("bench")
        flow.source(MemorySource(df, batch_rows=65_536)).window(
            Tumbling("10s"), {"value": ["count", "sum", "mean", "min", "max"]}
        ).sink(sink)
        return flow

    # warm the JIT-compiled kernels on a tiny run (numba caches them on disk after the first time)
    warm = _CountingSink()
    wflow = Flow("warm")
    aggs = {"value": ["count", "sum", "mean", "min", "max"]}
    wflow.source(MemorySource(df.head(65_536))).window(Tumbling("10s"), aggs).sink(warm)
    wflow.run()
    import gc

    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    build().run()
    dt = time.perf_counter() - t0
    rss = peak_rss_mb()  # before the cross-check below allocates its own reference result
    out = pl.concat(sink.frames)
    ref = (
        df.group_by("sensor_id", (pl.col("timestamp").dt.epoch("us") // 10_000_000).alias("w"))
        .agg(pl.len().alias("n"), pl.col("value").sum().alias("s"), pl.col("value").min().alias("lo"),
             pl.col("value").max().alias("hi"))
    )
    got = out.select(
        "sensor_id", (pl.col("window_start").dt.epoch("us") // 10_000_000).alias("w"),
        pl.col("value_count").alias("n_got"), pl.col("value_sum").alias("s_got"),
        pl.col("value_min").alias("lo_got"), pl.col("value_max").alias("hi_got"),
    )
    j = ref.join(got, on=["sensor_id", "w"], how="full", coalesce=True)
    match = (
        j.height == ref.height == got.height
        and bool((j["n"] == j["n_got"]).all())
        and bool(((j["s"] - j["s_got"]).abs() < 1e-9).all())
        and bool((j["lo"] == j["lo_got"]).all() and (j["hi"] == j["hi_got"]).all())
    )
    return {"seconds": dt, "windows_out": out.height, "matches_polars": match, "peak_rss_mb": rss}


class _CountingSink:
    guarantee: Guarantee = "at-least-once"
    snapshot_type: type | None = None
    name: str | None = "count"

    def __init__(self) -> None:
        self.frames: list[Any] = []

    def build(self, resume_state: Any) -> _CountingSink:
        return self

    async def write_batch(self, df: Any) -> None:
        self.frames.append(df)

    async def pre_commit(self, epoch: int) -> None: ...
    async def commit(self, epoch: int) -> None: ...
    def snapshot(self) -> None: ...
    async def close(self) -> None: ...


def run_peer(impl: str, workload: str, peers: Path) -> dict[str, Any]:
    sys.path.insert(0, str(peers))
    import common  # type: ignore[import-not-found]

    sidx, ts, val = gen_columns(workload)
    nm = names(WORKLOADS[workload][0])
    if impl == "pure_python":
        import a_pure_python  # type: ignore[import-not-found]

        rows = list(zip(nm[sidx].tolist(), ts.tolist(), val.tolist(), strict=True))
        common.prepare_timing()
        t0 = time.perf_counter()
        out, _late = a_pure_python.run(rows)
        return {"seconds": time.perf_counter() - t0, "windows_out": len(out)}
    if impl == "polars_1thread":
        import c_polars  # type: ignore[import-not-found]
        import polars as pl

        df = pl.DataFrame({"sensor_id": nm[sidx], "ts": ts, "value": val}).rechunk()
        common.prepare_timing()
        t0 = time.perf_counter()
        res = c_polars.run_group_by(df)
        return {"seconds": time.perf_counter() - t0, "windows_out": res.height, "threads": pl.thread_pool_size()}
    if impl == "numpy_microbatch":
        import d_numpy_microbatch as d  # type: ignore[import-not-found]

        ids = nm[sidx]
        common.prepare_timing()
        t0 = time.perf_counter()
        st = d.TumblingStats()
        for b in d.batches_from_columns(ids, ts, val, 65_536):
            st.process(*b)
        st.flush()
        return {"seconds": time.perf_counter() - t0, "windows_out": sum(o[0].size for o in st.out)}
    if impl == "bytewax":
        import b_bytewax  # type: ignore[import-not-found]

        rows = list(zip(nm[sidx].tolist(), ts.tolist(), val.tolist(), strict=True))
        results: list[Any] = []
        late: list[Any] = []
        flow = b_bytewax.build_flow(rows, results, late, 1000, True)
        run_main: Any = importlib.import_module("bytewax.testing").run_main

        common.prepare_timing()
        t0 = time.perf_counter()
        run_main(flow)
        return {"seconds": time.perf_counter() - t0, "windows_out": len(results)}
    raise ValueError(impl)


def child(impl: str, workload: str, peers: Path) -> None:
    res = run_tidegauge(workload) if impl == "tidegauge" else run_peer(impl, workload, peers)
    res.setdefault("peak_rss_mb", peak_rss_mb())
    res.update(impl=impl, workload=workload, events_per_s=N / res["seconds"])
    print("RESULT " + json.dumps(res), flush=True)


# -- memory over a long streaming run ------------------------------------------------------------------
def child_memory(factor: int) -> None:
    """Stream factor x 2M generated readings (never all in memory) and sample RSS as it goes."""
    import asyncio

    import polars as pl
    import psutil  # type: ignore[import-untyped]

    from tidegauge.dataflow import Flow
    from tidegauge.windows import Tumbling

    proc = psutil.Process()
    samples: list[tuple[int, float]] = []
    nm = names(10_000)
    total = N * factor

    class GenSource:
        name: str | None = "gen"
        guarantee: Guarantee = "exactly-once"
        snapshot_type: type | None = None

        def build(self, resume_state: Any) -> GenSource:
            self.i = 0
            self.rng = np.random.default_rng(42)
            return self

        async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
            if self.i >= total:
                return None
            n = min(max_rows, total - self.i)
            ts = (np.arange(self.i, self.i + n, dtype=np.int64) * 1_000)  # 1,000 readings/s in µs
            df = pl.DataFrame({
                "sensor_id": nm[self.rng.integers(0, 10_000, n)],
                "timestamp": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
                "value": self.rng.standard_normal(n),
            })
            self.i += n
            if (self.i // n) % 20 == 0:
                samples.append((self.i, proc.memory_info().rss / 2**20))
            await asyncio.sleep(0)
            return df

        def snapshot(self) -> None: ...
        async def ack(self, position: Any) -> None: ...
        async def close(self) -> None: ...

    flow = Flow("mem")
    sink = _DiscardSink()
    flow.source(GenSource()).window(Tumbling("10s"), {"value": ["count", "mean", "min", "max"]}).sink(sink)
    flow.run()
    print("RESULT " + json.dumps({"impl": "tidegauge-memory", "readings": total, "rss_samples_mb": samples,
                                  "windows_out": sink.rows, "peak_rss_mb": peak_rss_mb()}), flush=True)


class _DiscardSink(_CountingSink):
    rows = 0

    async def write_batch(self, df: Any) -> None:
        self.rows += df.height


# -- parent -------------------------------------------------------------------------------------------
def spawn(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any] | None:
    p = subprocess.run([sys.executable, "-m", "tidegauge.benchmarking.windows", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        print(f"  {' '.join(args)} failed (rc={p.returncode}): {p.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(lines[-1][7:])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tidegauge bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "WORKLOAD"), help=argparse.SUPPRESS)
    ap.add_argument("--child-memory", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=IMPLS, help="run only these implementations")
    ap.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    ap.add_argument("--memory", action="store_true", help="also measure RSS over a 10x longer run")
    ap.add_argument("--peers", type=Path, default=PEERS_DEFAULT,
                    help="folder of the peer reference scripts (default: %(default)s)")
    ap.add_argument("--out", default="benchmarks/out/windows_vs_peers.json")
    a = ap.parse_args(argv)
    if a.child:
        impl, workload = a.child
        child(impl, workload, a.peers.resolve())
        return
    if a.child_memory:
        child_memory(a.child_memory)
        return
    impls = IMPLS if importlib.util.find_spec("bytewax") else [i for i in IMPLS if i != "bytewax"]
    if a.only:
        impls = [i for i in impls if i in a.only]
    report: dict[str, Any] = {"readings": N, "workloads": {}}
    for wl in (WORKLOADS if a.workload == "all" else [a.workload]):
        print(f"workload {wl}: {WORKLOADS[wl][0]:,} sensors, {N:,} readings", flush=True)
        rows: dict[str, Any] = {}
        runnable = []
        for impl in impls:
            if impl != "tidegauge" and not (a.peers / "common.py").exists():
                print(f"  {impl}: skipped, no peer scripts in {a.peers} (use --peers DIR)", flush=True)
            else:
                runnable.append(impl)
        # repetitions are interleaved (tidegauge, peer, peer, ..., tidegauge, ...) so that load from other
        # processes on a shared machine falls on every implementation alike
        results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in runnable}
        for _ in range(a.reps):
            for impl in runnable:
                env = {"POLARS_MAX_THREADS": "1"} if impl == "polars_1thread" else None
                r = spawn(["--child", impl, wl, "--peers", str(a.peers.resolve())], env)
                if r:
                    results[impl].append(r)
        for impl, runs in results.items():
            if not runs:
                continue
            eps = statistics.median(r["events_per_s"] for r in runs)
            rows[impl] = {"median_events_per_s": eps, "runs": [r["events_per_s"] for r in runs],
                          "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                          "windows_out": runs[0]["windows_out"],
                          **({"matches_polars": all(r["matches_polars"] for r in runs)} if impl == "tidegauge" else {})}
            check = ""
            if impl == "tidegauge":
                check = "  results equal polars group_by: " + ("yes" if rows[impl]["matches_polars"] else "NO")
            print(f"  {impl:18s} {eps:>13,.0f} readings/s  peak RSS {rows[impl]['peak_rss_mb']:.0f} MB{check}",
                  flush=True)
        tg = rows.get("tidegauge", {}).get("median_events_per_s")
        if tg:
            for r in rows.values():
                r["tidegauge_ratio"] = tg / r["median_events_per_s"]
            print("  tidegauge / peer: " + ", ".join(f"{k} {v['tidegauge_ratio']:.2f}x" for k, v in rows.items()
                                                     if k != "tidegauge"), flush=True)
        report["workloads"][wl] = rows
    if a.memory:
        for factor in (1, 10):
            r = spawn(["--child-memory", str(factor)])
            if r:
                s = r["rss_samples_mb"]
                print(f"  memory, {r['readings']:,} readings streamed: RSS first sample {s[0][1]:.0f} MB, "
                      f"middle {s[len(s) // 2][1]:.0f} MB, last {s[-1][1]:.0f} MB, peak {r['peak_rss_mb']:.0f} MB",
                      flush=True)
                report[f"memory_x{factor}"] = r
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"written {a.out}")


if __name__ == "__main__":
    main()

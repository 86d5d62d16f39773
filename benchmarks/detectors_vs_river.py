"""The default anomaly detector with per-sensor state against river's per-event ``HalfSpaceTrees``.

    python benchmarks/detectors_vs_river.py [--readings 2000000] [--sensors 10000] [--river-readings 100000]
                                            [--reps 2] [--seed 0]

Workload: the fleet simulator's readings (``FleetConfig(sensors=10_000, rate=2000, seed=0)``, about 2%
of time in anomaly episodes), the three value fields ``temperature``, ``vibration`` and
``power_consumption``, pre-generated before any timing.

- **tidegauge**: ``default_detector(fields=[those three])`` (calibrated per-sensor z-score + flatline,
  combined by max), one logic for the whole stream, per-sensor state indexed by ``_tg_key`` (sensor ids
  encoded once with :class:`~tidegauge.dataflow.keys.KeyDictionary`, as the source does), fed in
  65,536-row batches with ``score_learn``; numba kernels compiled on a throw-away logic first.
- **river**: one shared ``anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=42)``
  scoring then learning each reading (``score_one``; ``learn_one``) as a dict of the three fields
  scaled to [0, 1] by fixed limits, on the first ``--river-readings`` readings (a per-event loop is
  slow; its rate is steady after the first window, so a prefix measures it). This is river's *cheaper*
  setting: one model per sensor, the like-for-like one, costs the same per event plus a model per sensor.

Each implementation and repetition runs in a fresh subprocess (interleaved, so load from other
processes on the shared machine falls on both); the best rate of each is reported with the ratio.
Memory of the default detector: bytes of its per-key state arrays (and of its msgpack snapshot) divided
by sensors x fields, and the RSS growth while one more logic runs over the same stream next to the
earlier ones (median of the 3rd-5th such runs: by then the allocator holds the per-batch buffers and
what grows is the state; allocator noise is about +-2 MB, i.e. +-60 B per sensor and field, so the
array figure is the precise one). Results go to ``benchmarks/out/detectors_vs_river.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FIELDS = ("temperature", "vibration", "power_consumption")
# Fixed scaling of each field to [0, 1] for river (HST needs bounded features); ranges cover the
# simulator's normal readings and its anomalies (values outside are clipped).
LIMITS = {"temperature": (-20.0, 80.0), "vibration": (0.0, 5.0), "power_consumption": (0.0, 500.0)}
BATCH = 65_536
_RSS_RUNS = 5  # two to let the allocator settle (see _run_tidegauge), three to take a median of


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _generate(readings: int, sensors: int, seed: int) -> Any:
    from tidegauge.simulate import FleetConfig, FleetSimulator

    sim = FleetSimulator(FleetConfig(sensors=sensors, rate=2000.0, seed=seed))
    return sim.next_batch(readings).select("sensor_id", "timestamp", *FIELDS)


def _state_bytes(logic: Any) -> int:
    """Bytes of the per-key state arrays of ``logic`` and of every logic it wraps."""
    total, stack = 0, [logic]
    while stack:
        lg = stack.pop()
        total += sum(a[: lg._n_keys].nbytes for a in lg._arrays.values())
        stack.extend(getattr(lg, "members", []))
        if hasattr(lg, "inner"):
            stack.append(lg.inner)
    return total


def _run_tidegauge(args: argparse.Namespace) -> dict[str, Any]:
    import msgspec
    import polars as pl

    from tidegauge.dataflow.base import KEY_ID, TS
    from tidegauge.dataflow.keys import KeyDictionary
    from tidegauge.detectors import default_detector

    raw = _generate(args.readings, args.sensors, args.seed)
    keys = KeyDictionary()
    frame = raw.select(
        keys.encode(raw["sensor_id"]).alias(KEY_ID),
        pl.col("timestamp").dt.epoch("us").alias(TS),
        *FIELDS,
    )
    batches = [frame.slice(a, BATCH) for a in range(0, frame.height, BATCH)]
    det = default_detector(fields=list(FIELDS))
    warm = det.build(None)  # compile the numba kernels outside the timing
    warm.score_learn(frame.head(2_000))
    del warm
    logic = det.build(None)
    flagged = 0
    t0 = time.perf_counter()
    for b in batches:
        flagged += int(logic.score_learn(b)["is_anomaly"].sum())
    elapsed = time.perf_counter() - t0
    # RSS growth of the state alone: more logics over the same stream, each kept alive. The allocator
    # first returns the generator's freed memory (RSS falls for a run or two), then holds the per-batch
    # buffers and what grows is the new state: the median of the last three runs is reported.
    kept, growth = [logic], []
    for _ in range(_RSS_RUNS):
        gc.collect()
        rss0 = _rss_bytes()
        kept.append(det.build(None))
        for b in batches:
            kept[-1].score_learn(b)
        gc.collect()
        growth.append(_rss_bytes() - rss0)
    rss_growth = sorted(growth[-3:])[1]
    cells = args.sensors * len(FIELDS)
    snapshot = len(msgspec.msgpack.encode(logic.snapshot()))
    return {
        "impl": "tidegauge",
        "readings": frame.height,
        "seconds": elapsed,
        "readings_per_s": frame.height / elapsed,
        "flagged": flagged,
        "state_bytes_per_sensor_field": _state_bytes(logic) / cells,
        "snapshot_bytes_per_sensor_field": snapshot / cells,
        "rss_growth_bytes_per_sensor_field": rss_growth / cells,
        "rss_growth_runs_bytes": growth,
    }


def _run_river(args: argparse.Namespace) -> dict[str, Any]:
    from river import anomaly

    raw = _generate(args.river_readings, args.sensors, args.seed)
    cols = [raw[f].to_list() for f in FIELDS]
    rows = []
    for values in zip(*cols, strict=True):
        x = {}
        for f, v in zip(FIELDS, values, strict=True):
            lo, hi = LIMITS[f]
            s = (v - lo) / (hi - lo)
            x[f] = 0.0 if s < 0.0 else (1.0 if s > 1.0 else s)
        rows.append(x)
    model = anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=42)
    scores = []
    t0 = time.perf_counter()
    for x in rows:
        scores.append(model.score_one(x))
        model.learn_one(x)
    elapsed = time.perf_counter() - t0
    return {"impl": "river_hst", "readings": len(rows), "seconds": elapsed, "readings_per_s": len(rows) / elapsed}


def _child(args: argparse.Namespace) -> None:
    result = _run_tidegauge(args) if args.child == "tidegauge" else _run_river(args)
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(impl: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        impl,
        "--readings",
        str(args.readings),
        "--sensors",
        str(args.sensors),
        "--river-readings",
        str(args.river_readings),
        "--seed",
        str(args.seed),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{impl} run failed:\n{proc.stderr}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT ") :]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--readings", type=int, default=2_000_000)
    p.add_argument("--sensors", type=int, default=10_000)
    p.add_argument("--river-readings", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=("tidegauge", "river"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    runs: dict[str, list[dict[str, Any]]] = {"tidegauge": [], "river": []}
    for rep in range(args.reps):
        for impl in ("tidegauge", "river"):  # interleaved so shared-machine load hits both alike
            r = _spawn(impl, args)
            runs[impl].append(r)
            print(
                f"rep {rep} {impl:>9}: {r['readings']:,} readings in {r['seconds']:.2f} s = "
                f"{r['readings_per_s']:,.0f} readings/s",
                flush=True,
            )
    tg = max(runs["tidegauge"], key=lambda r: r["readings_per_s"])
    rv = max(runs["river"], key=lambda r: r["readings_per_s"])
    ratio = tg["readings_per_s"] / rv["readings_per_s"]
    print()
    print(
        f"default detector, {args.sensors:,} sensors x {len(FIELDS)} fields, {tg['readings']:,} readings, "
        f"batches of {BATCH:,}: {tg['readings_per_s']:,.0f} readings/s (best of {args.reps})"
    )
    print(
        f"river HalfSpaceTrees, one shared model, per event, first {rv['readings']:,} readings: "
        f"{rv['readings_per_s']:,.0f} readings/s (best of {args.reps})"
    )
    print(f"ratio: {ratio:,.1f}x (goal >= 50x)")
    print(
        f"state: {tg['state_bytes_per_sensor_field']:.1f} B per sensor and field in arrays, "
        f"{tg['snapshot_bytes_per_sensor_field']:.1f} B in the msgpack snapshot, "
        f"RSS growth {tg['rss_growth_bytes_per_sensor_field']:.1f} B per sensor and field "
        f"(flagged {tg['flagged']:,} readings)"
    )
    out = Path(__file__).parent / "out" / "detectors_vs_river.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": runs, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()

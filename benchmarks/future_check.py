"""The future check (records stamped too far ahead, :mod:`tidegauge.dataflow.watermark`): its cost against the
same clock with the check off (``max_future=None``), in the same run.

Per-record watermarks for 65,536-row batches of sorted event times, repeated and interleaved (``--reps``),
medians printed, for a share of fast-clock records (stamped 2 h ahead, at random rows) of 0, 0.5 % and 10 %.
Each fast record is a candidate that the last ``future_window`` records (1,024) vote on, so its cost grows
with that share; records on time cost one comparison.

    python benchmarks/future_check.py [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from tidegauge.dataflow.watermark import SourceClock, WatermarkConfig

S = 1_000_000
BATCH = 65_536
BATCHES = 20


def batches(fast_share: float) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    out = []
    for k in range(BATCHES):
        ts = np.sort(rng.integers(0, 10**9, BATCH)).astype(np.int64) + k * 10**9
        ts[rng.random(BATCH) < fast_share] += 7_200 * S
        out.append(ts)
    return out


def clock_ms(cfg: WatermarkConfig, data: list[np.ndarray]) -> float:
    clock = SourceClock(cfg)
    t0 = time.perf_counter()
    for k, ts in enumerate(data):
        clock.assign(ts, k)
    return (time.perf_counter() - t0) / len(data) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    on, off = WatermarkConfig(max_delay=S), WatermarkConfig(max_delay=S, max_future=None)
    for share in (0.0, 0.005, 0.1):
        data = batches(share)
        clock_ms(on, data[:2])  # compile the kernel first
        times: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(args.reps):  # interleaved: machine load falls on both alike
            times["off"].append(clock_ms(off, data))
            times["on"].append(clock_ms(on, data))
        a, b = statistics.median(times["off"]), statistics.median(times["on"])
        print(f"{share:6.1%} fast records, {BATCH:,}-row batch: check off {a:.2f} ms, on {b:.2f} ms "
              f"({b / BATCH * 1e6:.0f} ns a record, ratio {b / a:.2f}x)")


if __name__ == "__main__":
    main()

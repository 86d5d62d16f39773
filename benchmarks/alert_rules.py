"""Rule evaluation cost: rules x keys x readings/s through ``AlertManager.evaluate``.

Reference in the same run: the bare polars work of evaluating every rule's condition on the batch (one
``select`` of all conditions), which is the floor for vectorised rule evaluation.

    python benchmarks/alert_rules.py --rules 100 --keys 10000 --batch 50000 --batches 20
    POLARS_MAX_THREADS=1 python benchmarks/alert_rules.py --mix     # one core; every rule kind

``--mix`` makes the rules a mix of every kind (per 10: 5 conditions, 1 with hysteresis, 1 rate of change,
1 count pattern, 1 sequence pattern, 1 fleet share; plus one no-data rule), the per-key rules with state
(rate, patterns, no-data) being the expensive ones. The reference stays the bare conditions of the
condition rules.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from tidegauge._time import ManualClock
from tidegauge.alerting import AlertManager, LogNotifier, parse_config


def make_batch(rng: np.random.Generator, keys: int, n: int, t0_us: int) -> pl.DataFrame:
    return pl.DataFrame({
        "sensor_id": pl.Series(rng.integers(0, keys, n)).cast(pl.String),
        "timestamp": pl.Series(t0_us + np.sort(rng.integers(0, 1_000_000, n))).cast(pl.Datetime("us", "UTC")),
        "temperature": rng.normal(25, 5, n),
        "vibration": rng.gamma(2.0, 0.5, n),
        "score": rng.random(n),
    })


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=100)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--mix", action="store_true", help="every rule kind, not only conditions")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    # thresholds spread so a few rules match rarely (~1e-5 of readings) and most never do
    rules = [{"name": f"r{i}", "expr": f"temperature > {50 + i} AND vibration > {1 + i % 5}" if i % 2 else
              f"score > {0.99999 + i * 1e-7:.7f}", "for": "1m"} for i in range(a.rules)]
    if a.mix:
        rules = [_mixed(i, r) for i, r in enumerate(rules)]
        rules[-1] = {"name": "silent", "kind": "no_data", "silent_for": "5m"}
    cfg = parse_config({"rules": rules, "route": {"receiver": "log"}, "receivers": [{"name": "log", "kind": "log"}]})
    clock = ManualClock(1_767_225_600_000_000)
    m = AlertManager(cfg, clock=clock, notifiers={"log": LogNotifier()}, delivery="none")
    batches = [make_batch(rng, a.keys, a.batch, clock.now_us() + i * 1_000_000) for i in range(a.batches)]
    exprs = [pl.sql_expr(r["expr"]).any().alias(r["name"]) for r in rules if r.get("kind", "condition") ==
             "condition"]

    t = time.perf_counter()
    for b in batches:
        b.select(exprs)
    ref = time.perf_counter() - t

    t = time.perf_counter()
    for b in batches:
        clock.advance("1s")
        m.evaluate(b)
    dt = time.perf_counter() - t
    total = a.batch * a.batches
    kinds = " (mixed kinds)" if a.mix else ""
    print(f"rules={a.rules}{kinds} keys={a.keys} batch={a.batch} readings={total} alerts={len(m.alerts)}")
    print(f"reference (conditions only): {total / ref:,.0f} readings/s")
    print(f"AlertManager.evaluate:       {total / dt:,.0f} readings/s  ({dt / ref:.2f}x the reference time)")
    print(f"rule-evaluations/s (rules x readings/s): {a.rules * total / dt:,.0f}")
    m.close()


def _mixed(i: int, cond: dict[str, object]) -> dict[str, object]:
    name, kind = f"r{i}", i % 10
    if kind == 5:
        return {**cond, "resolve": "temperature < 30"}
    if kind == 6:
        return {"name": name, "kind": "rate", "column": "temperature", "per": "1s", "above": 1e6 + i}
    if kind == 7:
        return {"name": name, "kind": "count", "expr": f"vibration > {8 + i / 100}", "at_least": 3, "within": "10s"}
    if kind == 8:
        return {"name": name, "kind": "sequence", "first": f"vibration > {8 + i / 100}", "then": "temperature > 60",
                "within": "30s"}
    if kind == 9:
        return {"name": name, "kind": "fleet", "expr": "score > 0.999", "over": "5m", "when": "ratio > 0.5"}
    return cond


if __name__ == "__main__":
    main()

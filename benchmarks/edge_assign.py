"""Assignment strategies: time to assign 100,000 sensors, and sensors moved per membership change.

Reference in the same run: modulo hashing (``blake2b(sensor) % agents``, pure Python), the assignment
everyone writes first; it is as fast as assignment gets in Python and moves almost every sensor when the
membership changes, which is what ``consistent_hash`` is for.

For each strategy: the median time of ``--reps`` interleaved runs to assign ``--sensors`` sensors (with
random coordinates) to ``--agents`` agents (random locations, equal capacity, random loads), then the
sensors whose agent changes when one agent leaves and when one joins, against the ideal (the leaver's
sensors; the newcomer's fair share), with the full assignment recomputed. "failover" is what the
coordinator does when agents leave (:func:`~tidegauge.edge.strategies.reassign`: survivors keep their
sensors, only the leaver's are placed), with its time. ``consistent_hash`` is timed cold (its per-sensor
hash cache cleared, as in a fresh coordinator) and warm (as in a recompute after a membership change).

    python benchmarks/edge_assign.py --sensors 100000 --agents 10 --reps 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tidegauge.edge import strategies
from tidegauge.edge.strategies import STRATEGIES, AgentInfo, SensorInfo, assign, reassign


def modulo_hash(sensors: list[SensorInfo], agents: list[AgentInfo]) -> dict[str, str]:
    ids = sorted(a.node_id for a in agents)
    n = len(ids)
    return {s.sensor_id: ids[int.from_bytes(hashlib.blake2b(s.sensor_id.encode(), digest_size=8).digest(),
                                            "little") % n] for s in sensors}


def moved(before: dict[str, str], after: dict[str, str]) -> int:
    return sum(1 for s, a in before.items() if after.get(s) != a)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sensors", type=int, default=100_000)
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    lat, lon = rng.uniform(-60, 60, a.sensors), rng.uniform(-180, 180, a.sensors)
    sensors = [SensorInfo(f"sensor-{i:06d}", float(la), float(lo))
               for i, (la, lo) in enumerate(zip(lat, lon, strict=True))]
    cap = 2 * a.sensors  # capacity does not bind: the strategies' own placement is measured
    agents = [AgentInfo(f"gw-{j:03d}", cap, (float(rng.uniform(-60, 60)), float(rng.uniform(-180, 180))),
                        float(rng.uniform(0, 100)), 0) for j in range(a.agents)]
    newcomer = AgentInfo("gw-new", cap, (0.0, 0.0), 0.0, 0)

    runs: dict[str, Callable[[list[AgentInfo]], dict[str, str]]] = {
        "modulo_hash (reference)": lambda ag: modulo_hash(sensors, ag)}
    for name in STRATEGIES:
        runs[name] = lambda ag, name=name: assign(name, sensors, ag)  # type: ignore[misc]
    times: dict[str, list[float]] = {k: [] for k in [*runs, "consistent_hash (warm cache)"]}
    for _ in range(a.reps):  # interleaved, so load from other processes falls on all alike
        for name, fn in runs.items():
            strategies._SENSOR_HASHES.clear()
            t0 = time.perf_counter()
            fn(agents)
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assign("consistent_hash", sensors, agents)
        times["consistent_hash (warm cache)"].append(time.perf_counter() - t0)
    ref = statistics.median(times["modulo_hash (reference)"])
    rows = []
    leaver = agents[a.agents // 2]
    print(f"{a.sensors:,} sensors, {a.agents} agents, median of {a.reps}\n")
    print(f"{'strategy':30} {'assign':>9} {'vs ref':>7} {'moved on leave':>16} {'leaver had':>10} "
          f"{'moved on join':>15} {'failover moved':>15} {'failover':>9}")
    for name, ts in times.items():
        t = statistics.median(ts)
        fn = runs.get(name, runs["consistent_hash"])
        base = fn(agents)
        leave = moved(base, fn([x for x in agents if x is not leaver]))
        join = moved(base, fn([*agents, newcomer]))
        share = sum(1 for v in base.values() if v == leaver.node_id)
        survivors = [x for x in agents if x is not leaver]
        fo_moved, fo_s = 0, 0.0
        if name in STRATEGIES or name.startswith("consistent_hash"):
            strategy = "consistent_hash" if name.startswith("consistent_hash") else name
            t0 = time.perf_counter()
            fo = reassign(strategy, sensors, survivors, base)  # type: ignore[arg-type]
            fo_s = time.perf_counter() - t0
            fo_moved = moved(base, fo)
        rows.append({"strategy": name, "assign_s": t, "ratio_vs_reference": ref / t, "moved_on_leave": leave,
                     "leaver_share": share, "moved_on_join": join, "fair_share_join": a.sensors / (a.agents + 1),
                     "failover_moved": fo_moved, "failover_s": fo_s})
        print(f"{name:30} {t * 1e3:7.0f}ms {ref / t:6.2f}x {leave:8,} ({leave / a.sensors:5.1%}) {share:10,} "
              + (f"{join:7,} ({join / a.sensors:5.1%}) {fo_moved:15,} {fo_s * 1e3:7.0f}ms" if fo_s else
                 f"{join:7,} ({join / a.sensors:5.1%}) {'n/a':>15} {'':>9}"))
    print(f"\nideal: leave moves the leaver's sensors only (~{a.sensors / a.agents:,.0f}, "
          f"{1 / a.agents:.1%}); join moves the newcomer's fair share (~{a.sensors / (a.agents + 1):,.0f}, "
          f"{1 / (a.agents + 1):.1%})")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "edge_assign.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

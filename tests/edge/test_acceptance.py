"""Acceptance, with real processes on loopback: ``tidegauge serve --edge-db`` with a coordinator, three real
``tidegauge agent --follow-assignment`` processes (each simulating the same 300-sensor fleet and forwarding
the readings of the sensors it is assigned) and 300 simulated sensors, for each strategy.

- the assignment is the one the strategy documents (recomputed here from the same inputs);
- an agent killed by SIGKILL has its sensors taken over within the heartbeat timeout (plus the heartbeat
  intervals needed to notice and to tell the others), measured from when the survivors' flows start taking
  their readings;
- no sensor ever ran on two agents at once, through startup, the kill and the killed agent's return: from
  each agent's own log of what its flow applied when (``<data-dir>/assignments.jsonl``), and every reading
  the agents forwarded upstream was processed under a set that held its sensor (so the logs are what the
  flows did);
- the killed agent's availability is what its heartbeats say.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from tests.net import free_port
from tidegauge.edge.config import SensorsSection, load_sensors
from tidegauge.edge.strategies import STRATEGIES, AgentInfo, assign, reassign
from tidegauge.server import hash_token

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-edge-acceptance"
TIMEOUT_S = 3.0  # real agent processes on 2 shared cores: room for a stall of a second or two
INTERVAL_S = 0.25
SETTLE_S = 8.0  # from the first heartbeat: room for the three agent processes to start on a busy machine
RATE = 300  # readings/s each agent simulates: one a second per sensor, light enough for 2 shared cores
# location and capacity: gw-c takes half as many sensors as the others where a strategy weighs capacity
AGENTS = {"gw-a": ("40.0,-100.0", 1000), "gw-b": ("50.0,10.0", 1000), "gw-c": ("-30.0,140.0", 500)}
SENSORS = load_sensors(SensorsSection(simulator={"sensors": 300, "seed": 11}))


def _pipeline(tmp: Path, strategy: str, port: int) -> Path:
    path = tmp / "pipeline.yaml"
    path.write_text(f"""
name: upstream
source: {{http: {{log_dir: intake, durability: os, schema: {{sensor_id: str, timestamp: timestamp, temperature: float,
                                                            edge_node: str, edge_seq: int}}}}}}
sink: {{file: out/readings.parquet}}
dead_letter: {{file: out/dead.jsonl}}
coordinator:
  strategy: {strategy}
  heartbeat_timeout: {TIMEOUT_S}s
  settle: {SETTLE_S}s
  sensors: {{simulator: {{sensors: 300, seed: 11}}}}
server:
  port: {port}
  tokens: [{{name: edge, hash: "{hash_token(TOKEN)}", scopes: [ingest, read], nodes: [{", ".join(AGENTS)}]}}]
""")
    return path


class Cluster:
    def __init__(self, tmp: Path, strategy: str) -> None:
        self.tmp, self.port = tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.pipeline = _pipeline(tmp, strategy, self.port)
        self.files: list[Any] = []  # closed in close()
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}  # node -> assignment log of its current process
        self.runs: list[Run] = []  # every agent process started
        self.client = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
        self.start_server()

    def start_server(self) -> None:
        self.files.append(open(self.tmp / "server.err", "a"))
        self.server = subprocess.Popen([sys.executable, "-m", "tidegauge", "serve", str(self.pipeline),
                                        "--edge-db", "edge.db"], cwd=self.tmp, env=self.env, stderr=self.files[-1])
        deadline = time.monotonic() + 60
        while True:
            assert self.server.poll() is None, (self.tmp / "server.err").read_text()
            try:
                if self.client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        # Warm up: the first batch through a fresh flow compiles its numba kernels, which holds the event loop
        # for a second or more on a busy machine; with a 2 s timeout that would flap the first agents.
        # (stamped now: the agents' readings that follow must not look far ahead of the watermark)
        reading = b'{"sensor_id":"warmup","timestamp":%d,"temperature":1.0}' % int(time.time())
        while self.client.post("/api/v1/ingest", content=reading).status_code == 503:
            time.sleep(0.1)
        self.wait_for(lambda: re.search(r'tidegauge_records_in_total\{step="http"\} [1-9]',
                                        self.client.get("/metrics").text) is not None,
                      "the warm-up reading processed", 60)

    def start(self, node: str) -> None:
        """Start ``node``'s agent; a restarted one keeps its data dir (outbox, checkpoints, log)."""
        loc, capacity = AGENTS[node]
        n = sum(r.node == node for r in self.runs)
        data = self.tmp / node
        self.logs[node] = data / "assignments.jsonl"
        first_line = len(self.read(self.logs[node]))
        self.files.append(open(self.tmp / f"{node}-{n}.err", "a"))  # closed in close()
        self.agents[node] = subprocess.Popen(
            [sys.executable, "-m", "tidegauge", "agent", "--id", node, "--upstream", self.url, "--token", TOKEN,
             "--data-dir", str(data), "--listen", f"127.0.0.1:{free_port()}", "--follow-assignment",
             "--sensors", "300", "--seed", "11", "--rate", str(RATE), "--no-detect", "--forward", "readings",
             "--heartbeat-interval", f"{INTERVAL_S}s", "--checkpoint-interval", "500ms", f"--location={loc}",
             "--capacity", str(capacity)], cwd=self.tmp, env=self.env, stderr=self.files[-1])
        run = Run(node, self.logs[node], self.agents[node], first_line)
        self.runs.append(run)
        if n:
            # A restarted agent's outbox keeps the records its last checkpoint covered (forwarded now, processed
            # by the run before) and numbers what it writes after them: that number, read once its flow has
            # started (recovered) and before it processes anything (it has no sensors yet), tells the runs apart.
            self.wait_for(lambda: len(self.read(run.log)) > first_line, f"{node} restarted", 60)
            with sqlite3.connect(data / "outbox.db") as db:
                run.seq_after = int(db.execute("SELECT committed_seq FROM streams WHERE stream = 'readings'")
                                    .fetchone()[0])
            assert self.read(run.log)[-1]["sensors"] == [], "it must not process before it is assigned sensors"

    def entries(self, run: Run) -> list[dict[str, Any]]:
        """The lines of its log that ``run`` wrote."""
        later = [r.first_line for r in self.runs if r.log == run.log and r.first_line > run.first_line]
        return self.read(run.log)[run.first_line:min(later) if later else None]

    def kill(self, node: str) -> int:
        self.agents[node].send_signal(signal.SIGKILL)
        self.agents[node].wait()
        run = next(r for r in self.runs if r.proc is self.agents[node])
        run.ended_ns = time.monotonic_ns()  # after wait(): the process is gone by now
        return run.ended_ns

    def log(self, node: str) -> list[dict[str, Any]]:
        return self.read(self.logs[node])

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def processing(self) -> dict[str, set[str]]:
        """What each live agent's flow processes now (the last set its log says it applied)."""
        out = {}
        for node, p in self.agents.items():
            entries = self.log(node)
            if p.poll() is None and entries:
                out[node] = set(entries[-1]["sensors"])
        return out

    def wait_for(self, cond: Any, what: str, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        while not cond():
            assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
            for r in self.runs:
                assert r.ended_ns is not None or r.proc.poll() is None, f"agent {r.node} exited: {r.proc.returncode}"
            time.sleep(0.05)
        return time.monotonic() - t0

    def close(self) -> None:
        for r in self.runs:
            if r.proc.poll() is None:
                r.proc.terminate()
                r.proc.wait(30)
                r.ended_ns = time.monotonic_ns()
        self.server.send_signal(signal.SIGINT)
        try:
            self.server.wait(30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.client.close()
        for f in self.files:
            f.close()


@dataclass
class Run:
    """One agent process: its node id, assignment log and first line in it, process, the last outbox sequence
    number of an earlier run, and when it was killed (monotonic)."""

    node: str
    log: Path
    proc: subprocess.Popen[bytes]
    first_line: int
    seq_after: int = 0
    ended_ns: int | None = None


def _check_no_double_processing(cluster: Cluster, now_ns: int) -> int:
    """Every (agent, sensor, [start, end)) interval from the agents' logs; no two agents' intervals of a sensor
    overlap. Returns how many pairs were compared."""
    intervals: dict[str, list[tuple[int, int, str]]] = {}
    for run in cluster.runs:
        entries = cluster.entries(run)
        for i, e in enumerate(entries):
            end = entries[i + 1]["mono_ns"] if i + 1 < len(entries) else (run.ended_ns or now_ns)
            for s in e["sensors"]:
                intervals.setdefault(s, []).append((e["mono_ns"], end, run.node))
    checked = 0
    for s, spans in intervals.items():
        for i, (s1, e1, n1) in enumerate(spans):
            for s2, e2, n2 in spans[i + 1:]:
                if n1 != n2:
                    checked += 1
                    assert e1 <= s2 or e2 <= s1, f"sensor {s} ran on {n1} in [{s1}, {e1}) and on {n2} in [{s2}, {e2})"
    return checked


def _check_forwarded(cluster: Cluster, readings: pl.DataFrame) -> int:
    """Every reading an agent forwarded fell under a set of its log that held its sensor (by event time: each
    log line says from which event time of that agent's simulated stream on it applied). Returns the count."""
    assert readings.height > 0
    by_run: dict[int, tuple[list[int], list[set[str]]]] = {}
    for i, run in enumerate(cluster.runs):
        entries = cluster.entries(run)
        by_run[i] = ([e["event_from_us"] for e in entries], [set(e["sensors"]) for e in entries])
    runs_of = {node: sorted((r.seq_after, i) for i, r in enumerate(cluster.runs) if r.node == node)
               for node in AGENTS}
    checked = 0
    ts = readings["timestamp"].dt.epoch("us")
    for node, sensor, t, seq in zip(readings["edge_node"], readings["sensor_id"], ts, readings["edge_seq"],
                                    strict=True):
        run = [i for after, i in runs_of[node] if after < seq][-1]  # the run that wrote outbox record `seq`
        starts, sets = by_run[run]
        k = bisect.bisect_right(starts, t) - 1
        assert k >= 0, f"{node} forwarded {sensor}@{t} before its flow applied any set"
        # a tie at a boundary: the batch before the switch may end with readings of that same instant
        ok = sensor in sets[k] or (k > 0 and starts[k] == t and sensor in sets[k - 1])
        assert ok, f"{node} forwarded {sensor}@{t} (seq {seq}), which its flow did not hold then (run {run})"
        checked += 1
    return checked


def _targets(cluster: Cluster) -> dict[str, str]:
    return {r["sensor_id"]: r["target"] for r in cluster.client.get("/api/v1/edge/assignments").json()}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_three_agents_300_sensors_failover_and_hand_back(tmp_path: Path, strategy: str) -> None:
    cluster = Cluster(tmp_path, strategy)
    try:
        for node in AGENTS:
            cluster.start(node)
        # all three register within the settle period (one timeout), so nothing is handed out before
        cluster.wait_for(lambda: sum(map(len, cluster.processing().values())) == 300 and
                         len(cluster.processing()) == 3, "all 300 sensors running on three agents")
        rows = {r["node_id"]: r for r in cluster.client.get("/api/v1/edge/agents").json()}
        assert all(r["status"] == "online" and r["availability"] == 1.0 for r in rows.values()), rows
        # the strategy's documented assignment, from the inputs the coordinator had when the last agent joined
        infos = [AgentInfo(n, AGENTS[n][1], tuple(map(float, AGENTS[n][0].split(","))), 0.0, 0)  # type: ignore[arg-type]
                 for n in AGENTS]
        expected = assign(strategy, SENSORS, infos)  # type: ignore[arg-type]
        assert _targets(cluster) == expected
        running = cluster.processing()
        assert {s: n for n, ss in running.items() for s in ss} == expected
        if strategy == "least_loaded":  # gw-c has half the others' capacity
            counts = Counter(expected.values())
            assert counts["gw-c"] < counts["gw-a"] and abs(counts["gw-a"] - counts["gw-b"]) <= 1
        before = running

        time.sleep(1.0)
        first_wall = cluster.entries(next(r for r in cluster.runs if r.node == "gw-c"))[0]["wall_us"]  # ~1st beat
        killed_at = cluster.kill("gw-c")
        orphans = before["gw-c"]
        cluster.wait_for(lambda: orphans <= set().union(*cluster.processing().values()), "gw-c's sensors taken over")
        # when the survivors' flows applied the sets that hold the last of the orphans (from their logs)
        took_ns = max(min(e["mono_ns"] for e in cluster.log(n) if s in e["sensors"] and e["mono_ns"] > killed_at)
                      for s in orphans for n in ("gw-a", "gw-b") if any(s in e["sensors"] for e in cluster.log(n)
                                                                         if e["mono_ns"] > killed_at))
        took = (took_ns - killed_at) / 1e9
        print(f"\n{strategy}: gw-c's {len(orphans)} sensors taken over {took:.2f}s after SIGKILL "
              f"(timeout {TIMEOUT_S}s, interval {INTERVAL_S}s)")
        assert took < TIMEOUT_S + 4 * INTERVAL_S + 1.0
        cluster.wait_for(lambda: sum(map(len, cluster.processing().values())) == 300, "all sensors running again")
        after = cluster.processing()
        assert set(after) == {"gw-a", "gw-b"}
        assert before["gw-a"] <= after["gw-a"] and before["gw-b"] <= after["gw-b"]  # only gw-c's sensors moved
        if strategy != "least_loaded":  # (its placement of the orphans depends on the loads of the moment)
            survivors = [i for i in infos if i.node_id != "gw-c"]
            assert _targets(cluster) == reassign(strategy, SENSORS, survivors, expected)  # type: ignore[arg-type]

        time.sleep(2.0)
        rows = {r["node_id"]: r for r in cluster.client.get("/api/v1/edge/agents").json()}
        now_wall = time.time() * 1e6
        c = rows["gw-c"]
        last_wall = time.time() * 1e6 - (time.monotonic_ns() - killed_at) / 1e3  # the kill, on the wall clock
        expected_avail = (last_wall - first_wall) / (now_wall - first_wall)
        assert c["status"] == "offline" and c["sensors"] == 0
        # its first heartbeat follows its flow's first batch (the log's first line: it registers after that),
        # its last one at most one interval before the kill
        assert c["availability"] == pytest.approx(expected_avail, abs=(INTERVAL_S + 0.5) * 1e6 / (now_wall - first_wall)
                                                  + 0.01)
        assert rows["gw-a"]["availability"] == 1.0 and rows["gw-a"]["status"] == "online"

        # gw-c returns (a fresh process): its share is handed back without double processing
        cluster.start("gw-c")
        cluster.wait_for(lambda: len(cluster.processing().get("gw-c", ())) > 0 and
                         sum(map(len, cluster.processing().values())) == 300, "gw-c handed its share back")
        if strategy != "least_loaded":
            cluster.wait_for(lambda: {s: n for n, ss in cluster.processing().items() for s in ss} == expected,
                             "the original assignment restored")
        if strategy == "consistent_hash":  # the CLI, against the live server
            cli = [sys.executable, "-m", "tidegauge", "edge"]
            opts = ["--upstream", cluster.url, "--token", TOKEN]
            listed = json.loads(subprocess.run([*cli, "agents", *opts, "--json"], capture_output=True, check=True,
                                               env=cluster.env).stdout)
            assert [r["node_id"] for r in listed] == ["gw-a", "gw-b", "gw-c"]
            table = subprocess.run([*cli, "assignments", *opts, "--agent", "gw-a"], capture_output=True, text=True,
                                   check=True, env={**cluster.env, "COLUMNS": "200"}).stdout
            assert "sensors at" in table and "gw-a" in table
            bad = subprocess.run([*cli, "agents", *opts[:2], "--token", "wrong"], capture_output=True, text=True,
                                 env=cluster.env)
            assert bad.returncode == 2 and "401" in bad.stderr
        metrics = cluster.client.get("/metrics").text
        assert "tidegauge_edge_assignment_conflicts_total 0.0" in metrics, metrics
        time.sleep(1.5)  # the last readings checkpointed and forwarded
    finally:
        cluster.close()
    assert _check_no_double_processing(cluster, time.monotonic_ns()) > 0
    readings = pl.read_parquet(tmp_path / "out" / "readings.parquet").filter(pl.col("edge_node").is_not_null())
    assert _check_forwarded(cluster, readings) == readings.height
    # every sensor was forwarded, gw-c's orphans by gw-c and by whichever of gw-a and gw-b took them
    assert readings["sensor_id"].n_unique() == 300
    moved = readings.filter(pl.col("sensor_id").is_in(list(orphans)))
    assert set(moved["edge_node"]) == {"gw-c", *(n for n in ("gw-a", "gw-b") if orphans & after[n])}


@pytest.mark.slow
def test_upstream_killed_and_restarted_keeps_registry_and_assignment(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, "consistent_hash")
    try:
        for node in AGENTS:
            cluster.start(node)
        cluster.wait_for(lambda: sum(map(len, cluster.processing().values())) == 300 and
                         len(cluster.processing()) == 3, "all 300 sensors running on three agents")
        before = cluster.processing()
        gens = {r["node_id"]: r["generation"] for r in cluster.client.get("/api/v1/edge/agents").json()}
        cluster.server.send_signal(signal.SIGKILL)
        cluster.server.wait()
        time.sleep(TIMEOUT_S + 1)  # longer than the agents' leases: they stop processing
        assert sum(map(len, cluster.processing().values())) == 0
        cluster.start_server()
        cluster.wait_for(lambda: cluster.processing() == before, "the agents resume the same sensors")
        rows = {r["node_id"]: r for r in cluster.client.get("/api/v1/edge/agents").json()}
        assert all(r["status"] == "online" for r in rows.values()), rows
        assert {n: r["generation"] for n, r in rows.items()} == gens  # the same assignment, not a new one
        time.sleep(2 * TIMEOUT_S)
        assert cluster.processing() == before
        metrics = cluster.client.get("/metrics").text
        assert "tidegauge_edge_assignment_conflicts_total 0.0" in metrics
        assert "tidegauge_edge_reassignments_total 0.0" in metrics
        _check_no_double_processing(cluster, time.monotonic_ns())  # nothing moved, so nothing to overlap
    finally:
        cluster.close()

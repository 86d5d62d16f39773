"""Acceptance, with real processes on loopback: ``tidegauge serve`` with a coordinator, three heartbeat agents
(tests/edge/fake_agent.py) and 300 simulated sensors, for each strategy.

- the assignment is the one the strategy documents (recomputed here from the same inputs);
- an agent killed by SIGKILL has its sensors taken over within the heartbeat timeout (plus the heartbeat
  intervals needed to notice and to tell the others);
- from the agents' own logs of what they processed when: no sensor ever ran on two agents at once, through
  startup, the kill and the killed agent's return;
- the killed agent's availability is what its heartbeats say.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tidegauge.edge.config import SensorsSection, load_sensors
from tidegauge.edge.strategies import STRATEGIES, AgentInfo, assign, reassign
from tidegauge.server import hash_token

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-edge-acceptance"
TIMEOUT_S = 2.0
INTERVAL_S = 0.25
SETTLE_S = 8.0  # from the first heartbeat: room for the three agent processes to start on a busy machine
AGENTS = {"gw-a": ("40.0,-100.0", 0.0), "gw-b": ("50.0,10.0", 0.0), "gw-c": ("-30.0,140.0", 50.0)}
SENSORS = load_sensors(SensorsSection(simulator={"sensors": 300, "seed": 11}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pipeline(tmp: Path, strategy: str, port: int) -> Path:
    path = tmp / "pipeline.yaml"
    path.write_text(f"""
name: upstream
source: {{http: {{log_dir: intake, durability: os}}}}
sink: {{file: out/readings.parquet}}
coordinator:
  strategy: {strategy}
  heartbeat_timeout: {TIMEOUT_S}s
  settle: {SETTLE_S}s
  sensors: {{simulator: {{sensors: 300, seed: 11}}}}
server:
  port: {port}
  tokens: [{{name: edge, hash: "{hash_token(TOKEN)}", scopes: [ingest, read]}}]
""")
    return path


class Cluster:
    def __init__(self, tmp: Path, strategy: str) -> None:
        self.tmp, self.port = tmp, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.pipeline = _pipeline(tmp, strategy, self.port)
        self.files: list[Any] = []  # closed in close()
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}  # node -> log of its current process
        self.runs: list[tuple[str, Path, subprocess.Popen[bytes]]] = []  # every process started
        self.ended: dict[Path, int] = {}  # log -> when its process was killed
        self.client = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
        self.start_server()

    def start_server(self) -> None:
        self.files.append(open(self.tmp / "server.err", "a"))
        self.server = subprocess.Popen([sys.executable, "-m", "tidegauge", "serve", str(self.pipeline)],
                                       cwd=self.tmp, env=self.env, stderr=self.files[-1])
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
        reading = b'{"sensor_id":"warmup","timestamp":"2026-01-01T00:00:00Z","temperature":1.0}'
        while self.client.post("/api/v1/ingest", content=reading).status_code == 503:
            time.sleep(0.1)
        self.wait_for(lambda: re.search(r'tidegauge_records_in_total\{step="http"\} [1-9]',
                                        self.client.get("/metrics").text) is not None,
                      "the warm-up reading processed", 60)

    def start(self, node: str) -> None:
        loc, extra = AGENTS[node]
        self.logs[node] = self.tmp / f"{node}-{sum(n == node for n, _, _ in self.runs)}.jsonl"
        self.files.append(open(self.tmp / f"{node}.err", "a"))  # closed in close()
        self.agents[node] = subprocess.Popen(
            [sys.executable, "-m", "tests.edge.fake_agent", "--id", node, "--upstream", self.url, "--token", TOKEN,
             "--log", str(self.logs[node]), "--interval", str(INTERVAL_S), f"--location={loc}",
             f"--extra-load={extra}"], cwd=ROOT, env=self.env, stderr=self.files[-1])
        self.runs.append((node, self.logs[node], self.agents[node]))

    def kill(self, node: str) -> int:
        self.agents[node].send_signal(signal.SIGKILL)
        self.agents[node].wait()
        self.ended[self.logs[node]] = time.monotonic_ns()  # after wait(): the process is gone by now
        return self.ended[self.logs[node]]

    def log(self, node: str) -> list[dict[str, Any]]:
        return self.read(self.logs[node])

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def processing(self) -> dict[str, set[str]]:
        out = {}
        for node, p in self.agents.items():
            entries = self.log(node)
            if p.poll() is None and entries:
                out[node] = set(entries[-1]["sensors"])
        return out

    def wait_for(self, cond: Any, what: str, timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        while not cond():
            assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
            time.sleep(0.05)
        return time.monotonic() - t0

    def close(self) -> None:
        for p in self.agents.values():
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        self.server.send_signal(signal.SIGINT)
        try:
            self.server.wait(30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.client.close()
        for f in self.files:
            f.close()


def _check_no_double_processing(cluster: Cluster, now_ns: int) -> int:
    """Every (agent, sensor, [start, end)) interval from the logs; no two agents' intervals of a sensor overlap."""
    intervals: dict[str, list[tuple[int, int, str]]] = {}
    for node, path, _ in cluster.runs:
        entries = cluster.read(path)
        for i, e in enumerate(entries):
            end = entries[i + 1]["mono_ns"] if i + 1 < len(entries) else cluster.ended.get(path, now_ns)
            for s in e["sensors"]:
                intervals.setdefault(s, []).append((e["mono_ns"], end, node))
    checked = 0
    for s, spans in intervals.items():
        for i, (s1, e1, n1) in enumerate(spans):
            for s2, e2, n2 in spans[i + 1:]:
                if n1 != n2:
                    checked += 1
                    assert e1 <= s2 or e2 <= s1, f"sensor {s} ran on {n1} in [{s1}, {e1}) and on {n2} in [{s2}, {e2})"
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
        infos = [AgentInfo(n, 1000, tuple(map(float, AGENTS[n][0].split(","))), AGENTS[n][1], 0)  # type: ignore[arg-type]
                 for n in AGENTS]
        expected = assign(strategy, SENSORS, infos)  # type: ignore[arg-type]
        assert _targets(cluster) == expected
        running = cluster.processing()
        assert {s: n for n, ss in running.items() for s in ss} == expected
        if strategy == "least_loaded":  # gw-c reports 50 readings/s of other work
            counts = Counter(expected.values())
            assert counts["gw-c"] < counts["gw-a"] and abs(counts["gw-a"] - counts["gw-b"]) <= 1
        before = running

        time.sleep(1.0)
        first_wall = cluster.log("gw-c")[0]["wall_us"]
        killed_at = cluster.kill("gw-c")
        orphans = before["gw-c"]
        took = cluster.wait_for(lambda: orphans <= set().union(*cluster.processing().values()),
                                "gw-c's sensors taken over")
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
        # its last heartbeat was at most one interval before the kill
        assert c["availability"] == pytest.approx(expected_avail, abs=INTERVAL_S * 1e6 / (now_wall - first_wall) + 0.01)
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
        assert _check_no_double_processing(cluster, time.monotonic_ns()) > 0
    finally:
        cluster.close()


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

"""Acceptance: an agent (real process) offline at 2,000 readings/s, then back; the upstream (real process)
gets every reading exactly once, in order per stream, and the outbox drains. Variants: the agent SIGKILLed
while offline and restarted; the upstream SIGKILLed mid-replay and restarted; a full outbox.

The link is a TCP proxy the test cuts and restores. ``EDGE_OFFLINE_S`` sets the outage (default 8 s); the
several-minute variant runs with ``EDGE_SLOW_OFFLINE_S=300`` (seconds offline).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from tests.edge.procs import TOKEN, LinkProxy, Proc, agent, free_port, metrics, received, status, upstream, wait_for

RATE = 2000
OFFLINE_S = float(os.environ.get("EDGE_OFFLINE_S", "8"))


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.up_port, self.listen = free_port(), free_port()
        self.up_root = tmp / "upstream"
        self.up: Proc = upstream(self.up_root, self.up_port)
        self.proxy = LinkProxy(self.up_port)
        self.agent: Proc | None = None
        self.agent_args: tuple[str, ...] = ()

    def start_agent(self, *extra: str) -> None:
        self.agent_args = extra
        self.agent = agent(self.tmp / "agent", self.proxy.port, self.listen, *extra)

    def restart_agent(self) -> None:
        self.agent = agent(self.tmp / "agent", self.proxy.port, self.listen, *self.agent_args)

    def restart_upstream(self) -> None:
        self.up = upstream(self.up_root, self.up_port)

    def box(self, stream: str = "readings") -> dict[str, int]:
        return dict(status(self.listen)["outbox"][stream])

    def wait_acked(self, at_least: int, timeout: float, stream: str = "readings") -> None:
        wait_for(lambda: self.box(stream)["acked_seq"] >= at_least, timeout, f"{stream} acked >= {at_least}",
                 self.agent)

    def wait_drained(self, last: int, timeout: float, stream: str = "readings") -> None:
        def drained() -> bool:
            b = self.box(stream)
            return b["last_seq"] >= last and b["acked_seq"] >= b["last_seq"] and b["depth"] == 0
        wait_for(drained, timeout, f"{stream} drained up to {last}", self.agent)

    def wait_received(self, n: int, timeout: float, stream: str = "readings") -> pl.DataFrame:
        wait_for(lambda: received(self.up_root, stream).height >= n, timeout, f"upstream {stream} >= {n}", self.up)
        return received(self.up_root, stream)

    def close(self) -> None:
        for p in (self.agent, self.up):
            if p is not None:
                p.stop()
        self.proxy.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def assert_exactly_once_in_order(df: pl.DataFrame, expected: int) -> None:
    seqs = df["edge_seq"].to_list()
    assert len(seqs) == expected, f"received {len(seqs)} readings, expected {expected}"
    assert seqs == list(range(1, expected + 1)), "sequence numbers must be 1..N, each once, in order"
    # the same readings, not just the same numbers: every (sensor, time) once
    assert df.select("sensor_id", "timestamp").n_unique() == expected


def go_offline(rig: Rig, seconds: float, *, bounded: bool = False) -> int:
    """Cut the link for ``seconds``; returns the readings sequence acknowledged before the cut."""
    before = rig.box()["acked_seq"]
    rig.proxy.cut()
    time.sleep(seconds)
    st = status(rig.listen)
    assert st["link"] in ("down", "degraded"), st
    if not bounded:
        assert st["outbox"]["readings"]["depth"] >= RATE * seconds * 0.5, "the outbox should hold the outage"
    return before


def test_offline_then_back_exactly_once(rig: Rig) -> None:
    total = int(RATE * (OFFLINE_S + 8))
    rig.start_agent("--rate", str(RATE), "--limit", str(total))
    rig.wait_acked(RATE, 60)
    go_offline(rig, OFFLINE_S)
    rig.proxy.restore()
    rig.wait_drained(total, 120)
    df = rig.wait_received(total, 60)
    assert_exactly_once_in_order(df, total)
    assert df["edge_replay"].sum() >= RATE * OFFLINE_S * 0.5, "the backlog must be marked as replay"
    assert not df.filter(pl.col("edge_seq") <= RATE)["edge_replay"].any(), "live records are not replay"
    m = metrics(f"http://127.0.0.1:{rig.listen}/metrics")
    assert m['tidegauge_uplink_replayed_records_total{stream="readings"}'] >= RATE * OFFLINE_S * 0.5
    assert m['tidegauge_outbox_depth{stream="readings"}'] == 0
    assert m["tidegauge_uplink_errors_total{kind=\"network\"}"] >= 1
    # the other streams arrived too, each exactly once in order
    for stream in ("windows", "alerts"):
        out = received(rig.up_root, stream)
        if out.height:
            assert out["edge_seq"].to_list() == list(range(1, out.height + 1)), stream


def test_agent_sigkilled_while_offline(rig: Rig) -> None:
    total = int(RATE * (OFFLINE_S + 8))
    rig.start_agent("--rate", str(RATE), "--limit", str(total), "--forward", "readings,windows", "--no-detect")
    rig.wait_acked(RATE, 60)
    go_offline(rig, OFFLINE_S / 2)
    assert rig.agent is not None
    rig.agent.kill()
    rig.restart_agent()
    time.sleep(OFFLINE_S / 2)
    assert rig.box()["depth"] > 0
    rig.proxy.restore()
    rig.wait_drained(total, 120)
    assert_exactly_once_in_order(rig.wait_received(total, 60), total)


def test_upstream_restarted_mid_replay(rig: Rig) -> None:
    total = int(RATE * (OFFLINE_S + 6))
    # small batches so that the replay lasts long enough to be interrupted
    rig.start_agent("--rate", str(RATE), "--limit", str(total), "--forward", "readings", "--no-detect",
                    "--batch-records", "300")
    rig.wait_acked(RATE, 60)
    before = go_offline(rig, OFFLINE_S)
    rig.proxy.restore()
    rig.wait_acked(before + 1500, 60)
    rig.up.kill()
    mid = rig.box()
    assert mid["acked_seq"] < mid["last_seq"], "the upstream should be killed mid-replay"
    time.sleep(2)
    rig.restart_upstream()
    rig.wait_drained(total, 120)
    assert_exactly_once_in_order(rig.wait_received(total, 90), total)
    m = metrics(f"http://127.0.0.1:{rig.up_port}/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert m.get('tidegauge_edge_dropped_at_edge_total{node="gw-1",stream="readings"}', 0) == 0


def test_agent_with_a_lost_data_dir_starts_a_new_incarnation(rig: Rig) -> None:
    """The gateway's disk was replaced: the new outbox numbers from 1 again, and the upstream takes it all."""
    total = 3 * RATE
    rig.start_agent("--rate", str(RATE), "--limit", str(total), "--forward", "readings", "--no-detect")
    rig.wait_drained(total, 90)
    assert rig.agent is not None
    rig.agent.kill()
    shutil.rmtree(rig.tmp / "agent")
    rig.restart_agent()
    rig.wait_drained(total, 90)
    df = rig.wait_received(2 * total, 60)
    assert df.height == 2 * total, "the second incarnation's records must not be taken for duplicates"
    assert df["edge_seq"].to_list() == [*range(1, total + 1), *range(1, total + 1)]
    m = metrics(f"http://127.0.0.1:{rig.up_port}/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert m.get('tidegauge_edge_duplicates_total{node="gw-1",stream="readings"}', 0) == 0


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_new"])
def test_outbox_full(rig: Rig, policy: str) -> None:
    total = int(RATE * (OFFLINE_S + 6))
    rig.start_agent("--rate", str(RATE), "--limit", str(total), "--forward", "readings,alerts",
                    "--max-bytes", "readings=1MiB", "--overflow", f"readings={policy}")
    rig.wait_acked(RATE, 60)
    go_offline(rig, OFFLINE_S, bounded=True)
    assert rig.box()["bytes"] <= 1024 * 1024 + 4 * 1024 * 1024, "the limit, plus at most the batch in flight"
    rig.proxy.restore()
    wait_for(lambda: (b := rig.box())["depth"] == 0 and b["acked_seq"] >= b["last_seq"] and
             status(rig.listen)["records_in"] >= total, 120, "drained", rig.agent)
    box = rig.box()
    drops = box["drops"]
    time.sleep(2)  # let the upstream checkpoint what it has
    df = received(rig.up_root, "readings")
    seqs = df["edge_seq"].to_list()
    assert seqs == sorted(set(seqs)), "each once, in order"
    assert df.select("sensor_id", "timestamp").n_unique() == len(seqs)
    if policy == "drop_oldest":
        # numbers were given to every reading; the dropped ones are the gaps, and only those
        assert drops.get("overflow", 0) > 0 and "rejected" not in drops
        assert box["last_seq"] == total
        assert len(seqs) + drops["overflow"] == total
        m = metrics(f"http://127.0.0.1:{rig.up_port}/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert m['tidegauge_edge_dropped_at_edge_total{node="gw-1",stream="readings"}'] == drops["overflow"]
    else:
        # rejected readings never got a number: the sequence has no gap, the count says what was refused
        assert drops.get("rejected", 0) > 0 and "overflow" not in drops
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) + drops["rejected"] == total
    am = metrics(f"http://127.0.0.1:{rig.listen}/metrics")
    reason = "overflow" if policy == "drop_oldest" else "rejected"
    assert am[f'tidegauge_outbox_dropped_records_total{{reason="{reason}",stream="readings"}}'] == drops[reason]
    # nothing else lost: the alerts stream was not limited
    assert rig.box("alerts")["drops"] == {}
    alerts = received(rig.up_root, "alerts")
    assert alerts.height == rig.box("alerts")["last_seq"]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGE_SLOW_OFFLINE_S"),
                    reason="the several-minute variant of test_offline_then_back_exactly_once: "
                           "EDGE_SLOW_OFFLINE_S=300 pytest -m slow -s tests/edge/test_offline_replay.py")
def test_offline_several_minutes(rig: Rig) -> None:
    offline = float(os.environ["EDGE_SLOW_OFFLINE_S"])
    total = int(RATE * (offline + 10))
    rig.start_agent("--rate", str(RATE), "--limit", str(total), "--forward", "readings,windows,alerts,anomalies")
    rig.wait_acked(RATE, 60)
    go_offline(rig, offline)
    t0 = time.monotonic()
    rig.proxy.restore()
    rig.wait_drained(total, 600)
    print(f"replayed {offline:.0f}s of backlog in {time.monotonic() - t0:.1f}s")
    assert_exactly_once_in_order(rig.wait_received(total, 300), total)

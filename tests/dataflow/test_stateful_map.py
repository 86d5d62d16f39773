from __future__ import annotations

from typing import Any

import msgspec
import polars as pl

from tests.conftest import readings
from tidegauge.dataflow import CheckpointConfig, Flow
from tidegauge.state import KeyedStateSnapshot
from tidegauge.testing import MemorySink, MemorySource


def running_max(state: Any, r: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    if r["temperature"] is None:
        raise ValueError("no temperature")
    best = r["temperature"] if state is None else max(state, r["temperature"])
    return best, {"sensor_id": r["sensor_id"], "timestamp": r["timestamp"], "max_so_far": best}


DATA = readings([("a", 0, 20.0), ("b", 1, 50.0), ("a", 2, 25.0), ("a", 3, None), ("a", 4, 21.0), ("b", 200, 40.0)])


def test_stateful_map_keeps_state_per_key_and_dead_letters_failures() -> None:
    flow = Flow()
    out, dead = MemorySink(), MemorySink()
    flow.source(MemorySource(DATA)).stateful_map(running_max).sink(out)
    flow.dead_letters().sink(dead)
    flow.run()
    assert out.to_frame()["max_so_far"].to_list() == [20.0, 50.0, 25.0, 25.0, 50.0]
    assert dead.to_frame()["reason"].to_list() == ["stateful_map failed: ValueError: no temperature"]


def test_state_expires_after_ttl_of_event_time() -> None:
    flow = Flow()
    out = MemorySink()
    # b's state (50.0 at t=1) is older than 60 s when b comes back at t=200: it starts over
    flow.source(MemorySource(DATA, batch_rows=1)).stateful_map(running_max, ttl="60s").sink(out)
    flow.run()
    assert out.to_frame()["max_so_far"].to_list()[-1] == 40.0


def test_state_survives_a_restart(tmp_path: Any) -> None:
    def build(sink: MemorySink, data: pl.DataFrame) -> Flow:
        flow = Flow()
        flow.source(MemorySource(data, batch_rows=2)).stateful_map(running_max, name="m").sink(sink)
        return flow

    cp = CheckpointConfig(tmp_path, every_batches=1)
    first = MemorySink()
    build(first, DATA.head(3)).run(checkpoint=cp)
    from tidegauge.checkpoint import CheckpointStore

    latest = CheckpointStore(tmp_path).latest()
    assert latest is not None
    snap = latest.load("step:m", KeyedStateSnapshot)
    assert snap is not None and dict(zip(snap.keys, snap.values, strict=True)) == {0: 25.0, 1: 50.0}
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(snap), type=KeyedStateSnapshot) == snap

"""SimulatorSource: the source protocol, limits, pacing against a manual clock, exact resume."""

from __future__ import annotations

import asyncio

import msgspec
import polars as pl

from tidegauge._time import ManualClock
from tidegauge.connectors.base import SourceLogic
from tidegauge.connectors.simulator import SimulatorSource
from tidegauge.simulate import READING_SCHEMA, FleetConfig, FleetSimulator

CONFIG = FleetConfig(sensors=9, rate=10.0, seed=3)


def test_protocol_and_limit() -> None:
    src = SimulatorSource(CONFIG, limit=25)
    assert src.guarantee == "exactly-once" and src.snapshot_type is not None
    logic = src.build(None)
    assert isinstance(logic, SourceLogic)

    async def drain() -> list[pl.DataFrame]:
        out = []
        while (df := await logic.next_batch(10, 0.0)) is not None:
            out.append(df)
        await logic.close()
        return out

    batches = asyncio.run(drain())
    assert [b.height for b in batches] == [10, 10, 5]
    assert pl.concat(batches).equals(FleetSimulator(CONFIG).next_batch(25))


def test_resume_from_snapshot_is_identical() -> None:
    src = SimulatorSource(CONFIG, limit=100)
    logic = src.build(None)
    asyncio.run(logic.next_batch(37, 0.0))
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(logic.snapshot()), type=src.snapshot_type)
    resumed = src.build(snap)
    a = asyncio.run(resumed.next_batch(1000, 0.0))
    b = asyncio.run(logic.next_batch(1000, 0.0))
    assert a is not None and b is not None and a.height == 63 and a.equals(b)


def test_paced_hands_out_only_due_rows() -> None:
    clock = ManualClock(1_000_000_000_000)
    logic = SimulatorSource(CONFIG, paced=True, clock=clock).build(None)
    first = asyncio.run(logic.next_batch(100, 0.0))
    assert first is not None and first.height == 1  # anchored at build: the first row is due now
    empty = asyncio.run(logic.next_batch(100, 0.0))
    assert empty is not None and empty.height == 0 and empty.schema == READING_SCHEMA
    clock.advance("1s")  # 10 readings per second
    got = asyncio.run(logic.next_batch(100, 0.0))
    assert got is not None and got.height == 10
    clock.advance("10s")
    capped = asyncio.run(logic.next_batch(30, 0.0))
    assert capped is not None and capped.height == 30

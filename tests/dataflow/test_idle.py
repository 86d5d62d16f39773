"""Windows close when keys or whole sources go quiet."""

from __future__ import annotations

import asyncio

import polars as pl

from tests.conftest import T0, readings
from tidegauge import ManualClock
from tidegauge._time import to_micros
from tidegauge.dataflow import Flow, Runner, WatermarkConfig
from tidegauge.testing import MemorySink, MemorySource
from tidegauge.windows import Tumbling

S = 1_000_000


def test_quiet_key_closes_with_the_others_watermark() -> None:
    rows = [("a", 1, 1.0), ("a", 9, 2.0)] + [("b", float(t), 3.0) for t in range(0, 30)]
    flow = Flow(watermark=WatermarkConfig.of(max_delay="2s"))
    out = MemorySink()
    flow.source(MemorySource(readings(rows), batch_rows=4, stay_open=True)).window(
        Tumbling("10s"), {"temperature": ["count"]}).sink(out)
    runner = Runner(flow, tick="5ms")

    async def main() -> None:
        task = asyncio.create_task(runner.run_async())
        for _ in range(400):
            await asyncio.sleep(0.005)
            got = out.to_frame()
            if got.height and (got["sensor_id"] == "a").any():
                break
        runner.stop()
        await task

    asyncio.run(main())
    got = out.to_frame()
    a = got.filter(pl.col("sensor_id") == "a")
    assert a["temperature_count"].to_list() == [2]  # a sent nothing more, yet its window closed


def test_quiet_source_window_closes_within_idle_timeout_plus_max_delay() -> None:
    idle, delay = 2 * S, 1 * S
    clock = ManualClock(to_micros(T0) + 1_000 * S)
    rows = [("a", float(t), 1.0) for t in range(0, 10)]  # last record at 9 s, its window ends at 10 s
    flow = Flow(watermark=WatermarkConfig.of(max_delay="1s", idle_timeout="2s"))
    out = MemorySink()
    flow.source(MemorySource(readings(rows), stay_open=True)).window(
        Tumbling("10s"), {"temperature": ["count"]}).sink(out)
    runner = Runner(flow, clock=clock, tick="2ms")
    arrived = clock.now_us()
    emitted_at: list[int] = []

    async def main() -> None:
        task = asyncio.create_task(runner.run_async())
        while not runner.metrics.batches:
            await asyncio.sleep(0.002)
        for _ in range(50):  # 5 s of processing time in 100 ms steps, with no more input
            clock.advance("100ms")
            await asyncio.sleep(0.02)
            if out.frames and not emitted_at:
                emitted_at.append(clock.now_us())
        runner.stop()
        await task

    asyncio.run(main())
    assert out.to_frame()["temperature_count"].to_list() == [10]
    waited = emitted_at[0] - arrived
    # never before the window could be complete (E - t_last + max_delay = 2 s), and within the idle
    # timeout + max_delay of processing time (plus one 100 ms step of this test's clock)
    assert (10 - 9) * S + delay <= waited <= idle + delay + 100_000, waited

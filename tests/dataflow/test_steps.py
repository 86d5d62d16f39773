from __future__ import annotations

import asyncio
from typing import Any

import polars as pl
import pytest

from tests.conftest import readings
from tidegauge import ManualClock
from tidegauge.dataflow import Flow
from tidegauge.errors import ConfigError
from tidegauge.testing import MemorySink, MemorySource

DATA = readings([("a", 0, 20.0), ("b", 1, 50.0), ("c", 2, 46.0), ("a", 3, None), ("b", 4, 30.0)])


def run_one(build: Any, data: pl.DataFrame = DATA, **source: Any) -> tuple[MemorySink, MemorySink]:
    flow = Flow("t")
    out, dead = MemorySink(), MemorySink()
    build(flow.source(MemorySource(data, **source))).sink(out)
    flow.dead_letters().sink(dead)
    flow.run()
    return out, dead


def test_filter_sql_condition_null_is_false() -> None:
    out, dead = run_one(lambda s: s.filter("temperature > 45 OR sensor_id = 'a'"))
    assert out.to_frame()["temperature"].to_list() == [20.0, 50.0, 46.0, None]
    assert out.to_frame().columns == DATA.columns  # no internal columns reach a sink
    assert not dead.frames


def test_filter_polars_expression_and_bad_sql() -> None:
    out, _ = run_one(lambda s: s.filter(pl.col("temperature") < 25))
    assert out.to_frame()["sensor_id"].to_list() == ["a"]
    with pytest.raises(ConfigError, match="not a valid SQL condition"):
        Flow().source(MemorySource(DATA)).filter("temperature >>> 4")


def test_split_sends_every_record_to_exactly_one_side() -> None:
    flow = Flow()
    hot, rest = flow.source(MemorySource(DATA)).split("temperature > 45")
    a, b = MemorySink(), MemorySink()
    hot.sink(a)
    rest.sink(b)
    flow.run()
    assert sorted(a.to_frame()["temperature"].to_list()) == [46.0, 50.0]
    assert b.to_frame().height == 3  # including the null temperature


def test_select_and_with_columns() -> None:
    out, _ = run_one(lambda s: s.with_columns(temp_f="temperature * 1.8 + 32").select("sensor_id", "temp_f"))
    df = out.to_frame()
    assert df.columns == ["sensor_id", "temp_f"]
    assert df["temp_f"].to_list()[0] == pytest.approx(68.0)


def test_map_per_record_errors_are_dead_lettered_and_others_kept() -> None:
    def f(r: dict[str, Any]) -> dict[str, Any] | None:
        if r["sensor_id"] == "c":
            return None
        return {**r, "double": r["temperature"] * 2}  # None * 2 raises for the null row

    out, dead = run_one(lambda s: s.map(f))
    assert out.to_frame()["double"].to_list() == [40.0, 100.0, 60.0]
    d = dead.to_frame()
    assert d.height == 1
    assert d["reason"][0].startswith("map failed: TypeError")
    assert '"sensor_id":"a"' in d["payload"][0]


class Recorder:
    """A custom step (the `then` extension point) that records the internal columns it sees."""

    snapshot_type = None

    def __init__(self) -> None:
        self.seen: list[pl.DataFrame] = []

    def build(self, resume_state: Any) -> Recorder:
        return self

    def process(self, df: pl.DataFrame, ctx: Any) -> pl.DataFrame:
        self.seen.append(df)
        return df

    def on_watermark(self, ctx: Any) -> None:
        return None

    def snapshot(self) -> None:
        return None


def test_map_batches_changing_rows_rederives_key_and_time() -> None:
    rec = Recorder()
    run_one(lambda s: s.map_batches(lambda df: df.filter(pl.col("sensor_id") == "b")).then(rec))
    df = pl.concat(rec.seen)
    assert df["sensor_id"].to_list() == ["b", "b"]
    assert df["_tg_key"].to_list() == [1, 1]  # "b" was the second key seen by the source
    assert df["_tg_ts"].to_list() == [t.timestamp() * 1_000_000 for t in df["timestamp"].to_list()]


def test_map_batches_failure_goes_to_dead_letters() -> None:
    def boom(df: pl.DataFrame) -> pl.DataFrame:
        raise RuntimeError("nope")

    out, dead = run_one(lambda s: s.map_batches(boom))
    assert not out.frames
    assert dead.to_frame().height == DATA.height
    assert dead.to_frame()["reason"].unique().to_list() == ["mapbatches failed: nope"]


def test_enrich_static_and_refreshed_tables() -> None:
    registry = pl.DataFrame({"sensor_id": ["a", "b"], "site": ["north", "south"]})
    out, _ = run_one(lambda s: s.enrich(registry, on="sensor_id"))
    assert out.to_frame()["site"].to_list() == ["north", "south", None, "north", "south"]

    clock = ManualClock(0)
    versions = iter([registry, registry.with_columns(site=pl.lit("moved"))])
    from tidegauge.dataflow.steps import EnrichStep

    step = EnrichStep(lambda: next(versions), on="sensor_id", how="inner", refresh="1m", clock=clock)
    ctx: Any = None
    first = step._apply(DATA, ctx)
    assert first is not None and first["site"].to_list() == ["north", "south", "north", "south"]
    clock.advance("30s")
    assert step._apply(DATA, ctx)["site"][0] == "north"  # type: ignore[index]
    clock.advance("31s")
    assert step._apply(DATA, ctx)["site"][0] == "moved"  # type: ignore[index]


def test_union_of_two_sources() -> None:
    flow = Flow()
    s1 = flow.source(MemorySource(DATA.head(2), name="one"))
    s2 = flow.source(MemorySource(DATA.tail(3), name="two"))
    out = MemorySink()
    s1.union(s2).sink(out)
    result = flow.run()
    assert sorted(out.to_frame()["timestamp"].to_list()) == sorted(DATA["timestamp"].to_list())
    assert result.records_in == DATA.height


def test_source_error_column_is_dead_lettered_with_raw_payload() -> None:
    data = DATA.with_columns(
        _tg_error=pl.Series([None, "column 'temperature': cannot parse 'x'", None, None, None]),
        _tg_raw=pl.Series([None, "b,2026-01-01T00:00:01Z,x", None, None, None]),
    )
    out, dead = run_one(lambda s: s, data)
    assert out.to_frame().height == 4
    d = dead.to_frame()
    assert d["payload"].to_list() == ["b,2026-01-01T00:00:01Z,x"]
    assert d["stage"].to_list() == ["source_0"]


def test_key_by_rekeys_and_dead_letters_missing_keys() -> None:
    data = DATA.with_columns(site=pl.Series(["n", "s", None, "n", "s"]))
    out, dead = run_one(lambda s: s.key_by("site"), data)
    assert out.to_frame().height == 4
    assert dead.to_frame()["reason"].to_list() == ["missing key 'site'"]


def test_slow_sink_bounds_what_the_source_has_handed_out() -> None:
    """Backpressure: with a sink that takes time, the source is never more than the queue ahead."""
    handed: list[int] = []
    written: list[int] = []

    class SlowSink(MemorySink):
        async def write_batch(self, df: pl.DataFrame) -> None:
            await asyncio.sleep(0.002)
            written.append(df.height)
            await super().write_batch(df)

    class CountingSource(MemorySource):
        def build(self, resume_state: Any) -> Any:
            logic = super().build(resume_state)
            inner = logic.next_batch

            async def next_batch(max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
                b = await inner(max_rows, max_delay_s)
                if b is not None:
                    handed.append(len(handed))
                    # batches handed out minus batches written: queue + the one in hand + the one being read
                    assert len(handed) - len(written) <= 2 + 2
                return b

            logic.next_batch = next_batch  # type: ignore[method-assign]
            return logic

    big = pl.concat([DATA] * 40)
    flow = Flow(watermark=None)
    flow.source(CountingSource(big, batch_rows=5)).sink(SlowSink())
    flow.runner(queue_batches=2).run()
    assert len(written) == 40


def test_a_failing_source_stops_the_flow_with_its_error() -> None:
    from tidegauge.errors import ConnectorError

    class Broken(MemorySource):
        def build(self, resume_state: Any) -> Any:
            logic = super().build(resume_state)

            async def next_batch(max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
                raise OSError("connection refused")

            logic.next_batch = next_batch  # type: ignore[method-assign]
            return logic

    flow = Flow()
    flow.source(Broken(DATA)).sink(MemorySink())
    with pytest.raises(ConnectorError, match="source 'source_0' failed: OSError: connection refused"):
        flow.run()

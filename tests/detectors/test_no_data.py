from __future__ import annotations

import msgspec
import polars as pl

from tidegauge._time import ManualClock
from tidegauge.dataflow.base import StepContext
from tidegauge.dataflow.keys import KeyDictionary
from tidegauge.detectors import DetectStep, NoData

S = 1_000_000


def _ctx(keys: KeyDictionary, now: int, wm: int = 0) -> StepContext:
    return StepContext(
        step_id="detect", key_column="sensor_id", time_column="timestamp", keys=keys, now_us=now, watermark=wm
    )


def _batch(keys: KeyDictionary, names: list[str], ts: int = 0) -> pl.DataFrame:
    ids = keys.encode(pl.Series(names))
    return pl.DataFrame({"sensor_id": names, "_tg_key": ids, "_tg_ts": [ts] * len(names), "v": [1.0] * len(names)})


def test_fires_from_processing_time_with_no_input() -> None:
    clock = ManualClock(100 * S)
    keys = KeyDictionary()
    logic = DetectStep(NoData(timeout="30s")).build(None)
    out = logic.process(_batch(keys, ["a", "b"]), _ctx(keys, clock.now_us()))
    assert out is not None and not out["is_anomaly"].any()
    clock.advance("20s")
    logic.process(_batch(keys, ["b"]), _ctx(keys, clock.now_us()))
    clock.advance("15s")  # a silent 35 s, b 15 s
    fired = logic.on_watermark(_ctx(keys, clock.now_us()))
    assert fired is not None
    assert fired["sensor_id"].to_list() == ["a"]
    assert fired["score"].to_list() == [1.0] and fired["is_anomaly"].to_list() == [True]
    assert fired["silent_us"].to_list() == [35 * S]
    assert fired.schema["timestamp"] == pl.Datetime("us", "UTC")
    # reported once per silence
    clock.advance("1s")
    assert logic.on_watermark(_ctx(keys, clock.now_us())) is None
    # b goes silent later; a comes back and is re-armed
    clock.advance("20s")
    logic.process(_batch(keys, ["a"]), _ctx(keys, clock.now_us()))
    fired = logic.on_watermark(_ctx(keys, clock.now_us()))
    assert fired is not None and fired["sensor_id"].to_list() == ["b"]
    clock.advance("31s")
    fired = logic.on_watermark(_ctx(keys, clock.now_us()))
    assert fired is not None and fired["sensor_id"].to_list() == ["a"]


def test_restored_deadman_still_fires() -> None:
    det = NoData(timeout="10s")
    step = DetectStep(det)
    keys = KeyDictionary()
    logic = step.build(None)
    logic.process(_batch(keys, ["a"]), _ctx(keys, 0))
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(logic.snapshot()), type=step.snapshot_type)
    resumed = step.build(snap)
    fired = resumed.on_watermark(_ctx(keys, 60 * S))
    assert fired is not None and fired["sensor_id"].to_list() == ["a"]


def test_event_time_clock_uses_watermark() -> None:
    keys = KeyDictionary()
    logic = DetectStep(NoData(timeout="10s", clock="event")).build(None)
    logic.process(_batch(keys, ["a"], ts=5 * S), _ctx(keys, 0))
    assert logic.on_watermark(_ctx(keys, 10**12, wm=14 * S)) is None
    fired = logic.on_watermark(_ctx(keys, 0, wm=15 * S))
    assert fired is not None and fired["sensor_id"].to_list() == ["a"]


def test_standalone_with_manual_clock() -> None:
    clock = ManualClock(0)
    logic = NoData(timeout="5s", key="k", time_source=clock).build()
    logic.score_learn(pl.DataFrame({"k": ["x", "y"]}))
    clock.advance("6s")
    out = logic.on_tick(clock.now_us(), 0)
    assert out is not None and sorted(out["k"].to_list()) == ["x", "y"]

from __future__ import annotations

import msgspec
import numpy as np
import polars as pl

from tidegauge.dataflow.base import StepContext, StepDefinition, StepLogic
from tidegauge.dataflow.keys import KeyDictionary
from tidegauge.detectors import DetectStep, ZScore, default_detector


def _ctx(keys: KeyDictionary) -> StepContext:
    return StepContext(step_id="detect", key_column="sensor_id", time_column="timestamp", keys=keys)


def test_detect_step_follows_the_step_protocol() -> None:
    keys = KeyDictionary()
    rng = np.random.default_rng(0)
    names = [f"s{i % 4}" for i in range(400)]
    df = pl.DataFrame({"sensor_id": names, "temperature": rng.normal(20, 2, 400)})
    df = df.with_columns(keys.encode(df["sensor_id"]), pl.lit(0, dtype=pl.Int64).alias("_tg_ts"))
    step: StepDefinition = DetectStep(default_detector(["temperature"]))
    logic = step.build(None)
    assert isinstance(logic, StepLogic)
    out = logic.process(df[:200], _ctx(keys))
    assert out is not None and {"score", "is_anomaly", "detector"} <= set(out.columns)
    assert logic.on_watermark(_ctx(keys)) is None
    assert step.snapshot_type is not None
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(logic.snapshot()), type=step.snapshot_type)
    resumed = step.build(snap)
    a = logic.process(df[200:], _ctx(keys))
    b = resumed.process(df[200:], _ctx(keys))
    assert a is not None and b is not None
    assert a["score"].to_list() == b["score"].to_list()


def test_standalone_key_column_matches_encoded_ids() -> None:
    rng = np.random.default_rng(1)
    df = pl.DataFrame({"sensor": rng.choice(["a", "b", "c"], 300), "t": rng.normal(0, 1, 300)})
    standalone = ZScore("t", warmup=5, key="sensor").build().score_learn(df)
    keys = KeyDictionary()
    encoded = df.with_columns(keys.encode(df["sensor"]))
    in_flow = ZScore("t", warmup=5).build().score_learn(encoded)
    assert standalone["score"].to_list() == in_flow["score"].to_list()
    assert "_tg_key" not in standalone.columns


def test_standalone_key_dictionary_survives_snapshot() -> None:
    det = ZScore("t", warmup=2, key="sensor")
    df = pl.DataFrame({"sensor": ["x", "y"] * 50, "t": np.r_[np.zeros(50), np.ones(50)] + np.arange(100) % 3})
    logic = det.build()
    logic.score_learn(df[:60])
    resumed = det.build(msgspec.msgpack.decode(msgspec.msgpack.encode(logic.snapshot()), type=det.snapshot_type))
    assert resumed.score_learn(df[60:])["score"].to_list() == logic.score_learn(df[60:])["score"].to_list()

"""Conformance suite run over every registered detector."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import msgspec
import numpy as np
import polars as pl
import pytest

from tests.detectors._data import FIELDS, keyed_stream
from tidegauge._time import ManualClock
from tidegauge.detectors import (
    DETECTORS,
    Calibrated,
    Cusum,
    Detector,
    DetectorLogic,
    Ensemble,
    Flatline,
    HalfSpaceTrees,
    IsolationForest,
    Mahalanobis,
    NoData,
    RateOfChange,
    RobustZ,
    Threshold,
    ZScore,
    default_detector,
)

LIMITS = {"temperature": (0.0, 50.0), "vibration": (0.0, 5.0), "power_consumption": (50.0, 150.0)}

FACTORIES: dict[str, Callable[[], Detector]] = {
    "zscore": lambda: ZScore(FIELDS, warmup=10),
    "zscore_fleet": lambda: ZScore(FIELDS, warmup=10, alpha=0.05, restart=(3, 50), fleet=True, fleet_alpha=0.01),
    "robust_z": lambda: RobustZ(FIELDS, window=20, warmup=5),
    "hst": lambda: HalfSpaceTrees(FIELDS, limits=LIMITS, window_size=40, seed=3),
    "isolation_forest": lambda: IsolationForest(
        FIELDS, group="sensor_type", sample_size=64, retrain_every=100, n_estimators=10, retrain="inline", seed=5
    ),
    "mahalanobis": lambda: Mahalanobis(FIELDS, warmup=10),
    "threshold": lambda: Threshold(FIELDS, lower=0.0, upper=30.0),
    "rate_of_change": lambda: RateOfChange(FIELDS, max_change=10.0, per="second"),
    "flatline": lambda: Flatline(FIELDS, n=5),
    "no_data": lambda: NoData(timeout="10s", time_source=ManualClock(0)),
    "ensemble": lambda: Ensemble([ZScore(FIELDS, warmup=10), Flatline(FIELDS, n=5)], combine="mean"),
    "cusum": lambda: Cusum(FIELDS, warmup=10, h=4.0, reference=5),
    "calibrated": lambda: Calibrated(HalfSpaceTrees(FIELDS, limits=LIMITS, window_size=40), eta=0.05),
}
FACTORIES["default"] = lambda: default_detector(FIELDS)
FACTORIES["ensemble_vote"] = lambda: Ensemble(
    [ZScore(FIELDS, warmup=10), RobustZ(FIELDS, window=20, warmup=5), Threshold(FIELDS, upper=30.0)],
    combine="vote",
)

KINDS = sorted(FACTORIES)


def test_every_registered_detector_is_covered() -> None:
    assert set(DETECTORS) <= set(FACTORIES)


def _scores(out: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return out["score"].to_numpy(), out["is_anomaly"].to_numpy()


def _run_in_pieces(logic: DetectorLogic, df: pl.DataFrame, cuts: list[int]) -> pl.DataFrame:
    bounds = [0, *cuts, df.height]
    parts = [logic.score_learn(df[a:b]) for a, b in itertools.pairwise(bounds)]
    return pl.concat(parts)


def _roundtrip(det: Detector, logic: DetectorLogic) -> DetectorLogic:
    raw = msgspec.msgpack.encode(logic.snapshot())
    return det.build(msgspec.msgpack.decode(raw, type=det.snapshot_type))


@pytest.mark.parametrize("kind", KINDS)
def test_output_schema_and_range(kind: str) -> None:
    df = keyed_stream()
    out = FACTORIES[kind]().build().score_learn(df)
    assert out.columns == [*df.columns, "score", "is_anomaly", "detector"]
    assert out.schema["score"] == pl.Float64 and out.schema["is_anomaly"] == pl.Boolean
    assert out.height == df.height
    s = out["score"].to_numpy()
    assert np.all((s >= 0.0) & (s <= 1.0))
    assert out["detector"].n_unique() == 1


@pytest.mark.parametrize("kind", KINDS)
def test_batch_equals_record_at_a_time(kind: str) -> None:
    det = FACTORIES[kind]()
    df = keyed_stream(n=400)
    whole = det.build().score_learn(df)
    one_by_one = _run_in_pieces(det.build(), df, list(range(1, df.height)))
    cuts = sorted(np.random.default_rng(1).choice(np.arange(1, df.height), 12, replace=False).tolist())
    random_split = _run_in_pieces(det.build(), df, cuts)
    for other in (one_by_one, random_split):
        np.testing.assert_array_equal(_scores(whole)[0], _scores(other)[0])
        np.testing.assert_array_equal(_scores(whole)[1], _scores(other)[1])


@pytest.mark.parametrize("kind", KINDS)
def test_snapshot_restore_mid_stream(kind: str) -> None:
    det = FACTORIES[kind]()
    df = keyed_stream()
    straight = det.build().score_learn(df)
    first = det.build()
    head = first.score_learn(df[:317])
    resumed = _roundtrip(det, first)
    tail = resumed.score_learn(df[317:])
    np.testing.assert_array_equal(_scores(straight)[0], np.r_[_scores(head)[0], _scores(tail)[0]])
    # snapshot of the resumed logic is the same again (restore is lossless)
    assert msgspec.msgpack.encode(_roundtrip(det, resumed).snapshot()) == msgspec.msgpack.encode(resumed.snapshot())


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind: str) -> None:
    df = keyed_stream(seed=4)
    a = FACTORIES[kind]().build().score_learn(df)
    b = FACTORIES[kind]().build().score_learn(df)
    np.testing.assert_array_equal(_scores(a)[0], _scores(b)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_score_does_not_learn(kind: str) -> None:
    det = FACTORIES[kind]()
    df = keyed_stream()
    logic = det.build()
    logic.score_learn(df[:300])
    before = msgspec.msgpack.encode(logic.snapshot())
    logic.score(df[300:])
    assert msgspec.msgpack.encode(logic.snapshot()) == before


@pytest.mark.parametrize("kind", KINDS)
def test_learn_then_score_equals_score_learn_state(kind: str) -> None:
    det = FACTORIES[kind]()
    df = keyed_stream()
    a, b = det.build(), det.build()
    a.learn(df)
    b.score_learn(df)
    assert msgspec.msgpack.encode(a.snapshot()) == msgspec.msgpack.encode(b.snapshot())


@pytest.mark.parametrize("kind", KINDS)
def test_bad_values_neither_crash_nor_poison(kind: str) -> None:
    from tests.detectors._data import with_bad_rows

    df = keyed_stream()
    dirty = with_bad_rows(df)
    det = FACTORIES[kind]()
    clean_out = det.build().score_learn(df)
    dirty_out = det.build().score_learn(dirty)
    bad = dirty_out["_bad"].to_numpy()
    # bad rows: documented policy is score 0, not flagged
    assert np.all(dirty_out["score"].to_numpy()[bad] == 0.0)
    assert not dirty_out["is_anomaly"].to_numpy()[bad].any()
    # and they do not change the state: the clean rows score exactly as without them
    np.testing.assert_array_equal(dirty_out["score"].to_numpy()[~bad], clean_out["score"].to_numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_missing_field_column(kind: str) -> None:
    df = keyed_stream().drop("vibration")
    out = FACTORIES[kind]().build().score_learn(df)
    s = out["score"].to_numpy()
    assert np.all((s >= 0.0) & (s <= 1.0))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch(kind: str) -> None:
    df = keyed_stream()
    logic = FACTORIES[kind]().build()
    out = logic.score_learn(df.clear())
    assert out.height == 0 and "score" in out.columns
    logic.score_learn(df)
    assert logic.score_learn(df.clear()).height == 0


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_snapshot_type_rejected(kind: str) -> None:
    det = FACTORIES[kind]()
    other = Threshold(FIELDS, upper=1.0) if kind != "threshold" else Flatline(FIELDS)
    with pytest.raises(TypeError, match="snapshot_type"):
        det.build(other.build().snapshot())

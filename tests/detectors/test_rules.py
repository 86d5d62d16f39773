from __future__ import annotations

import polars as pl
import pytest

from tidegauge.detectors import Flatline, RateOfChange, Threshold


def test_threshold_range() -> None:
    logic = Threshold(["a", "b"], lower=0.0, upper=10.0).build()
    df = pl.DataFrame({"a": [5.0, -1.0, 5.0, None, 10.0], "b": [5.0, 5.0, 11.0, 5.0, float("nan")]})
    out = logic.score_learn(df)
    assert out["is_anomaly"].to_list() == [False, True, True, False, False]
    assert out["score"].to_list() == [0.0, 1.0, 1.0, 0.0, 0.0]


def test_threshold_validation() -> None:
    with pytest.raises(ValueError, match="needs a bound"):
        Threshold("a")
    with pytest.raises(ValueError, match="swap"):
        Threshold("a", lower=5, upper=1)


def test_flatline_per_key_and_tolerance() -> None:
    df = pl.DataFrame(
        {
            "k": ["a", "b", "a", "b", "a", "b", "a"],
            "v": [1.0, 1.0, 1.001, 2.0, 1.0, 1.0, None],
        }
    )
    out = Flatline("v", n=3, tolerance=0.01, key="k").build().score_learn(df)
    assert out["is_anomaly"].to_list() == [False, False, False, False, True, False, False]


def test_flatline_nan_does_not_break_run() -> None:
    v = [3.0, 3.0, None, float("nan"), 3.0, 4.0]
    out = Flatline("v", n=3).build().score_learn(pl.DataFrame({"v": v}))
    assert out["is_anomaly"].to_list() == [False, False, False, False, True, False]


def test_rate_of_change_per_second_uses_event_time() -> None:
    s = 1_000_000
    df = pl.DataFrame(
        {
            "_tg_key": pl.Series([0, 0, 0, 0, 0], dtype=pl.UInt32),
            "_tg_ts": [0, 1 * s, 11 * s, 12 * s, 12 * s],
            "v": [0.0, 1.0, 11.0, 14.0, 100.0],
        }
    )
    out = RateOfChange("v", max_change=2.0, per="second").build().score_learn(df)
    # 1/s, 10/10s = 1/s, 3/s (flag), same timestamp -> not scored
    assert out["is_anomaly"].to_list() == [False, False, False, True, False]


def test_rate_of_change_standalone_time_column() -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    df = pl.DataFrame({"ts": [t0, t0 + timedelta(seconds=10)], "v": [0.0, 15.0]})
    assert RateOfChange("v", max_change=1.0, per="second", time="ts").build().score_learn(df)[
        "is_anomaly"
    ].to_list() == [False, True]


def test_rate_of_change_skips_bad_values() -> None:
    out = RateOfChange("v", max_change=5.0).build().score_learn(pl.DataFrame({"v": [1.0, None, 2.0, 9.0]}))
    assert out["is_anomaly"].to_list() == [False, False, False, True]

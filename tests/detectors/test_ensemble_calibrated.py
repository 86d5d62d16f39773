from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tidegauge.detectors import Calibrated, Ensemble, Flatline, HalfSpaceTrees, Threshold, ZScore


def _df() -> pl.DataFrame:
    return pl.DataFrame({"t": [20.0, 50.0, 21.0, 21.0, 21.0, -5.0]})


def test_ensemble_combinations() -> None:
    members = [Threshold("t", lower=0.0, upper=40.0), Flatline("t", n=3)]
    mx = Ensemble(members).build().score_learn(_df())
    assert mx["is_anomaly"].to_list() == [False, True, False, False, True, True]
    mean = Ensemble(members, combine="mean", threshold=0.5).build().score_learn(_df())
    assert mean["score"].to_list() == [0.0, 0.5, 0.0, 0.0, 0.5, 0.5]
    vote = Ensemble([*members, Threshold("t", upper=45.0)], combine="vote", threshold=0.6).build()
    out = vote.score_learn(_df())
    assert out["score"].to_list() == pytest.approx([0, 2 / 3, 0, 0, 1 / 3, 1 / 3])
    assert out["is_anomaly"].to_list() == [False, True, False, False, False, False]


def test_ensemble_validation() -> None:
    with pytest.raises(TypeError, match="non-empty list"):
        Ensemble([])
    with pytest.raises(ValueError, match="combine"):
        Ensemble([Flatline("t")], combine="median")  # type: ignore[arg-type]


def test_calibration_equalises_false_alarm_rate_across_sensors() -> None:
    """HST's raw scores differ by sensor; calibrated, one threshold gives similar alarm rates."""
    rng = np.random.default_rng(0)
    n = 8000
    keys = np.repeat([0, 1], n)
    x = np.r_[rng.normal(0.5, 0.02, n), rng.uniform(0.1, 0.9, n)]
    df = pl.DataFrame({"_tg_key": pl.Series(keys, dtype=pl.UInt32), "x": x}).sort(pl.int_range(0, 2 * n).mod(n))
    hst = HalfSpaceTrees("x", window_size=200, seed=1)
    raw = hst.build().score_learn(df)
    cal = Calibrated(hst, threshold=0.99, eta=0.05).build().score_learn(df)
    tail = pl.int_range(0, 2 * n).ge(n)  # second half, after the quantiles settled
    raw_rates = raw.filter(tail).group_by("_tg_key").agg(pl.col("score").gt(0.9).mean()).sort("_tg_key")["score"]
    rates = cal.filter(tail).group_by("_tg_key").agg(pl.col("is_anomaly").mean()).sort("_tg_key")["is_anomaly"]
    # one raw threshold: one sensor never alarms, the other alarms constantly
    assert raw_rates[0] < 0.001 and raw_rates[1] > 0.05
    for rate in rates:
        assert 0.001 <= rate < 0.03


def test_calibrated_zscore_is_close_to_identity_on_gaussian_noise() -> None:
    x = np.random.default_rng(2).normal(0, 1, 20000)
    z = ZScore("x", warmup=30, clip=None, alpha=0.001)
    raw = z.build().score_learn(pl.DataFrame({"x": x}))["score"].to_numpy()
    cal = Calibrated(z).build().score_learn(pl.DataFrame({"x": x}))["score"].to_numpy()
    assert abs(np.mean(cal[1000:] > 0.99) - np.mean(raw[1000:] > 0.99)) < 0.005

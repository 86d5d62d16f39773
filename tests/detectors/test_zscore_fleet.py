"""ZScore's fleet prior: which of two levels is normal, judged against every other sensor's values."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tidegauge.detectors import Calibrated, ZScore

N_FLEET = 40


def _fleet(per_sensor: int, special: np.ndarray, *, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    """``N_FLEET`` normal sensors (levels ~ N(100, 20), noise sd 5) interleaved with sensor 0 = ``special``."""
    rng = np.random.default_rng(seed)
    levels = rng.normal(100.0, 20.0, N_FLEET)
    vals = levels[:, None] + rng.normal(0.0, 5.0, (N_FLEET, per_sensor))
    vals[0] = special
    keys = np.tile(np.arange(N_FLEET), per_sensor)
    x = vals.T.reshape(-1)
    df = pl.DataFrame({"_tg_key": pl.Series(keys, dtype=pl.UInt32), "p": x})
    return df, keys == 0


def _detector(fleet: bool) -> ZScore:
    return ZScore(["p"], alpha=0.001, clip=4.0, warmup=100, restart=(10, 1000), fleet=fleet, threshold=0.99999)


def test_a_sensor_that_starts_mid_episode_recovers_when_it_returns_to_normal() -> None:
    # sensor 0's first 1,500 readings are an episode at 170 (3.5 fleet sd out); its normal level is 95.
    # Without the fleet the baseline is mature by then and every normal reading after is flagged for
    # a long time; with it, the key restarts at the typical level after restart[0] readings.
    rng = np.random.default_rng(1)
    special = np.r_[rng.normal(170.0, 5.0, 1500), rng.normal(95.0, 5.0, 1500)]
    df, mine = _fleet(3000, special)
    after = {}
    for fleet in (False, True):
        flags = _detector(fleet).build().score_learn(df)["is_anomaly"].to_numpy()[mine]
        after[fleet] = int(flags[1500:].sum())
    assert after[True] <= 12 and after[False] > 500, after


def test_an_anomaly_early_in_a_sensors_life_is_not_taken_as_its_normal() -> None:
    # sensor 0 is normal at 100 for 300 readings (a young baseline), then at 180 for 400, then back.
    # The young-restart rule alone adopts 180 as normal and then flags the return; the fleet knows
    # 180 is the less typical level, keeps the baseline and flags the whole episode.
    rng = np.random.default_rng(2)
    special = np.r_[rng.normal(100.0, 5.0, 300), rng.normal(180.0, 5.0, 400), rng.normal(100.0, 5.0, 800)]
    df, mine = _fleet(1500, special)
    with_fleet = _detector(True).build().score_learn(df)["is_anomaly"].to_numpy()[mine]
    without = _detector(False).build().score_learn(df)["is_anomaly"].to_numpy()[mine]
    assert with_fleet[300:700].mean() > 0.99 and with_fleet[700:].sum() <= 2
    assert without[310:700].mean() < 0.1 and without[700:].sum() >= 10


def test_a_wrong_restart_is_undone_when_the_sensor_returns() -> None:
    # a young sensor at 135 (atypical) sees an episode at 100 (typical): the fleet restarts towards
    # 100; when the sensor goes back to 135 and stays, the dropped baseline is restored (a handful of
    # flags), instead of flagging every normal reading until the slow mean has crawled back
    rng = np.random.default_rng(3)
    special = np.r_[rng.normal(135.0, 5.0, 300), rng.normal(100.0, 5.0, 300), rng.normal(135.0, 5.0, 900)]
    df, mine = _fleet(1500, special)
    flags = _detector(True).build().score_learn(df)["is_anomaly"].to_numpy()[mine]
    assert flags[300:310].all()  # the episode is caught
    assert flags[600:].sum() <= 12


def test_fleet_parameters_are_validated() -> None:
    with pytest.raises(ValueError, match="restart"):
        ZScore(["p"], fleet=True, restart=None)
    with pytest.raises(ValueError, match="fleet_margin"):
        ZScore(["p"], fleet=True, fleet_margin=-1.0)
    with pytest.raises(TypeError, match="fleet"):
        ZScore(["p"], fleet=1)  # type: ignore[arg-type]


def test_calibration_is_not_blinded_by_a_long_anomaly_with_a_small_flagged_weight() -> None:
    # one sensor: 3,000 normal readings, a 1,000-reading episode, 2,000 normal, then a second episode
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, 6500)
    x[3000:4000] += 12.0
    x[6000:6050] += 7.0
    z = ZScore(["x"], alpha=0.001, clip=4.0, warmup=100, restart=None)
    hits = {}
    for w in (1.0, 0.01):
        out = Calibrated(z, threshold=0.99999, flagged_weight=w).build().score_learn(pl.DataFrame({"x": x}))
        hits[w] = float(out["is_anomaly"].to_numpy()[6000:6050].mean())
    assert hits[0.01] > 0.9 and hits[1.0] < 0.5, hits

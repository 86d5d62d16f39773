"""SKAB scorer on tiny hand-computed series."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tidegauge.evaluate.skab import (
    ChangepointFile,
    binary_metrics,
    changepoint_windows,
    predicted_changepoints,
    skab_nab,
    tanh_reward,
)

SEC = 1_000_000


def test_binary_metrics_are_pooled_over_files() -> None:
    m = binary_metrics([np.array([1, 1, 0, 0]), np.array([0, 1])], [np.array([1, 0, 1, 0]), np.array([0, 1])])
    assert (m.tp, m.tn, m.fp, m.fn) == (2, 2, 1, 1)
    assert m.f1 == pytest.approx(2 / 3)
    assert m.far == pytest.approx(100 / 3)
    assert m.mar == pytest.approx(100 / 3)


def test_binary_metrics_null_and_shape_errors() -> None:
    m = binary_metrics([np.array([1, 0])], [np.array([0, 0])])
    assert (m.f1, m.far, m.mar) == (0.0, 0.0, 100.0)
    with pytest.raises(ValueError, match="rows"):
        binary_metrics([np.array([1, 0])], [np.array([0])])


def test_predicted_changepoints_mark_every_change() -> None:
    assert predicted_changepoints([0, 1, 1, 0, 0]).tolist() == [0, 1, 0, 1, 0]
    assert predicted_changepoints([1, 0]).tolist() == [1, 1]


def test_windows_are_right_of_the_changepoint_and_cut_on_overlap() -> None:
    ts = np.arange(200) * SEC
    cp = np.zeros(200, dtype=np.int8)
    cp[[0, 30, 150]] = 1
    assert changepoint_windows(ts, cp, 60 * SEC) == [
        (0, 60 * SEC),
        (60 * SEC, 90 * SEC),
        (150 * SEC, 210 * SEC),
    ]


def test_tanh_reward_endpoints_and_middle() -> None:
    assert tanh_reward(0.0, 1.0, -0.11) == pytest.approx(1.0)
    assert tanh_reward(1.0, 1.0, -0.11) == pytest.approx(-0.11)
    x = -math.pi / 2 + math.pi * 500 / 999
    expected = -(1.11 / 2) * math.tanh(x) / math.tanh(math.pi / 2) + 1.11 / 2 - 0.11
    assert tanh_reward(0.5, 1.0, -0.11) == pytest.approx(expected)


def cp_file(pred_at: list[int], cps: tuple[int, ...] = (100,)) -> ChangepointFile:
    ts = np.arange(200, dtype=np.int64) * SEC
    true = np.zeros(200, dtype=np.int8)
    true[list(cps)] = 1
    pred = np.zeros(200, dtype=np.int8)
    pred[pred_at] = 1
    return ChangepointFile(ts, true, pred)


def test_perfect_and_null() -> None:
    assert skab_nab([cp_file([100])]).scores == pytest.approx({"standard": 100, "low_fp": 100, "low_fn": 100})
    r = skab_nab([cp_file([])])
    assert r.scores == pytest.approx({"standard": 0, "low_fp": 0, "low_fn": 0})
    assert r.missed == 1 and r.n_changepoints == 1


def test_fp_outside_window_and_first_detection_only() -> None:
    r = skab_nab([cp_file([20, 100, 110])])  # 110 is a second detection in the window: ignored
    assert r.false_positives == 1
    assert r.scores["standard"] == pytest.approx(100 * (1 - 0.11 + 1) / 2)
    assert r.scores["low_fp"] == pytest.approx(100 * (1 - 0.22 + 1) / 2)
    assert r.scores["low_fn"] == pytest.approx(100 * (1 - 0.11 + 2) / 3)


def test_late_detection_and_pooling() -> None:
    late = tanh_reward(30 / 60, 1.0, -0.11)
    r = skab_nab([cp_file([130]), cp_file([])])
    # two windows: one late TP, one miss; null = -2, perfect = 2
    assert r.scores["standard"] == pytest.approx(100 * (late - 1 + 2) / 4)
    with pytest.raises(ValueError, match="window_us"):
        skab_nab([cp_file([])], window_us=0)


def test_chance_scores_place_as_many_alarms_blind_to_the_data() -> None:
    from tidegauge.evaluate.skab import ChangepointFile, chance_scores, skab_nab

    ts = np.arange(1000, dtype=np.int64) * SEC
    cp = np.zeros(1000, dtype=np.int8)
    cp[[200, 600]] = 1
    pred = np.zeros(1000, dtype=np.int8)
    pred[[200, 600]] = 1
    files = [ChangepointFile(ts, cp, pred)]
    assert skab_nab(files).scores["standard"] == pytest.approx(100.0)
    # 2 alarms 500 rows apart at a random phase: each window of 61 rows is hit with probability ~61/500
    chance = chance_scores(files, reps=200)
    assert 0.0 < chance["standard"] < 30.0
    # one alarm every row: every window is hit at its start, and every other row is a false positive
    dense = [ChangepointFile(ts, cp, np.ones(1000, dtype=np.int8))]
    n_fp = 1000 - 2 * 61  # two windows [t, t + 60 s] of 61 rows each at 1 row/s
    want = 100 * ((2 - 0.11 * n_fp) + 2) / 4
    assert chance_scores(dense, reps=3)["standard"] == pytest.approx(want)

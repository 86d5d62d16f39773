"""NAB v1.1 scorer on tiny hand-made corpora, expected scores computed by hand from NAB's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tidegauge.evaluate.nab import (
    NAB_PROFILES,
    CostProfile,
    NabFile,
    probation_length,
    scaled_sigmoid,
    score_corpus,
)

STANDARD, LOW_FP, LOW_FN = NAB_PROFILES


def s(x: float) -> float:
    """NAB's scaled sigmoid, written out independently of the module."""
    return -1.0 if x >= 3.0 else 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def one_file(
    hits: dict[int, float], n: int = 100, windows: tuple[tuple[int, int], ...] = ((50, 59),)
) -> NabFile:
    scores = np.zeros(n)
    for i, v in hits.items():
        scores[i] = v
    return NabFile("cat/a.csv", scores, windows)


def test_probation_length() -> None:
    assert probation_length(100) == 15
    assert probation_length(7) == 1
    assert probation_length(10_000) == 750
    assert probation_length(4_000) == 600


def test_scaled_sigmoid_edges() -> None:
    got = scaled_sigmoid(np.array([-1.0, -0.5, 0.0, 1.0, 3.0]))
    assert got == pytest.approx([0.98661, 0.84828, 0.0, -0.98661, -1.0], abs=1e-5)


def test_null_detector_scores_zero() -> None:
    r = score_corpus([one_file({})])
    for p in r.values():
        assert p.score == pytest.approx(0.0)
        assert p.windows_missed == 1 and p.windows_detected == 0


def test_perfect_detector_scores_100() -> None:
    r = score_corpus([one_file({50: 1.0})])
    for p in r.values():
        assert p.score == pytest.approx(100.0)
        assert p.raw == pytest.approx(p.profile.tp_weight)
        assert p.threshold == 1.0


def test_single_late_tp() -> None:
    tp = s(-1 / 10) / s(-1.0)  # last row of a 10-row window
    r = score_corpus([one_file({59: 1.0})])
    assert r["standard"].raw == pytest.approx(tp)
    assert r["standard"].score == pytest.approx(100 * (tp + 1) / 2)
    assert r["reward_low_FN_rate"].score == pytest.approx(100 * (tp + 2) / 3)
    assert tp == pytest.approx(0.248242, abs=1e-6)


def test_only_earliest_detection_in_window_counts() -> None:
    r = score_corpus([one_file({52: 1.0, 53: 1.0, 58: 1.0})])
    assert r["standard"].raw == pytest.approx(s(-8 / 10) / s(-1.0))


def test_fp_after_window_is_weighted_by_distance() -> None:
    r = score_corpus([one_file({50: 1.0, 64: 1.0})])
    raw = 1.0 + 0.11 * s(5 / 9)
    assert raw == pytest.approx(0.902879, abs=1e-6)
    assert r["standard"].raw == pytest.approx(raw)
    assert r["standard"].score == pytest.approx(100 * (raw + 1) / 2)
    low_fp = 1.0 + 0.22 * s(5 / 9)
    assert r["reward_low_FP_rate"].score == pytest.approx(100 * (low_fp + 1) / 2)
    assert r["standard"].false_positives == 1


def test_fp_before_any_window_costs_full_and_optimiser_drops_it() -> None:
    r = score_corpus([one_file({20: 1.0})])
    # Detecting at 1.0 gives -1 - 0.11; detecting nothing gives -1: the optimiser keeps "nothing".
    assert r["standard"].threshold == pytest.approx(1.1)
    assert r["standard"].score == pytest.approx(0.0)


def test_probation_rows_are_not_scored() -> None:
    r = score_corpus([one_file({10: 1.0, 50: 1.0})])
    assert r["standard"].score == pytest.approx(100.0)
    assert r["standard"].false_positives == 0


def test_one_threshold_for_the_whole_corpus() -> None:
    a = NabFile("x/a.csv", np.r_[np.zeros(50), 0.9, np.zeros(49)], ((50, 59),))
    b_scores = np.zeros(100)
    b_scores[52], b_scores[30] = 0.6, 0.8
    b = NabFile("x/b.csv", b_scores, ((50, 59),))
    r = score_corpus([a, b])["standard"]
    # thresholds: none -2; 0.9 -> 0; 0.8 -> -0.11; 0.6 -> 1 - 0.11 + tp(52); 0.0 -> everything (very negative)
    raw = 1 - 0.11 + s(-8 / 10) / s(-1.0)
    assert r.threshold == pytest.approx(0.6)
    assert r.raw == pytest.approx(raw)
    assert r.null == pytest.approx(-2.0) and r.perfect == pytest.approx(2.0)
    assert r.score == pytest.approx(100 * (raw + 2) / 4)
    assert r.per_file["x/a.csv"] == pytest.approx(1.0)
    assert r.per_file["x/b.csv"] == pytest.approx(raw - 1.0)
    assert r.windows_detected == 2 and r.false_positives == 1


def test_fp_far_after_window_costs_full_weight() -> None:
    # 27 rows past a 10-row window: position 27 / 9 = 3 -> exactly -1.
    r = score_corpus([one_file({50: 1.0, 86: 1.0})], [STANDARD])
    assert r["standard"].raw == pytest.approx(1.0 - 0.11)


def test_custom_profile_and_validation() -> None:
    p = CostProfile("mine", 2.0, 0.5, 1.0)
    r = score_corpus([one_file({50: 1.0})], [p])["mine"]
    assert r.perfect == pytest.approx(2.0) and r.score == pytest.approx(100.0)
    with pytest.raises(ValueError, match="fp_weight"):
        CostProfile("bad", 1.0, -0.1, 1.0)
    with pytest.raises(ValueError, match="overlap"):
        NabFile("a", np.zeros(10), ((2, 5), (5, 6)))
    with pytest.raises(ValueError, match="outside"):
        NabFile("a", np.zeros(10), ((8, 12),))
    with pytest.raises(ValueError, match="unique"):
        score_corpus([one_file({}), one_file({})])

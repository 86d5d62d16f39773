"""Scoring against simulator labels, on a hand-made frame."""

from __future__ import annotations

import polars as pl
import pytest

from tidegauge.evaluate.sim import score_simulation


def test_per_type_precision_recall_delay() -> None:
    f = pl.DataFrame(
        {
            "sensor_id": ["a"] * 8 + ["b"] * 4,
            "timestamp": list(range(8)) + list(range(4)),
            "truth_anomaly": [False, True, True, True, False, False, True, False, False, True, True, False],
            "truth_type": [
                None,
                "spike",
                "spike",
                "spike",
                None,
                None,
                "drift",
                None,
                None,
                "spike",
                "spike",
                None,
            ],
            "is_anomaly": [True, False, False, True, False, False, False, False, False, True, True, False],
        }
    )
    r = score_simulation(f)
    spike = r["spike"]
    # events: a[1..3] detected at t=3 (delay 2), b[1..2] detected at t=1 (delay 0)
    assert (spike.events, spike.detected) == (2, 2)
    assert spike.recall == 1.0
    assert spike.precision == pytest.approx(3 / 4)  # 3 hit rows, 1 false alarm (a, t=0)
    assert spike.f1 == pytest.approx(2 * 0.75 / 1.75)
    assert spike.mean_delay == pytest.approx(1.0)
    drift = r["drift"]
    assert (drift.events, drift.detected, drift.recall, drift.mean_delay) == (1, 0, 0.0, None)
    assert drift.precision == 0.0 and drift.f1 == 0.0


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="truth_type"):
        score_simulation(
            pl.DataFrame(
                {"sensor_id": ["a"], "timestamp": [0], "truth_anomaly": [False], "is_anomaly": [False]}
            )
        )


def test_events_without_an_observed_onset_are_censored() -> None:
    f = pl.DataFrame(
        {
            "sensor_id": ["a"] * 6,
            "timestamp": list(range(6)),
            "truth_anomaly": [True, True, False, False, True, True],
            "truth_type": ["spike", "spike", None, None, "spike", "spike"],
            "is_anomaly": [False, False, True, False, False, True],
        }
    )
    r = score_simulation(f)["spike"]
    # the event in progress at the first row is censored; the one at row 4 is detected one row late
    assert (r.events, r.censored, r.detected, r.median_delay_rows) == (1, 1, 1, 1.0)
    assert r.precision == pytest.approx(1 / 2)  # the alarm at row 2 is false
    late = score_simulation(f, probation=3)["spike"]
    assert late.precision == 1.0  # row 2 is inside the probation
    assert score_simulation(f, probation=5)["spike"].events == 0
    with pytest.raises(ValueError, match="probation"):
        score_simulation(f, probation=-1)

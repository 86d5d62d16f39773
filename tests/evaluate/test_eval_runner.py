"""Runners end to end on tiny labelled corpora written to a temp dir, with a transparent detector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from tidegauge.evaluate import MahalanobisBaselineDetector, load_nab_windows, run_nab, run_skab


class _ThresholdLogic:
    def __init__(self, column: str, limit: float) -> None:
        self.column, self.limit = column, limit

    def score_learn(self, batch: pl.DataFrame) -> pl.DataFrame:
        flag = pl.col(self.column) > self.limit
        return batch.with_columns(flag.cast(pl.Float64).alias("score"), flag.alias("is_anomaly"))


class ThresholdDetector:
    """Flags rows whose ``column`` exceeds ``limit`` (stateless, so trivially causal)."""

    def __init__(self, column: str, limit: float) -> None:
        self.column, self.limit = column, limit

    def build(self, resume_state: Any) -> _ThresholdLogic:
        return _ThresholdLogic(self.column, self.limit)


OTHER_SENSORS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Voltage", "Volume Flow RateRMS")


def write_skab(path: Path, n: int, anomaly: tuple[int, int], *, bump: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros(n, dtype=int)
    a[anomaly[0] : anomaly[1]] = 1
    cp = np.zeros(n, dtype=int)
    cp[[anomaly[0], anomaly[1]]] = 1
    ts = pl.datetime_range(
        pl.datetime(2020, 3, 1), pl.datetime(2020, 3, 1) + pl.duration(seconds=n - 1), "1s", eager=True
    )
    pl.DataFrame(
        {
            "datetime": ts.dt.strftime("%Y-%m-%d %H:%M:%S"),
            "Pressure": np.where(a == 1, 5.0, 1.0) if bump else np.ones(n),
            **{c: np.random.default_rng(0).normal(size=n) for c in OTHER_SENSORS},
            "anomaly": a.astype(float),
            "changepoint": cp.astype(float),
        }
    ).write_csv(path, separator=";")


def test_run_skab_scores_test_part_and_writes_scores(tmp_path: Path) -> None:
    data = tmp_path / "skab"
    write_skab(data / "valve1" / "0.csv", 600, (450, 520))
    write_skab(data / "other" / "1.csv", 600, (100, 530))
    write_skab(data / "anomaly-free" / "anomaly-free.csv", 600, (0, 1))  # never scored
    out = tmp_path / "scores"
    r = run_skab(data, ThresholdDetector("Pressure", 2.0), scores_out=out)
    assert r.files == 2 and r.rows_scored == 400
    assert (r.outlier.f1, r.outlier.far, r.outlier.mar) == (1.0, 0.0, 0.0)
    # valve1: CPs at 450 and 520 both hit exactly. other/1: only the CP at 530 is in the test part, and
    # the prediction is already on at row 400, which SKAB counts as a predicted changepoint: one FP.
    assert r.changepoint.n_changepoints == 3 and r.changepoint.missed == 0
    assert r.changepoint.false_positives == 1
    assert r.changepoint.scores["standard"] == pytest.approx(100 * (3 - 0.11 + 3) / 6)
    written = pl.read_csv(out / "valve1" / "0.csv")
    assert written.columns == ["timestamp", "Pressure", *OTHER_SENSORS, "anomaly_score", "prediction", "changepoint"]
    assert written.height == 600 and written["prediction"].sum() == 70
    assert np.flatnonzero(written["changepoint"].to_numpy()).tolist() == [450, 520]
    whole = run_skab(data, ThresholdDetector("Pressure", 2.0), score_from=0)
    assert whole.rows_scored == 1200 and whole.outlier.f1 == 1.0


def test_run_skab_with_a_changepoint_detector(tmp_path: Path) -> None:
    from tidegauge.detectors import Cusum

    data = tmp_path / "skab"
    write_skab(data / "valve1" / "0.csv", 700, (450, 600))
    out = tmp_path / "scores"
    cusum = Cusum(["Pressure"], h=4.0, warmup=400, min_std=0.1)
    r = run_skab(data, ThresholdDetector("Pressure", 2.0), changepoint_detector=cusum, scores_out=out)
    # the outlier metrics still come from the outlier detector
    assert (r.outlier.f1, r.outlier.far) == (1.0, 0.0)
    # Pressure is constant (sd floored at 0.1): the CUSUM alarms on the first row of each step, once,
    # and each alarm is the predicted changepoint itself (not two changes of an impulse)
    written = pl.read_csv(out / "valve1" / "0.csv")
    assert np.flatnonzero(written["changepoint"].to_numpy()).tolist() == [450, 600]
    assert (r.changepoint.missed, r.changepoint.false_positives) == (0, 0)
    assert r.changepoint.scores["standard"] == pytest.approx(100.0)
    # two alarms per 300 scored rows, evenly spaced at a random phase, rarely land on a window's start
    assert r.changepoint_chance["standard"] < 90.0


def write_nab(root: Path) -> Path:
    for name, spike in (("realA/a.csv", 60), ("realB/b.csv", 70)):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        v = np.ones(100)
        v[spike] = 10.0
        ts = [f"2014-01-01 00:{i // 60:02d}:{i % 60:02d}" for i in range(100)]
        pl.DataFrame({"timestamp": ts, "value": v}).write_csv(p)
    labels = root / "windows.json"
    labels.write_text(
        json.dumps(
            {
                "realA/a.csv": [["2014-01-01 00:01:00.000000", "2014-01-01 00:01:09.000000"]],
                "realB/b.csv": [["2014-01-01 00:01:05.000000", "2014-01-01 00:01:14.000000"]],
            }
        )
    )
    return labels


def test_run_nab_perfect_detector(tmp_path: Path) -> None:
    labels = write_nab(tmp_path)
    out = tmp_path / "scores"
    r = run_nab(tmp_path, load_nab_windows(labels), ThresholdDetector("value", 5.0), scores_out=out)
    assert r.files == 2
    std = r.profiles["standard"]
    # a: detection on the window's first row (+1); b: 6th of 10 rows, -(74-70+1)/10 = -0.5
    tp_b = (2 / (1 + np.exp(-2.5)) - 1) / (2 / (1 + np.exp(-5.0)) - 1)
    assert std.raw == pytest.approx(1.0 + tp_b)
    assert std.score == pytest.approx(100 * (1.0 + tp_b + 2) / 4)
    assert pl.read_csv(out / "realA" / "a.csv").columns == ["timestamp", "value", "anomaly_score"]


def test_run_nab_missing_file_is_an_error(tmp_path: Path) -> None:
    labels = write_nab(tmp_path)
    (tmp_path / "realA" / "a.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.csv"):
        run_nab(tmp_path, load_nab_windows(labels), ThresholdDetector("value", 5.0))


def test_cli_eval_nab_and_skab_json(tmp_path: Path) -> None:
    from tidegauge.cli import _register, app

    _register()
    labels = write_nab(tmp_path)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "eval",
            "nab",
            "--data",
            str(tmp_path),
            "--labels",
            str(labels),
            "--detector",
            "mahalanobis_baseline",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert set(payload["profiles"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    data = tmp_path / "skab"
    write_skab(data / "valve1" / "0.csv", 600, (450, 500))
    res = runner.invoke(
        app, ["eval", "skab", "--data", str(data), "--detector", "mahalanobis_baseline", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["files"] == 1
    help_text = runner.invoke(app, ["eval", "skab", "--help"]).output
    assert "TIDEGAUGE_EVAL_SKAB_DATA" in help_text


def test_baseline_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="quantile"):
        MahalanobisBaselineDetector(quantile=1.5)
    with pytest.raises(ValueError, match="snapshots"):
        MahalanobisBaselineDetector().build(object())

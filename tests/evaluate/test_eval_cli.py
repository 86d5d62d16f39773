"""``tidegauge eval sim`` on generated data and ``tidegauge eval skab --detector NAME``, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from typer.testing import CliRunner

from tidegauge.cli import _register, app
from tidegauge.detectors import ZScore, default_detector
from tidegauge.evaluate import generate_simulation, run_simulation, stream_simulation
from tidegauge.simulate import FleetConfig

_SIM = ["--sensors", "20", "--rate", "200", "--duration", "5m", "--seed", "0"]


def _invoke(args: list[str]) -> str:
    _register()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


def test_eval_sim_generates_and_scores_per_type() -> None:
    payload = json.loads(_invoke(["eval", "sim", *_SIM, "--json"]))
    assert payload["readings"] == 200 * 300  # 200 readings/s for 5 minutes
    assert payload["sensors"] == 20 and payload["probation"] == 100 and payload["detector"] == "default"
    assert payload["types"]
    for metrics in payload["types"].values():
        expected = {"events", "censored", "precision", "recall", "f1", "median_delay_readings"}
        assert expected <= set(metrics)
    assert max(m["f1"] for m in payload["types"].values()) > 0.5


def test_eval_sim_table_and_envvars() -> None:
    table = _invoke(["eval", "sim", *_SIM, "--probation", "50"])
    for header in ("precision", "recall", "F1", "censored", "median delay"):
        assert header in table
    help_text = _invoke(["eval", "sim", "--help"])
    for env in ("TIDEGAUGE_EVAL_SIM_SENSORS", "TIDEGAUGE_EVAL_SIM_DURATION", "TIDEGAUGE_EVAL_SIM_PROBATION"):
        assert env in help_text


def test_one_logic_with_per_sensor_state_equals_one_logic_per_sensor() -> None:
    frame = generate_simulation(FleetConfig(sensors=5, rate=50.0, seed=3), "20s")
    fields = ["temperature", "vibration"]
    det = ZScore(fields, warmup=5)
    shared = stream_simulation(frame, det, batch_rows=64)
    per_key = pl.concat(
        [det.build(None).score_learn(g) for _, g in frame.group_by("sensor_id", maintain_order=True)]
    ).sort("timestamp", maintain_order=True)
    assert shared.columns == per_key.columns
    np.testing.assert_array_equal(shared["score"].to_numpy(), per_key["score"].to_numpy())
    report = run_simulation(frame, default_detector(fields), probation=10)
    assert report.readings == frame.height and report.sensors == 5


_OTHER_SKAB = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Voltage", "Volume Flow RateRMS")


def _write_skab(path: Path, n: int = 500) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    anomaly = np.zeros(n)
    anomaly[420:460] = 1.0
    cp = np.zeros(n)
    cp[[420, 460]] = 1.0
    pl.DataFrame(
        {
            "datetime": [f"2020-03-01 00:{i // 60:02d}:{i % 60:02d}" for i in range(n)],
            "Pressure": np.where(anomaly == 1, 8.0, 0.0) + rng.normal(size=n),
            **{c: rng.normal(size=n) for c in _OTHER_SKAB},
            "anomaly": anomaly,
            "changepoint": cp,
        }
    ).write_csv(path, separator=";")


def test_eval_skab_with_a_registry_detector(tmp_path: Path) -> None:
    _write_skab(tmp_path / "valve1" / "0.csv")
    payload = json.loads(_invoke(["eval", "skab", "--data", str(tmp_path), "--detector", "zscore", "--json"]))
    assert payload["detector"] == "zscore" and payload["files"] == 1 and payload["rows_scored"] == 100
    assert payload["outlier"]["tp"] > 0  # Pressure jumps 8 sd: the z-score on the file's columns sees it
    default = json.loads(_invoke(["eval", "skab", "--data", str(tmp_path), "--json"]))
    assert default["detector"] == "mahalanobis_baseline"


def test_eval_skab_unknown_detector_lists_the_valid_ones(tmp_path: Path) -> None:
    _write_skab(tmp_path / "valve1" / "0.csv")
    _register()
    res = CliRunner().invoke(app, ["eval", "skab", "--data", str(tmp_path), "--detector", "nope"])
    assert res.exit_code != 0
    assert "zscore" in str(res.exception)  # the message lists the registry's names


def test_eval_skab_changepoint_detector_option(tmp_path: Path) -> None:
    _write_skab(tmp_path / "valve1" / "0.csv")
    cusum = json.loads(
        _invoke(["eval", "skab", "--data", str(tmp_path), "--changepoint-detector", "cusum", "--json"])
    )["changepoint"]
    assert cusum["detector"] == "cusum" and set(cusum["nab_chance"]) == {"standard", "low_fp", "low_fn"}
    # the default is the SKAB-tuned CUSUM; 'same' derives changepoints from the outlier prediction
    assert json.loads(_invoke(["eval", "skab", "--data", str(tmp_path), "--json"]))["changepoint"]["detector"] == (
        "skab_cusum"
    )
    same = json.loads(
        _invoke(["eval", "skab", "--data", str(tmp_path), "--changepoint-detector", "same", "--json"])
    )["changepoint"]
    assert same["detector"] == "mahalanobis_baseline"
    assert same["nab"] != cusum["nab"] or same["false_positives"] != cusum["false_positives"]

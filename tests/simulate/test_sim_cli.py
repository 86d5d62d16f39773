"""`tidegauge simulate` from the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import tidegauge.cli as cli


@pytest.fixture(scope="module", autouse=True)
def _commands() -> None:
    cli._register()


def test_writes_a_file(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    args = ["simulate", "--rows", "5000", "--output", str(out), "--start", "2024-05-01T00:00:00Z", "--late", "0.1"]
    result = CliRunner().invoke(cli.app, args, env={"TIDEGAUGE_SIM_SENSORS": "7"})
    assert result.exit_code == 0, result.output
    assert "wrote 5,000 rows" in result.output and "faults injected" in result.output
    df = pl.read_parquet(out)
    assert df.height == 5000
    assert df["sensor_id"].n_unique() == 7  # from the environment variable
    assert (df["truth_fault"] == "late").sum() > 0


def test_duration_sets_the_row_count(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    result = CliRunner().invoke(cli.app, ["simulate", "--rate", "100", "--duration", "2s", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert pl.read_csv(out).height == 200


def test_bad_value_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.parquet"
    monkeypatch.setattr(sys, "argv", ["tidegauge", "simulate", "--anomaly-rate", "2", "--output", str(out)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("error:") and "anomaly_rate=2" in err
    assert not out.exists()


def test_help_shows_environment_variables() -> None:
    result = CliRunner().invoke(cli.app, ["simulate", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in ("SENSORS", "RATE", "DURATION", "ROWS", "SEED", "START", "OUTPUT", "MALFORMED", "REALTIME"):
        assert f"TIDEGAUGE_SIM_{name}" in result.output

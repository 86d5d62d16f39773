"""write_readings: each format round-trips; malformed rows become unparsable text as documented."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tidegauge.simulate import FaultConfig, FleetConfig, FleetSimulator, format_of, write_readings

CONFIG = FleetConfig(sensors=20, seed=6, faults=FaultConfig(malformed=0.05, duplicates=0.02, late=0.02))
ROWS = 20_000


@pytest.fixture(scope="module")
def expected() -> pl.DataFrame:
    return FleetSimulator(CONFIG).next_batch(ROWS)


def test_parquet_round_trip(tmp_path: Path, expected: pl.DataFrame) -> None:
    seen: list[int] = []
    summary = write_readings(tmp_path / "r.parquet", CONFIG, rows=ROWS, batch_rows=3000, progress=seen.append)
    assert pl.read_parquet(tmp_path / "r.parquet").equals(expected)
    assert seen[-1] == ROWS and len(seen) == 7
    assert summary.rows == ROWS
    assert summary.anomalous_rows == expected["truth_anomaly"].sum()
    assert summary.faults["malformed"] == (expected["truth_fault"] == "malformed").sum()
    assert "wrote 20,000 rows" in summary.line()


def test_csv_round_trip(tmp_path: Path, expected: pl.DataFrame) -> None:
    write_readings(tmp_path / "r.csv", CONFIG, rows=ROWS, batch_rows=3000)
    text = pl.read_csv(tmp_path / "r.csv", infer_schema=False)
    assert text.columns == expected.columns and text.height == ROWS
    bad = text["truth_fault"] == "malformed"
    good = text.filter(~bad).with_columns(
        pl.col("timestamp").str.to_datetime(time_unit="us", time_zone="UTC"),
        pl.col("temperature", "humidity", "pressure", "vibration", "power_consumption", "latitude", "longitude")
        .cast(pl.Float64),
        pl.col("truth_anomaly") == "true",
    )
    assert good.equals(expected.filter(pl.col("truth_fault") != "malformed"))
    malformed = text.filter(bad)
    exp = expected.filter(pl.col("truth_fault") == "malformed")
    assert malformed["sensor_id"].null_count() == exp["sensor_id"].null_count() > 0
    assert (malformed["timestamp"] == "not-a-timestamp").sum() == exp["timestamp"].null_count() > 0
    assert (malformed["temperature"] == "n/a").sum() == exp["temperature"].is_nan().sum() > 0
    assert (malformed["power_consumption"] == "1.2.3").sum() == exp["power_consumption"].is_infinite().sum() > 0


def test_jsonl_round_trip(tmp_path: Path, expected: pl.DataFrame) -> None:
    write_readings(tmp_path / "r.jsonl", CONFIG, rows=ROWS, batch_rows=3000)
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(records) == ROWS
    exp = expected.to_dicts()
    kinds = {"missing": 0, "time": 0, "temp": 0, "power": 0}
    for got, want in zip(records, exp, strict=True):
        if want["truth_fault"] != "malformed":
            assert got["sensor_id"] == want["sensor_id"]
            assert got["temperature"] == want["temperature"]
            assert got["timestamp"] == want["timestamp"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            continue
        kinds["missing"] += "sensor_id" not in got
        kinds["time"] += got["timestamp"] == "not-a-timestamp"
        kinds["temp"] += got["temperature"] == "n/a"
        kinds["power"] += got["power_consumption"] == "1.2.3"
    assert all(kinds.values()) and sum(kinds.values()) == (expected["truth_fault"] == "malformed").sum()


def test_unknown_extension_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.csv, \.jsonl or \.parquet"):
        format_of(tmp_path / "r.xlsx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_readings(tmp_path / "missing" / "r.csv", CONFIG, rows=10)

"""Injected faults: requested fractions, labels, and what each fault does to a row."""

from __future__ import annotations

import polars as pl
import pytest

from tidegauge.simulate import FaultConfig, FleetConfig, FleetSimulator

FRACTION = 0.02
RATE = 1000.0  # one reading per millisecond: nominal times are easy to recompute


@pytest.fixture(scope="module")
def faulty() -> pl.DataFrame:
    faults = FaultConfig(
        out_of_order=FRACTION, late=FRACTION, duplicates=FRACTION, malformed=FRACTION, future=FRACTION
    )
    df = FleetSimulator(FleetConfig(rate=RATE, seed=4, faults=faults)).next_batch(400_000)
    dup = pl.col("truth_fault") == "duplicate"
    return df.with_row_index("i").with_columns(reading=pl.col("i").cast(pl.Int64) - dup.cast(pl.Int64).cum_sum())


def test_fractions_and_labels(faulty: pl.DataFrame) -> None:
    readings = faulty.filter(pl.col("truth_fault") != "duplicate").height
    counts = dict(faulty["truth_fault"].value_counts().iter_rows())
    assert set(counts) == {"none", "out_of_order", "late", "duplicate", "malformed", "future"}
    for kind in ("out_of_order", "late", "duplicate", "malformed", "future"):
        assert counts[kind] / readings == pytest.approx(FRACTION, rel=0.1), kind


def test_time_faults_move_event_time_as_documented(faulty: pl.DataFrame) -> None:
    start = faulty["timestamp"][0]
    d = faulty.select(
        "truth_fault",
        shift=pl.col("timestamp").dt.epoch("us")
        - (start.timestamp() * 1e6 + pl.col("reading") * (1e6 / RATE)).cast(pl.Int64),  # type: ignore[union-attr]
    ).drop_nulls()
    by = d.group_by("truth_fault").agg(lo=pl.col("shift").min(), hi=pl.col("shift").max())
    got = {r["truth_fault"]: (r["lo"], r["hi"]) for r in by.iter_rows(named=True)}
    assert got["none"] == (0, 0) and got["duplicate"] == (0, 0) and got["malformed"] == (0, 0)
    lo, hi = got["out_of_order"]
    assert -5_000_000 <= lo and hi < 0
    lo, hi = got["late"]
    assert -1_200_000_000 < lo and hi <= -600_000_000
    lo, hi = got["future"]
    assert 3_600_000_000 <= lo and hi < 7_200_000_000


def test_duplicates_repeat_the_previous_row(faulty: pl.DataFrame) -> None:
    cols = [c for c in faulty.columns if c not in ("i", "truth_fault")]
    prev = faulty.select(pl.col(cols).shift(1).name.suffix("_prev"), "truth_fault")
    dups = prev.with_columns(faulty.select(cols)).filter(pl.col("truth_fault") == "duplicate")
    for c in cols:
        assert dups.select((pl.col(c) == pl.col(f"{c}_prev")).all()).item(), c


def test_malformed_rows_are_exactly_the_broken_ones(faulty: pl.DataFrame) -> None:
    broken = (
        pl.col("sensor_id").is_null()
        | pl.col("timestamp").is_null()
        | pl.col("temperature").is_nan()
        | pl.col("power_consumption").is_infinite()
    )
    check = faulty.select(broken=broken, labelled=pl.col("truth_fault") == "malformed")
    assert check["broken"].equals(check["labelled"].alias("broken"))
    malformed = faulty.filter(pl.col("truth_fault") == "malformed")
    for expr in (
        pl.col("sensor_id").is_null(),
        pl.col("timestamp").is_null(),
        pl.col("temperature").is_nan(),
        pl.col("power_consumption").is_infinite(),
    ):
        assert malformed.select(expr.sum()).item() > 0


def test_faults_leave_the_clean_readings_alone(faulty: pl.DataFrame) -> None:
    clean = FleetSimulator(FleetConfig(rate=RATE, seed=4)).next_batch(400_000)
    originals = faulty.filter(pl.col("truth_fault") != "duplicate")
    n = originals.height
    cols = ["humidity", "pressure", "vibration", "truth_anomaly", "operational_status"]
    assert originals.select(cols).equals(clean.head(n).select(cols))

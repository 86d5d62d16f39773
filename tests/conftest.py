"""Shared fixtures: small reading frames in the demo schema."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def readings(rows: list[tuple[str | None, float | None, float]]) -> pl.DataFrame:
    """Frame of (sensor_id, seconds after T0, temperature)."""
    return pl.DataFrame(
        {
            "sensor_id": [r[0] for r in rows],
            "timestamp": [None if r[1] is None else T0 + timedelta(seconds=r[1]) for r in rows],
            "temperature": [r[2] for r in rows],
        },
        schema={"sensor_id": pl.String, "timestamp": pl.Datetime("us", "UTC"), "temperature": pl.Float64},
    )


@pytest.fixture
def t0() -> datetime:
    return T0

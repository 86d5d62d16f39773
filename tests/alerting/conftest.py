"""The alert store backends the restart scenarios run against: SQLite always, PostgreSQL when reachable
(skipped otherwise, failed under ``TIDEGAUGE_REQUIRE_SERVERS=1``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.connectors.servers import POSTGRES_CONNINFO, require, unique


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where an alert store lives: a SQLite file, or a fresh schema of the test PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "a.db")
        return
    require("postgres")
    import psycopg
    schema = unique("tg_alerts")
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        # the schema on the search path: the store's tables land there, apart from any other test's
        yield f"{POSTGRES_CONNINFO}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

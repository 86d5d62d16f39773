"""PostgreSQL upsert sink against the real server on 127.0.0.1:5432 (database ``test``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg
import pytest

from tests.connectors.servers import POSTGRES_CONNINFO, require, unique
from tidegauge.dataflow import Flow
from tidegauge.dataflow.runner import CheckpointConfig
from tidegauge.testing import MemorySource

pytestmark = pytest.mark.server

from tidegauge.connectors.postgres import PostgresSink, PostgresSinkState  # noqa: E402


@pytest.fixture(autouse=True)
def _postgres() -> None:
    require("postgres")


@pytest.fixture
def table() -> object:
    name = unique("tg_win")
    yield name
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {name}, {name}__tg_pending")


def windows(offset: float = 0.0) -> pl.DataFrame:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return pl.DataFrame({
        "sensor_id": [f"s{i % 3}" for i in range(9)],
        "window_start": [start + timedelta(minutes=i // 3) for i in range(9)],
        "timestamp": [start + timedelta(minutes=i // 3) for i in range(9)],
        "mean": [float(i) + offset for i in range(9)],
    })


def rows(table: str) -> list[tuple[object, ...]]:
    with psycopg.connect(POSTGRES_CONNINFO) as c:
        return c.execute(f"SELECT sensor_id, window_start, mean FROM {table} ORDER BY 2, 1").fetchall()


def sink(table: str) -> PostgresSink:
    return PostgresSink(table, key=("sensor_id", "window_start"), conninfo=POSTGRES_CONNINFO, create=True)


def test_replaying_the_same_windows_leaves_one_row_per_key(table: str, tmp_path: Path) -> None:
    for attempt in range(2):  # the second run replays everything (a fresh checkpoint dir each time)
        flow = Flow("pg")
        flow.source(MemorySource(windows(), batch_rows=4)).sink(sink(table))
        flow.run(checkpoint=CheckpointConfig(dir=tmp_path / f"cp{attempt}", every_batches=1))
    got = rows(table)
    assert len(got) == 9
    assert [r[2] for r in got] == [float(i) for i in range(9)]


def test_crash_recovery_commits_checkpointed_and_discards_later_epochs(table: str) -> None:
    async def scenario() -> None:
        first = sink(table).build(None)
        await first.write_batch(windows().head(3))
        await first.pre_commit(1)
        state = first.snapshot()  # the checkpoint manifest records this
        await first.write_batch(windows(100.0).tail(6))
        await first.pre_commit(2)  # staged, but the crash comes before a manifest covers epoch 2
        await first.close()  # the connection goes away; nothing is buffered, so nothing more is written
        # crash here: commit(1) never ran
        assert state == PostgresSinkState(table, 1)
        restarted = sink(table).build(state)
        await restarted.commit(1)
        await restarted.close()

    asyncio.run(scenario())
    assert [r[2] for r in rows(table)] == [0.0, 1.0, 2.0]
    with psycopg.connect(POSTGRES_CONNINFO) as c:
        assert c.execute(f"SELECT count(*) FROM {table}__tg_pending").fetchone() == (0,)


def test_missing_table_without_create_is_an_error(table: str) -> None:
    from tidegauge.errors import ConnectorError

    async def scenario() -> None:
        logic = PostgresSink(table, key="sensor_id", conninfo=POSTGRES_CONNINFO).build(None)
        await logic.write_batch(windows())
        try:
            await logic.pre_commit(1)
        finally:
            await logic.close()

    with pytest.raises(ConnectorError, match="create=True"):
        asyncio.run(scenario())

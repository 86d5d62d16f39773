"""History queries from PostgreSQL: the tables the flow's :class:`~tidegauge.connectors.postgres.PostgresSink`
upserts into, chosen by ``history: {postgres: <conninfo>, readings: <table>, windows: <table>, ...}``.

The query endpoints (:mod:`tidegauge.server.query`) build one SQL text per request over a relation named
``t``, with ``?`` placeholders; this module runs it against ``WITH t AS (SELECT * FROM <table>)`` (PostgreSQL
inlines the CTE, so filters and limits reach the table's indexes) with psycopg's ``%s`` placeholders, in a
read-only transaction, in a worker thread. The two statements that differ between DuckDB and PostgreSQL
(latest row per key, time buckets) come from :func:`latest_per_key` and :func:`time_bucket`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from tidegauge.errors import MissingDependencyError

__all__ = ["latest_per_key", "query_postgres", "time_bucket"]

logger = logging.getLogger(__name__)

Dialect = str  # "duckdb" or "postgres"


def latest_per_key(dialect: Dialect, key: str, time: str) -> str:
    """SQL of the latest row of each key of ``t`` (with a ``last_seen`` column), ordered by key, ``LIMIT ?``."""
    if dialect == "postgres":
        return (f'SELECT DISTINCT ON ("{key}") *, "{time}" AS last_seen FROM t '
                f'ORDER BY "{key}", "{time}" DESC LIMIT ?')
    return (f'SELECT *, "{time}" AS last_seen FROM t QUALIFY row_number() OVER '
            f'(PARTITION BY "{key}" ORDER BY "{time}" DESC) = 1 ORDER BY "{key}" LIMIT ?')


def time_bucket(dialect: Dialect, time: str) -> str:
    """SQL of the start of the bucket of ``time``; its one parameter is the bucket width in microseconds."""
    if dialect == "postgres":
        # date_bin (PostgreSQL 14+) from the Unix epoch: the same buckets as DuckDB's time_bucket
        return f"date_bin(make_interval(secs => ?::double precision / 1e6), \"{time}\", TIMESTAMPTZ 'epoch')"
    return f"time_bucket(to_microseconds(?), \"{time}\", TIMESTAMPTZ '1970-01-01 00:00:00+00')"


def _relation(table: str) -> Any:
    from psycopg import sql

    parts = table.split(".")
    if not table or len(parts) > 2 or not all(parts):
        raise ValueError(f"history table {table!r}: use 'name' or 'schema.name'")
    return sql.Identifier(*parts)


def query_postgres(conninfo: str, table: str, statement: str, params: list[Any]) -> list[dict[str, Any]] | None:
    """Rows of ``statement`` over ``t`` = ``table``; ``None`` when the table does not exist (yet)."""
    try:
        import psycopg
        from psycopg import sql
        from psycopg.rows import dict_row
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("psycopg", "postgres") from exc
    relation = _relation(table)
    with psycopg.connect(conninfo, autocommit=False, connect_timeout=10) as conn:
        conn.read_only = True
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL AS present", [relation.as_string(conn)])
            found = cur.fetchone()
            if not found or not found["present"]:
                return None
            # identifiers in the statement come from the server config and pass isidentifier(); the
            # statement holds no literal '?' or '%', so the placeholder swap is exact
            text = statement.replace("%", "%%").replace("?", "%s")
            query = sql.SQL("WITH t AS (SELECT * FROM {}) ").format(relation) + sql.SQL(text)
            cur.execute(query, params)
            rows: list[dict[str, Any]] = cur.fetchall()
    for row in rows:  # in UTC, as the DuckDB backend answers (psycopg gives the session's zone)
        for k, v in row.items():
            if isinstance(v, datetime) and v.tzinfo is not None:
                row[k] = v.astimezone(UTC)
    return rows

"""Query endpoints over the history store: DuckDB over the Parquet files the flow's sinks commit, or
PostgreSQL tables when ``history.postgres`` is set (:mod:`tidegauge.server.history_pg`).

History is read from :class:`~tidegauge.connectors.files.FileSink` outputs named in the server config
(``history: {readings: out/readings.parquet, windows: ..., anomalies: ..., dead_letters: ...}``), in any
of the sink's formats (Parquet, JSONL, CSV): the committed parts ``<path>.parts/*`` (readable while the
flow runs) and ``<path>`` itself once a finite run closed it. A served pipeline whose ``dead_letter:``
sink is a file reads its dead letters there unless ``history.dead_letters`` says otherwise. Every
endpoint needs the ``read`` scope; queries run in a worker thread.

``GET /api/v1/sensors``                       latest reading per sensor, with ``last_seen``
``GET /api/v1/sensors/{id}/series``           readings of one sensor in ``[start, end)``; with
                                              ``window=1m`` and ``agg=mean|min|max|sum|count``, bucketed
``GET /api/v1/windows``                       window results (``sensor_id``, ``start``, ``end`` filters)
``GET /api/v1/anomalies``                     detector output rows with ``is_anomaly``
``GET /api/v1/dead-letters``                  rejected records with reason and payload

Every list takes ``limit`` (default 1000, at most 100,000).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tidegauge._time import parse_duration
from tidegauge.server.history_pg import latest_per_key, query_postgres, time_bucket
from tidegauge.server.ingest import error, json_response

if TYPE_CHECKING:
    from tidegauge.server.app import ServerState

__all__ = ["query_routes"]

logger = logging.getLogger(__name__)

_MAX_LIMIT = 100_000
_AGGS = {"mean": "avg", "min": "min", "max": "max", "sum": "sum", "count": "count"}


class _BadQuery(ValueError):
    pass


def query_routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/sensors", sensors),
        Route("/api/v1/sensors/{sensor_id}/series", series),
        Route("/api/v1/windows", windows),
        Route("/api/v1/anomalies", anomalies),
        Route("/api/v1/dead-letters", dead_letters),
    ]


async def windows(request: Request) -> Response:
    return await _table(request, "windows", "window_end")


async def anomalies(request: Request) -> Response:
    return await _table(request, "anomalies", None)


async def dead_letters(request: Request) -> Response:
    return await _table(request, "dead_letters", "rejected_at")


_READERS = {".parquet": "read_parquet", ".jsonl": "read_json_auto", ".csv": "read_csv_auto"}
"""DuckDB's reader for each of FileSink's formats (dead letters are often JSONL: their payloads stay text)."""


def _files(path: str | None) -> list[str]:
    """The committed files of a FileSink output: its parts (a directory's files when ``path`` ends in
    ``/``), else the final file of a finished run; all of one format (the sink writes one)."""
    if path is None:
        return []
    p = Path(path)
    folder = p if path.endswith("/") else Path(f"{path}.parts")
    for ext in _READERS:
        parts = sorted(str(f) for f in folder.glob(f"*{ext}"))
        if parts:
            return parts
    return [str(p)] if not path.endswith("/") and p.is_file() else []


def _query(files: list[str], sql: str, params: list[Any]) -> list[dict[str, Any]]:
    import duckdb

    reader = _READERS.get(Path(files[0]).suffix, "read_parquet")
    with duckdb.connect() as con:
        # file names come from the server config, not from requests; quoted all the same
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(f"CREATE VIEW t AS SELECT * FROM {reader}([{listed}], union_by_name = true)")
        # through Arrow/polars: typed columns (UTC datetimes) without DuckDB's Python row conversion
        table = con.sql(sql, params=params).to_arrow_table()
        rows: list[dict[str, Any]] = pl.DataFrame(pl.from_arrow(table)).to_dicts()
        return rows


def _time_param(request: Request, name: str) -> datetime | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _BadQuery(f"{name}={value!r}: use an ISO 8601 time with a zone, e.g. 2026-01-01T00:00:00Z") from None
    if ts.tzinfo is None:
        raise _BadQuery(f"{name}={value!r}: add a zone (e.g. 'Z' for UTC)")
    return ts.astimezone(UTC)


def _limit(request: Request) -> int:
    value = request.query_params.get("limit", "1000")
    if not value.isdigit() or not 1 <= int(value) <= _MAX_LIMIT:
        raise _BadQuery(f"limit={value!r}: use a whole number from 1 to {_MAX_LIMIT}")
    return int(value)


async def _run(request: Request, table: str, build: Any) -> Response:
    state: ServerState = request.app.state.tg
    who = state.authorize(request.headers.get("authorization"), "read")
    if isinstance(who, Response):
        return who
    history = state.config.history
    where: str | None = getattr(history, table)
    empty = json_response({"rows": [], "note": f"no {table} history yet (history.{table} in the config)"})
    try:
        if history.postgres is not None:
            if where is None:
                return empty
            sql, params = build(request, state, "postgres")
            found = await asyncio.to_thread(query_postgres, history.postgres, where, sql, params)
            if found is None:
                return empty
            rows = found
        else:
            files = _files(where)
            if not files:
                return empty
            sql, params = build(request, state, "duckdb")
            rows = await asyncio.to_thread(_query, files, sql, params)
    except _BadQuery as exc:
        return error(400, str(exc))
    except Exception as exc:  # e.g. a column the history does not have: explain, do not 500
        logger.info("query on %s failed: %s", table, exc)
        return error(400, f"query failed: {str(exc).splitlines()[0]}")
    return json_response({"rows": rows}, headers=None)


async def sensors(request: Request) -> Response:
    def build(request: Request, state: ServerState, dialect: str) -> tuple[str, list[Any]]:
        key, time = _key_time(state)
        return latest_per_key(dialect, key, time), [_limit(request)]

    return await _run(request, "readings", build)


async def series(request: Request) -> Response:
    def build(request: Request, state: ServerState, dialect: str) -> tuple[str, list[Any]]:
        key, time = _key_time(state)
        where, params = _where(request, key, time, sensor=request.path_params["sensor_id"])
        window = request.query_params.get("window")
        if window is None:
            return f'SELECT * FROM t {where} ORDER BY "{time}" LIMIT ?', [*params, _limit(request)]
        try:
            us = parse_duration(window, name="window")
        except (ValueError, TypeError) as exc:
            raise _BadQuery(str(exc)) from None
        if us <= 0:
            raise _BadQuery(f"window={window!r}: must be positive")
        agg = request.query_params.get("agg", "mean")
        if agg not in _AGGS:
            raise _BadQuery(f"agg={agg!r}: use one of {', '.join(_AGGS)}")
        field = request.query_params.get("field", "temperature")
        if not field.isidentifier():
            raise _BadQuery(f"field={field!r}: a column name")
        return (f'SELECT {time_bucket(dialect, time)} AS window_start, '
                f'{_AGGS[agg]}("{field}") AS "{field}_{agg}", count(*) AS n FROM t {where} '
                f"GROUP BY 1 ORDER BY 1 LIMIT ?", [us, *params, _limit(request)])

    return await _run(request, "readings", build)


async def _table(request: Request, table: str, time_col: str | None) -> Response:
    def build(request: Request, state: ServerState, dialect: str) -> tuple[str, list[Any]]:
        key, time = _key_time(state)
        tcol = time_col or time
        where, params = _where(request, key, tcol, sensor=request.query_params.get("sensor_id")
                               if table != "dead_letters" else None)
        if table == "anomalies":
            where = (where + " AND" if where else "WHERE") + " is_anomaly"
        return f'SELECT * FROM t {where} ORDER BY "{tcol}" DESC LIMIT ?', [*params, _limit(request)]

    return await _run(request, table, build)


def _key_time(state: ServerState) -> tuple[str, str]:
    src = state.source
    return (src.key, src.time) if src is not None else ("sensor_id", "timestamp")


def _where(request: Request, key: str, time: str, *, sensor: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if sensor is not None:
        clauses.append(f'"{key}" = ?')
        params.append(sensor)
    start, end = _time_param(request, "start"), _time_param(request, "end")
    if start is not None:
        clauses.append(f'"{time}" >= ?')
        params.append(start)
    if end is not None:
        clauses.append(f'"{time}" < ?')
        params.append(end)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

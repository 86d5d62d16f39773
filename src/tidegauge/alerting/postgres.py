"""PostgreSQL alert store: the SQLite store's schema and statements, run through psycopg 3.

Needs ``pip install 'tidegauge[postgres]'``. Chosen by :func:`~tidegauge.alerting.store.open_store` (and so by
``AlertManager(store="postgresql://...")``) for a ``postgresql://`` URL. To keep several pipelines (or tests) in
one database apart, give each its own schema in the URL: ``postgresql://host/db?options=-csearch_path%3Dplant_a``
(the schema must exist).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from tidegauge.alerting.store import SCHEMA, AlertStore
from tidegauge.errors import MissingDependencyError

__all__ = ["PostgresAlertStore"]

logger = logging.getLogger(__name__)


class _Translating:
    """A psycopg connection seen through the store's ``?`` placeholders."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        rows = list(rows)
        cur = self.conn.cursor()
        if rows:  # psycopg sends nothing for no rows, but be explicit: an empty batch is a no-op
            cur.executemany(sql.replace("?", "%s"), rows)
        return cur


class PostgresAlertStore(AlertStore):
    """Alerting state in PostgreSQL (one connection behind a lock; autocommit outside :meth:`transaction`).

    Parameters
    ----------
    url:
        A libpq URL, e.g. ``postgresql://alerts@db.example/tidegauge``.
    connect_timeout:
        Seconds to wait for the server at start-up.
    """

    dialect: ClassVar[Mapping[str, str]] = {"int": "BIGINT", "blob": "BYTEA", "serial": "BIGSERIAL PRIMARY KEY",
                                            "no_limit": "LIMIT ALL"}

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise MissingDependencyError("psycopg", "postgres") from exc
        self.path = _redacted(url)
        self._conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout)
        self._lock = threading.RLock()
        with self._conn.transaction():
            # two stores starting at once would race on CREATE TABLE IF NOT EXISTS; the lock serialises them
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('tidegauge.alerting.schema'))")
            for stmt in SCHEMA.format(**self.dialect).split(";"):
                if stmt.strip():
                    self._conn.execute(stmt)

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One atomic write (``BEGIN`` ... ``COMMIT``, rolled back on error)."""
        with self._lock, self._conn.transaction():
            yield _Translating(self._conn)


def _redacted(url: str) -> str:
    """``url`` without its password (it is logged and shown as the store's path)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"

"""Persisted alert state: alerts, notification groups, silences, rule state and the notification outbox/log.

SQLite by default (one file, WAL mode); PostgreSQL (same schema,
:class:`~tidegauge.alerting.postgres.PostgresAlertStore`) when :func:`open_store` is given a ``postgresql://``
URL. Every evaluation commits its alert, group and outbox changes in one transaction, so a restart neither
re-pages (groups remember what they notified) nor forgets a firing alert. The CLI opens the same store to
list alerts and manage silences while the pipeline runs.

Subclasses change only the connection, the transaction and the SQL dialect (:attr:`AlertStore.dialect`);
every statement is written once, with ``?`` placeholders.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from tidegauge.alerting.lifecycle import Alert
from tidegauge.alerting.routing import Matcher, Silence

__all__ = ["AlertStore", "GroupState", "OutboxEntry", "open_store"]

logger = logging.getLogger(__name__)

# {int}: a 64-bit integer (microsecond timestamps); {blob}: bytes; {serial}: an auto-increment 64-bit key
SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (fingerprint TEXT PRIMARY KEY, data TEXT NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups (key TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS silences (id TEXT PRIMARY KEY, matchers TEXT NOT NULL, starts_at {int} NOT NULL,
    ends_at {int} NOT NULL, created_by TEXT NOT NULL, comment TEXT NOT NULL, created_at {int} NOT NULL);
CREATE TABLE IF NOT EXISTS rule_state (rule TEXT PRIMARY KEY, blob {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (id {serial}, group_key TEXT NOT NULL,
    receiver TEXT NOT NULL, status TEXT NOT NULL, payload TEXT NOT NULL, created_at {int} NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, next_attempt {int} NOT NULL,
    delivered_at {int}, last_error TEXT);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (receiver, state, next_attempt);
"""
"""The schema shared by every backend, with the dialect's types filled in."""


def open_store(target: str | Path) -> AlertStore:
    """The store at ``target``: a ``postgresql://`` URL (needs ``pip install 'tidegauge[postgres]'``), a SQLite
    file path, or ``":memory:"``."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        from tidegauge.alerting.postgres import PostgresAlertStore

        return PostgresAlertStore(text)
    return AlertStore(target)


@dataclass
class GroupState:
    """An aggregation group: the alerts of one route with equal ``group_by`` label values."""

    key: str
    route: str
    receiver: str
    labels: dict[str, str]
    alerts: list[str]
    next_flush: int
    last_notify: int | None = None
    notified_firing: list[str] | None = None


@dataclass
class OutboxEntry:
    id: int
    group_key: str
    receiver: str
    status: str
    payload: dict[str, Any]
    created_at: int
    state: str
    attempts: int
    next_attempt: int
    delivered_at: int | None
    last_error: str | None


# msgspec encodes and decodes the dataclasses directly: 10,000 firing alerts are saved at every evaluation
# (their last_active moves), and dataclasses.asdict + json took ~0.45 ms an alert
_ENCODE = msgspec.json.Encoder().encode
_ALERT = msgspec.json.Decoder(Alert)
_GROUP = msgspec.json.Decoder(GroupState)


class AlertStore:
    """SQLite store of alerting state. Thread-safe (one connection behind a lock).

    Parameters
    ----------
    path:
        Database file, or ``":memory:"`` (state lost at exit: for tests only).
    """

    dialect: ClassVar[Mapping[str, str]] = {
        "int": "INTEGER", "blob": "BLOB", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "no_limit": "LIMIT -1",
    }
    """SQL spelling of the schema's types and of "no LIMIT before OFFSET"."""

    def __init__(self, path: str | Path = "alerts.db") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn: Any = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._conn.executescript(SCHEMA.format(**self.dialect))

    def _q(self, sql: str) -> str:
        """``sql`` in this backend's placeholder style (SQLite: ``?`` as written)."""
        return sql

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One atomic write (``BEGIN IMMEDIATE`` ... ``COMMIT``); yields the connection to write through."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            rows: list[Any] = self._conn.execute(self._q(sql), params).fetchall()
        return rows

    # alerts ------------------------------------------------------------------------------------------
    def load_alerts(self) -> list[Alert]:
        rows = self._read("SELECT data FROM alerts")
        return [_ALERT.decode(r[0]) for r in rows]

    def save_alerts(self, conn: Any, alerts: Iterable[Alert]) -> None:
        conn.executemany(
            "INSERT INTO alerts (fingerprint, data, state) VALUES (?, ?, ?) "
            "ON CONFLICT(fingerprint) DO UPDATE SET data = excluded.data, state = excluded.state",
            [(a.fingerprint, _ENCODE(a).decode(), a.state) for a in alerts],
        )

    def delete_alerts(self, conn: Any, fingerprints: Iterable[str]) -> None:
        conn.executemany("DELETE FROM alerts WHERE fingerprint = ?", [(f,) for f in fingerprints])

    # groups ------------------------------------------------------------------------------------------
    def load_groups(self) -> list[GroupState]:
        rows = self._read("SELECT data FROM groups")
        return [_GROUP.decode(r[0]) for r in rows]

    def save_groups(self, conn: Any, groups: Iterable[GroupState]) -> None:
        conn.executemany(
            "INSERT INTO groups (key, data) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET data = excluded.data",
            [(g.key, _ENCODE(g).decode()) for g in groups],
        )

    def delete_groups(self, conn: Any, keys: Iterable[str]) -> None:
        conn.executemany("DELETE FROM groups WHERE key = ?", [(k,) for k in keys])

    # rule state --------------------------------------------------------------------------------------
    def load_rule_state(self) -> dict[str, bytes]:
        return {r: bytes(b) for r, b in self._read("SELECT rule, blob FROM rule_state")}

    def save_rule_state(self, conn: Any, states: dict[str, bytes]) -> None:
        conn.executemany(
            "INSERT INTO rule_state (rule, blob) VALUES (?, ?) ON CONFLICT(rule) DO UPDATE SET blob = excluded.blob",
            list(states.items()),
        )

    # silences ----------------------------------------------------------------------------------------
    def add_silence(
        self, matchers: Sequence[str | Matcher], *, starts_at: int, ends_at: int, created_by: str, comment: str,
        now_us: int,
    ) -> Silence:
        """Create a silence; it always ends (``ends_at`` after ``starts_at``)."""
        parsed = tuple(m if isinstance(m, Matcher) else Matcher.parse(m) for m in matchers)
        if not parsed:
            raise ValueError("a silence needs at least one matcher, e.g. sensor_id=s-001")
        if ends_at <= starts_at:
            raise ValueError("a silence must end after it starts; give a positive duration or a later end time")
        s = Silence(uuid.uuid4().hex, parsed, starts_at, ends_at, created_by, comment, now_us)
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO silences VALUES (?, ?, ?, ?, ?, ?, ?)",
                (s.id, json.dumps([str(m) for m in parsed]), starts_at, ends_at, created_by, comment, now_us),
            )
        return s

    def silences(self) -> list[Silence]:
        rows = self._read(
            "SELECT id, matchers, starts_at, ends_at, created_by, comment, created_at FROM silences "
            "ORDER BY created_at, id"
        )
        return [
            Silence(r[0], tuple(Matcher.parse(m) for m in json.loads(r[1])), r[2], r[3], r[4], r[5], r[6])
            for r in rows
        ]

    def expire_silence(self, silence_id: str, *, now_us: int) -> bool:
        """End a silence now; ``False`` if no such silence (or it had already ended)."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE silences SET ends_at = ? WHERE id = ? AND ends_at > ?", (now_us, silence_id, now_us)
            )
            if cur.rowcount == 0:
                return False
            # a silence not yet started is expired by making it empty
            conn.execute("UPDATE silences SET starts_at = ends_at WHERE id = ? AND starts_at > ends_at", (silence_id,))
        return True

    def delete_silences_before(self, conn: Any, before_us: int) -> None:
        conn.execute("DELETE FROM silences WHERE ends_at < ?", (before_us,))

    # outbox / notification log ---------------------------------------------------------------------------
    def enqueue(self, conn: Any, entries: Sequence[tuple[str, str, str, dict[str, Any], int]]) -> None:
        """Add ``(group_key, receiver, status, payload, now)`` notifications to the outbox."""
        conn.executemany(
            "INSERT INTO notifications (group_key, receiver, status, payload, created_at, next_attempt) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(g, r, s, json.dumps(p), t, t) for g, r, s, p, t in entries],
        )

    def due(self, receiver: str, now_us: int, limit: int = 100) -> list[OutboxEntry]:
        rows = self._read(
            "SELECT * FROM notifications WHERE receiver = ? AND state = 'pending' AND next_attempt <= ? "
            "ORDER BY id LIMIT ?", (receiver, now_us, limit)
        )
        return [self._entry(r) for r in rows]

    def next_due(self, receiver: str) -> int | None:
        (row,) = self._read(
            "SELECT MIN(next_attempt) FROM notifications WHERE receiver = ? AND state = 'pending'", (receiver,)
        )
        return None if row is None or row[0] is None else int(row[0])

    def pending_count(self, receiver: str) -> int:
        (row,) = self._read(
            "SELECT COUNT(*) FROM notifications WHERE receiver = ? AND state = 'pending'", (receiver,)
        )
        return int(row[0])

    def drop_oldest_pending(self, receiver: str, keep: int) -> int:
        """Bound the outbox: mark all but the newest ``keep`` pending notifications of ``receiver`` dropped."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE notifications SET state = 'dropped', last_error = 'outbox full' WHERE id IN ("
                "SELECT id FROM notifications WHERE receiver = ? AND state = 'pending' ORDER BY id DESC "
                f"{self.dialect['no_limit']} OFFSET ?)", (receiver, keep)
            )
            return int(cur.rowcount)

    def mark(self, entry_id: int, *, state: str, attempts: int, next_attempt: int, delivered_at: int | None,
             error: str | None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE notifications SET state = ?, attempts = ?, next_attempt = ?, delivered_at = ?, last_error = ? "
                "WHERE id = ?", (state, attempts, next_attempt, delivered_at, error, entry_id)
            )

    def notification_counts(self) -> dict[str, int]:
        """Notifications in the log by state (``pending``, ``sent``, ``failed``, ``dropped``)."""
        return {str(st): int(n) for st, n in self._read("SELECT state, COUNT(*) FROM notifications GROUP BY state")}

    def notifications(self, *, limit: int = 1000) -> list[OutboxEntry]:
        """The notification log, oldest first."""
        rows = self._read("SELECT * FROM notifications ORDER BY id LIMIT ?", (limit,))
        return [self._entry(r) for r in rows]

    @staticmethod
    def _entry(r: Sequence[Any]) -> OutboxEntry:
        return OutboxEntry(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7], r[8], r[9], r[10])

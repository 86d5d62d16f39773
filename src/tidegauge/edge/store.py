"""The coordinator's state in SQLite, so an upstream restart keeps the registry and the assignment.

One file (WAL mode) holds the agents (last heartbeat, liveness, online spans for availability, the
generation and sensor set last announced to each), the sensor catalog with coordinates, and the holder of
each sensor (the one agent that may be processing it). Keeping the holders is what makes a restart safe:
a coordinator that forgot them could grant a sensor to a second agent while the first still runs it.

Writes are small and made as they happen (one transaction per heartbeat); ``synchronous=NORMAL`` in WAL
mode keeps each one durable against a process crash, which is what an upstream restart is.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tidegauge.edge.heartbeat import Heartbeat
from tidegauge.edge.strategies import SensorInfo

__all__ = ["AgentState", "CoordinatorStore"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    node_id TEXT PRIMARY KEY, heartbeat BLOB NOT NULL, first_seen_us INTEGER NOT NULL,
    last_seen_us INTEGER NOT NULL, online INTEGER NOT NULL, span_start_us INTEGER,
    generation INTEGER NOT NULL, announced BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS spans (node_id TEXT NOT NULL, start_us INTEGER NOT NULL, end_us INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS spans_node ON spans (node_id);
CREATE TABLE IF NOT EXISTS sensors (sensor_id TEXT PRIMARY KEY, latitude REAL, longitude REAL);
CREATE TABLE IF NOT EXISTS holders (sensor_id TEXT PRIMARY KEY, node_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass
class AgentState:
    """One agent as the coordinator knows it.

    ``spans`` are the closed intervals (start, end) in which the agent was online, within the availability
    window; ``span_start_us`` starts the open one while it is online. ``generation`` and ``announced`` are
    the last assignment sent to it.
    """

    node_id: str
    heartbeat: Heartbeat
    first_seen_us: int
    last_seen_us: int
    online: bool = True
    span_start_us: int | None = None
    spans: list[tuple[int, int]] = field(default_factory=list)
    generation: int = 0
    announced: frozenset[str] = frozenset()

    def availability(self, now_us: int, window_us: int) -> float:
        """Time online / time known, over the last ``window_us`` (1.0 for an agent seen just now)."""
        lo = max(self.first_seen_us, now_us - window_us)
        known = now_us - lo
        if known <= 0:
            return 1.0 if self.online else 0.0
        up = sum(max(0, min(e, now_us) - max(s, lo)) for s, e in self.spans)
        if self.online and self.span_start_us is not None:
            up += max(0, now_us - max(self.span_start_us, lo))
        return min(1.0, max(0.0, up / known))


class CoordinatorStore:
    """SQLite persistence of :class:`AgentState`, the sensor catalog and the sensor holders.

    ``path=":memory:"`` keeps nothing across restarts (tests, throwaway runs).
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # the server's handlers and the flow share it from one event loop; the lock guards other threads
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def load_agents(self) -> dict[str, AgentState]:
        with self._lock:
            rows = self._db.execute("SELECT node_id, heartbeat, first_seen_us, last_seen_us, online, span_start_us,"
                                    " generation, announced FROM agents").fetchall()
            spans: dict[str, list[tuple[int, int]]] = {}
            for node, s, e in self._db.execute("SELECT node_id, start_us, end_us FROM spans ORDER BY start_us"):
                spans.setdefault(node, []).append((s, e))
        out = {}
        for node, hb, first, last, online, start, gen, announced in rows:
            out[node] = AgentState(node, Heartbeat.decode(hb), first, last, bool(online), start, spans.get(node, []),
                                   gen, frozenset(msgspec.json.decode(announced, type=list[str])))
        return out

    def save_agents(self, agents: Iterable[AgentState]) -> None:
        """Write these agents' rows and spans (one transaction)."""
        rows = list(agents)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for a in rows:
                    self._db.execute(
                        "INSERT OR REPLACE INTO agents VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (a.node_id, a.heartbeat.encode(), a.first_seen_us, a.last_seen_us, int(a.online),
                         a.span_start_us, a.generation, msgspec.json.encode(sorted(a.announced))))
                    self._db.execute("DELETE FROM spans WHERE node_id = ?", (a.node_id,))
                    self._db.executemany("INSERT INTO spans VALUES (?, ?, ?)",
                                         [(a.node_id, s, e) for s, e in a.spans])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def load_sensors(self) -> list[SensorInfo]:
        with self._lock:
            rows = self._db.execute("SELECT sensor_id, latitude, longitude FROM sensors ORDER BY sensor_id").fetchall()
        return [SensorInfo(s, lat, lon) for s, lat, lon in rows]

    def save_sensors(self, sensors: Iterable[SensorInfo]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO sensors VALUES (?, ?, ?)",
                                 [(s.sensor_id, s.latitude, s.longitude) for s in sensors])
            self._db.execute("COMMIT")

    def load_holders(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT sensor_id, node_id FROM holders").fetchall())

    def save_holders(self, changed: dict[str, str | None]) -> None:
        """Set (node id) or clear (``None``) the holder of each sensor in ``changed``."""
        if not changed:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM holders WHERE sensor_id = ?",
                                 [(s,) for s, n in changed.items() if n is None])
            self._db.executemany("INSERT OR REPLACE INTO holders VALUES (?, ?)",
                                 [(s, n) for s, n in changed.items() if n is not None])
            self._db.execute("COMMIT")

    def load_counter(self, key: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def save_counter(self, key: str, value: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        with self._lock:
            self._db.close()

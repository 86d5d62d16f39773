"""The coordinator: registry, assignment of sensors to agents, failover and hand-back without double processing.

Every sensor has at most one *holder*: the one agent that may be processing it. The strategy
(:mod:`tidegauge.edge.strategies`) gives each sensor a *target* among the online agents; the handshake
moves a sensor from its holder to its target:

1. the holder's next :class:`~tidegauge.edge.heartbeat.Assignment` leaves the sensor out, under a new
   ``generation``;
2. the holder acknowledges by a heartbeat carrying that generation without the sensor in ``sensors``
   (it stopped processing it), or it times out (offline): either way the sensor is released;
3. only then is the sensor granted to its target, which learns it from its next Assignment.

So no sensor is ever assigned to two live agents at once, provided an agent obeys its assignment and stops
processing when it cannot reach the coordinator for ``lease_s`` (the heartbeat timeout: by then the
coordinator has released its sensors). A heartbeat reporting a sensor that another agent holds is counted
as a *conflict* (``conflicts``), which should stay 0.

For one ``settle`` period from the first heartbeat it receives (default: the heartbeat timeout) it grants nothing
and asks no agent to drop anything: it only learns, from the heartbeats, which agent runs what. By the end
of it every agent still running sensors under an earlier coordinator's assignment has either reported them
or let its lease lapse, so a coordinator that lost its state (or starts cold while agents run) never
grants a sensor that an agent it has not heard from yet is processing.

The target is recomputed when membership changes and when sensors are added, not on every heartbeat, so
load figures moving about do not churn the assignment. When agents only leave, the survivors keep their
sensors and only the leavers' are placed (:func:`~tidegauge.edge.strategies.reassign`); when one joins (or
returns), the full assignment is computed, which hands a returning agent its sensors back. State is
evaluated lazily: every heartbeat, query and poll of the heartbeat source first expires timed-out agents
(:meth:`Coordinator.tick`), so no background task is needed.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from tidegauge._time import Clock, Duration, parse_duration
from tidegauge.edge.heartbeat import Assignment, Heartbeat
from tidegauge.edge.policy import Detection, DetectionPolicy
from tidegauge.edge.registry import AgentRegistry
from tidegauge.edge.store import AgentState, CoordinatorStore
from tidegauge.edge.strategies import (
    DEFAULT_VNODES,
    STRATEGIES,
    AgentInfo,
    SensorInfo,
    StrategyName,
    assign,
    reassign,
)

__all__ = ["Coordinator"]

logger = logging.getLogger(__name__)

_STALL_US = 1_000_000
"""A gap this long between two polls of the heartbeat source (which polls every 50 ms or so) is a stall of
this process (a long batch holding the event loop, JIT compilation, a suspended VM), credited to the agents'
timeouts."""

_MAX_RECORDS = 100_000
"""Heartbeat records kept for the flow when it falls behind (oldest dropped first, counted)."""


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat().replace("+00:00", "Z")


class Coordinator:
    """Agents, sensors and who processes what.

    Parameters
    ----------
    strategy:
        One of :data:`~tidegauge.edge.strategies.STRATEGIES`.
    settle:
        How long from its first heartbeat the coordinator only learns (default: ``heartbeat_timeout``).
    heartbeat_timeout, availability_window:
        See :class:`~tidegauge.edge.registry.AgentRegistry`.
    sensors:
        The sensors to assign (more can be added with :meth:`add_sensors` or :meth:`observe`).
    store:
        SQLite file keeping the state across restarts (``None``: in memory).
    policy:
        The ``edge_or_cloud`` detection policy.
    clock:
        Processing-time clock.
    """

    def __init__(self, strategy: StrategyName = "consistent_hash", *, heartbeat_timeout: Duration = "15s",
                 availability_window: Duration = "1h", sensors: Iterable[SensorInfo] = (),
                 store: str | Path | None = None, policy: DetectionPolicy | None = None,
                 clock: Clock | None = None, vnodes: int = DEFAULT_VNODES, settle: Duration | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        self.strategy: StrategyName = strategy
        self.vnodes = vnodes
        self.policy = policy or DetectionPolicy()
        self.store = CoordinatorStore(store or ":memory:")
        self.registry = AgentRegistry(timeout=heartbeat_timeout, window=availability_window, clock=clock,
                                      store=self.store)
        self._lock = threading.RLock()
        self.settle_us = self.registry.timeout_us if settle is None else parse_duration(settle, name="settle")
        self.settle_until_us: int | None = None  # set by the first heartbeat
        self._settled = False
        self.catalog: dict[str, SensorInfo] = {s.sensor_id: s for s in self.store.load_sensors()}
        self.holder: dict[str, str] = self.store.load_holders()
        self.held: dict[str, set[str]] = {}
        for s, node in self.holder.items():
            self.held.setdefault(node, set()).add(s)
        self._free = set(self.catalog) - set(self.holder)
        self.target: dict[str, str] = {}
        self.targeted: dict[str, set[str]] = {}
        self._previous: dict[str, str] = {}
        self.reassignments = self.store.load_counter("reassignments")
        self.conflicts = self.store.load_counter("conflicts")
        self.records_dropped = 0
        self.stale_heartbeats = 0
        self._polled_us: int | None = None  # last poll of the heartbeat source
        self._known: pl.Series | None = None  # the catalog's ids, for observe()
        self._records: deque[dict[str, Any]] | None = None
        self._dirty = True
        self._full = True  # the next recompute is the full assignment (else: only orphans are placed)
        self._touched: set[str] = set()
        self._holder_changes: dict[str, str | None] = {}
        self.add_sensors(sensors)

    # inputs --------------------------------------------------------------------------------------------
    def add_sensors(self, sensors: Iterable[SensorInfo]) -> int:
        """Add sensors (or their coordinates, for ones known without); returns how many were new."""
        with self._lock:
            fresh = [s for s in sensors if s.sensor_id not in self.catalog or (
                s.latitude is not None and self.catalog[s.sensor_id].latitude is None)]
            new = sum(1 for s in fresh if s.sensor_id not in self.catalog)
            for s in fresh:
                if s.sensor_id not in self.catalog and s.sensor_id not in self.holder:
                    self._free.add(s.sensor_id)
                self.catalog[s.sensor_id] = s
            if fresh:
                self.store.save_sensors(fresh)
                self._dirty = self._full = True
                self._step()
            return new

    def observe(self, df: pl.DataFrame, *, key: str = "sensor_id") -> int:
        """Add the sensors seen in a batch of readings (with ``latitude``/``longitude`` when present)."""
        if key not in df.columns or not df.height:
            return 0
        cols = [c for c in (key, "latitude", "longitude") if c in df.columns]
        seen = df.select(cols).unique(key, keep="last")
        if self._known is None or self._known.len() != len(self.catalog):
            self._known = pl.Series(list(self.catalog), dtype=pl.String)  # rebuilt only when the fleet grows
        unknown = seen.filter(~pl.col(key).cast(pl.String).is_in(self._known.implode()))
        if not unknown.height:
            return 0
        return self.add_sensors(SensorInfo(str(r[key]), r.get("latitude"), r.get("longitude"))
                                for r in unknown.iter_rows(named=True))

    def heartbeat(self, hb: Heartbeat) -> Assignment:
        """Take an agent's heartbeat; returns its assignment."""
        with self._lock:
            if self.settle_until_us is None:
                self.settle_until_us = self.registry.now_us() + self.settle_us
            self._expire()
            known = self.registry.agents.get(hb.node_id)
            if known is not None and known.online and self._stale(known.heartbeat, hb):
                # overtaken by a newer heartbeat of the same agent (a retry after a client timeout): what it
                # reports is out of date, and acting on it could re-adopt sensors the agent already dropped
                self.stale_heartbeats += 1
                logger.info("agent %s: stale heartbeat (sent %.3fs before the last one) ignored", hb.node_id,
                            (known.heartbeat.sent_at_us - hb.sent_at_us) / 1e6)
                return self._assignment(known)
            a, came = self.registry.record(hb)
            self._touched.add(a.node_id)
            if came:
                self._dirty = self._full = True
            self._acknowledge(a, hb)
            self._step()
            self._emit(a, heartbeat=True)
            return self._assignment(a)

    def _stale(self, last: Heartbeat, hb: Heartbeat) -> bool:
        # Older than the last one by less than the timeout: overtaken in flight. Much older: the agent's
        # clock was set back, and its heartbeats must still count.
        return 0 < last.sent_at_us - hb.sent_at_us < self.registry.timeout_us

    def tick(self) -> None:
        """Expire timed-out agents and move their sensors (done by every other call too)."""
        with self._lock:
            gone = self._expire()
            settled = not self._settled and self.settle_until_us is not None and \
                self.registry.now_us() >= self.settle_until_us
            self._settled = self._settled or settled
            if gone or settled or self._dirty:
                self._step()

    # the handshake -------------------------------------------------------------------------------------
    def _expire(self) -> bool:
        if self._polled_us is not None:
            # the heartbeat source polls every few ms: a long gap means this process did not run
            gap = self.registry.now_us() - self._polled_us
            if gap > _STALL_US:
                self.registry.credit(gap)
                self._polled_us = self.registry.now_us()
        gone = self.registry.expire()
        for a in gone:
            for s in sorted(self.held.pop(a.node_id, set())):
                self._release(s, a.node_id)
            a.announced, a.generation = frozenset(), a.generation + 1
            self._touched.add(a.node_id)
            self._dirty = True
            self._emit(a, heartbeat=False)
        return bool(gone)

    def _release(self, sensor: str, node: str) -> None:
        self.holder.pop(sensor, None)
        self.held.get(node, set()).discard(sensor)
        self._previous[sensor] = node
        self._holder_changes[sensor] = None
        if sensor in self.catalog:
            self._free.add(sensor)

    def _hold(self, sensor: str, node: str) -> None:
        self.holder[sensor] = node
        self.held.setdefault(node, set()).add(sensor)
        self._free.discard(sensor)
        self._holder_changes[sensor] = node
        before = self._previous.pop(sensor, None)
        if before is not None and before != node:
            self.reassignments += 1

    def _acknowledge(self, a: AgentState, hb: Heartbeat) -> None:
        node = a.node_id
        if hb.generation > a.generation:
            # the agent acts on a generation this coordinator never issued (its state was lost): continue
            # above it, so the next assignment is newer than anything the agent has seen
            logger.warning("agent %s reports generation %d > %d known here", node, hb.generation, a.generation)
            a.generation = hb.generation
        reported = set(hb.sensors)
        unknown = [SensorInfo(s) for s in reported if s not in self.catalog]
        if unknown:
            self.catalog.update((s.sensor_id, s) for s in unknown)
            self.store.save_sensors(unknown)
            self._dirty = self._full = True
        for s in reported:
            h = self.holder.get(s)
            if h is None:
                self._hold(s, node)  # it is processing it, so it holds it; the strategy may move it later
            elif h != node:
                self.conflicts += 1
                logger.error("sensor %s reported by agent %s while agent %s holds it (conflict %d)", s, node, h,
                             self.conflicts)
        if hb.generation == a.generation:
            # it has seen its current assignment: what it no longer reports and was not given, it dropped
            for s in self.held.get(node, set()) - a.announced - reported:
                self._release(s, node)

    def _step(self) -> None:
        """Recompute targets if needed, grant released sensors to their targets, announce new sets, persist."""
        online = {a.node_id: a for a in self.registry.online()}
        if self._dirty:
            infos = [AgentInfo(a.node_id, a.heartbeat.capacity, a.heartbeat.location, a.heartbeat.load,
                               len(a.heartbeat.sensors), dict(a.heartbeat.labels)) for a in online.values()]
            sensors = list(self.catalog.values())
            if self._full:
                self.target = assign(self.strategy, sensors, infos, vnodes=self.vnodes)
            else:
                self.target = reassign(self.strategy, sensors, infos, self.target, vnodes=self.vnodes)
            self._full = False
            self.targeted = {}
            for s, node in self.target.items():
                self.targeted.setdefault(node, set()).add(s)
            self._dirty = False
        settling = self.settle_until_us is None or self.registry.now_us() < self.settle_until_us
        if not settling:
            for s in sorted(self._free):
                t = self.target.get(s)
                if t is not None and t in online:
                    self._hold(s, t)
        for node, a in online.items():
            held = self.held.get(node, set())
            want = frozenset(held if settling else held & self.targeted.get(node, set()))
            if want != a.announced:
                a.announced, a.generation = want, a.generation + 1
                self._touched.add(node)
        self._persist()

    def _persist(self) -> None:
        if self._touched:
            self.registry.save([self.registry.agents[n] for n in sorted(self._touched)])
            self._touched.clear()
        if self._holder_changes:
            self.store.save_holders(self._holder_changes)
            self._holder_changes = {}
            self.store.save_counter("reassignments", self.reassignments)
            self.store.save_counter("conflicts", self.conflicts)

    def _assignment(self, a: AgentState) -> Assignment:
        mode, _ = self.policy.decide(a.heartbeat, online=a.online)
        sensors = sorted(a.announced)
        return Assignment(node_id=a.node_id, generation=a.generation, sensors=sensors,
                          detection=dict.fromkeys(sensors, mode), lease_s=self.registry.timeout_us / 1e6)

    # views -----------------------------------------------------------------------------------------------
    def assignment(self, node_id: str) -> Assignment:
        """The current assignment of an agent (raises ``KeyError`` for an unknown one)."""
        with self._lock:
            self.tick()
            return self._assignment(self.registry.agents[node_id])

    def detection(self, sensor_id: str) -> Detection:
        """Where this sensor's detection runs now (``cloud`` for a sensor no agent is running)."""
        with self._lock:
            node = self.holder.get(sensor_id)
            a = None if node is None else self.registry.agents.get(node)
            if a is None or sensor_id not in a.announced or sensor_id not in a.heartbeat.sensors:
                return "cloud"
            return self.policy.decide(a.heartbeat, online=a.online)[0]

    def edge_sensors(self) -> set[str]:
        """The sensors whose detection runs on their agent (every other sensor is detected upstream)."""
        with self._lock:
            out: set[str] = set()
            for a in self.registry.online():
                if self.policy.decide(a.heartbeat, online=True)[0] == "edge":
                    out |= a.announced & set(a.heartbeat.sensors)
            return out

    def agents(self) -> list[dict[str, Any]]:
        """One JSON object per agent (the ``GET /api/v1/edge/agents`` answer)."""
        with self._lock:
            self.tick()
            now = self.registry.now_us()
            return [self._agent_row(a, now) for a in sorted(self.registry.agents.values(), key=lambda a: a.node_id)]

    def _agent_row(self, a: AgentState, now: int) -> dict[str, Any]:
        hb, r = a.heartbeat, a.heartbeat.resources
        detection, why = self.policy.decide(hb, online=a.online)
        return {
            "node_id": a.node_id, "status": "online" if a.online else "offline", "last_seen": iso(a.last_seen_us),
            "heartbeat_age_s": round((now - a.last_seen_us) / 1e6, 3),
            "availability": round(a.availability(now, self.registry.window_us), 6),
            "location": list(hb.location) if hb.location is not None else None, "capacity": hb.capacity,
            "labels": dict(hb.labels), "load": hb.load, "cpu_pct": r.cpu_pct, "memory_pct": r.memory_pct,
            "memory_rss_bytes": r.memory_rss_bytes, "disk_pct": r.disk_pct, "battery_pct": r.battery_pct,
            "outbox_depth": hb.outbox_depth, "outbox_bytes": hb.outbox_bytes, "outbox_age_s": hb.outbox_age_s,
            "link": hb.link, "version": hb.version, "sensors": len(a.announced),
            "sensors_reported": len(hb.sensors), "generation": a.generation,
            "generation_acked": hb.generation, "detection": detection, "detection_reason": why,
        }

    def assignments(self) -> list[dict[str, Any]]:
        """One JSON object per sensor: its agent, target, handover state and detection side."""
        with self._lock:
            self.tick()
            edge = self.edge_sensors()
            rows = []
            for s in sorted(self.catalog):
                node, target = self.holder.get(s), self.target.get(s)
                a = None if node is None else self.registry.agents.get(node)
                if a is None:
                    state = "unassigned"
                elif node != target or s not in a.announced:
                    state = "releasing"
                else:
                    state = "active" if s in a.heartbeat.sensors else "granted"
                rows.append({"sensor_id": s, "agent": node, "target": target, "state": state,
                             "detection": "edge" if s in edge else "cloud"})
            return rows

    # heartbeat records for the flow ----------------------------------------------------------------------
    def subscribe(self) -> None:
        """Start keeping heartbeat records for :meth:`drain_records` (the heartbeat source calls it)."""
        with self._lock:
            if self._records is None:
                self._records = deque(maxlen=_MAX_RECORDS)

    def _emit(self, a: AgentState, *, heartbeat: bool) -> None:
        if self._records is None:
            return
        if len(self._records) == self._records.maxlen:
            self.records_dropped += 1
        now = self.registry.now_us()
        r = a.heartbeat.resources
        live = heartbeat  # an offline record carries no machine figures: the agent reported none
        self._records.append({
            "node_id": a.node_id, "timestamp": now, "heartbeat": heartbeat,
            "status": "online" if a.online else "offline",
            "availability": a.availability(now, self.registry.window_us),
            "battery_pct": r.battery_pct if live else None, "cpu_pct": r.cpu_pct if live else None,
            "memory_pct": r.memory_pct if live else None, "disk_pct": r.disk_pct if live else None,
            "outbox_depth": a.heartbeat.outbox_depth if live else None,
            "outbox_age_s": a.heartbeat.outbox_age_s if live else None,
            "load": a.heartbeat.load if live else None, "link": a.heartbeat.link if live else None,
            "sensors": len(a.announced), "generation": a.generation,
        })

    def drain_records(self, max_rows: int) -> list[dict[str, Any]]:
        """Take up to ``max_rows`` heartbeat records (oldest first)."""
        with self._lock:
            self.tick()
            self._polled_us = self.registry.now_us()
            q = self._records
            if not q:
                return []
            return [q.popleft() for _ in range(min(max_rows, len(q)))]

    def unsubscribe(self) -> None:
        """The heartbeat source stopped: its polls no longer tell whether this process runs."""
        with self._lock:
            self._polled_us = None

    def close(self) -> None:
        with self._lock:
            self._persist()
            self.store.close()

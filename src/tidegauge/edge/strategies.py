"""Assignment strategies: which live agent should process each sensor.

A strategy is a pure function of the sensors and the live agents: ``assign(sensors, agents)`` returns the
*target* owner of every sensor it can place (a sensor left out stays unassigned: its detection runs in the
cloud). The :class:`~tidegauge.edge.coordinator.Coordinator` recomputes the target when the membership
changes (an agent comes online or goes offline) or sensors are added, and moves sensors to their target
through the generation handshake, so a strategy never has to think about double processing.

:func:`reassign` is the failover form: sensors whose agent is still there stay, and only the others (an
offline agent's) are placed by the strategy on the room left, so a leave moves nothing but the leaver's
sensors under every strategy. The coordinator uses it when agents leave and :func:`assign` when one joins
(the full assignment, which hands a returning agent back its sensors).

Every strategy respects each agent's ``capacity`` (a sensor goes to its next choice when its first is full)
and is deterministic (same input, same output; ties broken by node id).

=================  ======================================================================================
``round_robin``    sensors sorted by id dealt to the agents sorted by id, in turn
``least_loaded``   each sensor to the agent with the lowest projected load per unit of capacity, from the
                   heartbeats' ``load`` (readings/s): an agent busy with other work gets fewer sensors
``geo_proximity``  each sensor to the nearest agent (haversine distance to the agent's ``location``);
                   sensors without coordinates, or when no agent reports a location, by ``consistent_hash``
``consistent_hash`` a hash ring with ``vnodes`` points per agent: when an agent leaves only its sensors
                   move; when one joins only about ``1/n`` of the sensors move (to it). Full agents pass
                   sensors clockwise to the next agent with room (consistent hashing with bounded loads)
=================  ======================================================================================

>>> agents = [AgentInfo("a"), AgentInfo("b")]
>>> sorted(assign("round_robin", [SensorInfo("s1"), SensorInfo("s2"), SensorInfo("s3")], agents).items())
[('s1', 'a'), ('s2', 'b'), ('s3', 'a')]
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "STRATEGIES",
    "AgentInfo",
    "SensorInfo",
    "StrategyName",
    "assign",
    "haversine_km",
    "reassign",
]

logger = logging.getLogger(__name__)

StrategyName = Literal["round_robin", "least_loaded", "geo_proximity", "consistent_hash"]
STRATEGIES: tuple[StrategyName, ...] = ("round_robin", "least_loaded", "geo_proximity", "consistent_hash")

DEFAULT_VNODES = 160
"""Ring points per agent: 160 (ketama's figure) keeps the largest agent share within ~10% of the mean for a
handful of agents, and the ring stays small (160 * agents points)."""

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), the usual constant of the haversine formula."""


@dataclass(frozen=True)
class SensorInfo:
    """A sensor to place, with its coordinates when known (degrees)."""

    sensor_id: str
    latitude: float | None = None
    longitude: float | None = None


@dataclass(frozen=True)
class AgentInfo:
    """What a strategy knows of a live agent (from its last heartbeat)."""

    node_id: str
    capacity: int = 1000
    location: tuple[float, float] | None = None
    load: float = 0.0
    """readings/s processed over the last interval"""
    sensors: int = 0
    """how many sensors it processes now (to tell its own load from other work)"""
    labels: dict[str, str] = field(default_factory=dict)


Strategy = Callable[[Sequence[SensorInfo], Sequence[AgentInfo], int], dict[str, str]]


def assign(strategy: StrategyName, sensors: Sequence[SensorInfo], agents: Sequence[AgentInfo], *,
           vnodes: int = DEFAULT_VNODES) -> dict[str, str]:
    """The target agent (node id) of each sensor under ``strategy``; sensors that fit nowhere are left out."""
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    live = sorted((a for a in agents if a.capacity > 0), key=lambda a: a.node_id)
    if not live or not sensors:
        return {}
    return _STRATEGIES[strategy](sensors, live, vnodes)


def reassign(strategy: StrategyName, sensors: Sequence[SensorInfo], agents: Sequence[AgentInfo],
             previous: dict[str, str], *, vnodes: int = DEFAULT_VNODES) -> dict[str, str]:
    """Keep each sensor whose ``previous`` agent is among ``agents``; place the others by ``strategy``.

    >>> agents = [AgentInfo("a"), AgentInfo("b")]
    >>> reassign("round_robin", [SensorInfo("s1"), SensorInfo("s2")], agents, {"s1": "b", "s2": "gone"})
    {'s1': 'b', 's2': 'a'}
    """
    live = {a.node_id for a in agents}
    keep = {s.sensor_id: previous[s.sensor_id] for s in sensors if previous.get(s.sensor_id) in live}
    rest = [s for s in sensors if s.sensor_id not in keep]
    if not rest:
        return keep
    used: dict[str, int] = {}
    for node in keep.values():
        used[node] = used.get(node, 0) + 1
    # the room left; the load already includes the kept sensors, so none is counted as the agent's own
    room = [AgentInfo(a.node_id, a.capacity - used.get(a.node_id, 0), a.location, a.load, 0, a.labels)
            for a in agents]
    return {**keep, **assign(strategy, rest, room, vnodes=vnodes)}


def _round_robin(sensors: Sequence[SensorInfo], agents: Sequence[AgentInfo], vnodes: int) -> dict[str, str]:
    room = [a.capacity for a in agents]
    out: dict[str, str] = {}
    i, n = 0, len(agents)
    for s in sorted(sensors, key=lambda s: s.sensor_id):
        for _ in range(n):  # skip full agents; give up when every one is full
            if room[i]:
                break
            i = (i + 1) % n
        else:
            break
        out[s.sensor_id] = agents[i].node_id
        room[i] -= 1
        i = (i + 1) % n
    return out


def _least_loaded(sensors: Sequence[SensorInfo], agents: Sequence[AgentInfo], vnodes: int) -> dict[str, str]:
    # The fleet's readings/s per sensor, from agents that report both figures (1.0 before any load is
    # known: then the strategy balances sensor counts per capacity).
    busy = [a for a in agents if a.sensors > 0 and a.load > 0]
    rate = sum(a.load for a in busy) / sum(a.sensors for a in busy) if busy else 1.0
    # background = load not explained by the agent's own sensors (other pipelines, local traffic)
    heap = [(max(0.0, a.load - a.sensors * rate) / a.capacity, a.node_id, i, 0) for i, a in enumerate(agents)]
    heapq.heapify(heap)
    out: dict[str, str] = {}
    for s in sorted(sensors, key=lambda s: s.sensor_id):
        if not heap:
            break
        cost, node, i, n = heapq.heappop(heap)
        out[s.sensor_id] = node
        if n + 1 < agents[i].capacity:
            heapq.heappush(heap, (cost + rate / agents[i].capacity, node, i, n + 1))
    return out


def haversine_km(lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: npt.ArrayLike,
                 lon2: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Great-circle distance in km between points given in degrees (broadcasting).

    >>> round(float(haversine_km(51.5074, -0.1278, 48.8566, 2.3522)), 0)  # London - Paris
    344.0
    """
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2) - np.radians(lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))), dtype=np.float64)


def _geo_proximity(sensors: Sequence[SensorInfo], agents: Sequence[AgentInfo], vnodes: int) -> dict[str, str]:
    placed = [a for a in agents if a.location is not None]
    located = [s for s in sensors if s.latitude is not None and s.longitude is not None]
    rest = [s for s in sensors if s.latitude is None or s.longitude is None]
    if not placed:
        return _consistent_hash(sensors, agents, vnodes)
    lat = np.array([s.latitude for s in located], dtype=np.float64)
    lon = np.array([s.longitude for s in located], dtype=np.float64)
    alat = np.array([a.location[0] for a in placed if a.location is not None], dtype=np.float64)
    alon = np.array([a.location[1] for a in placed if a.location is not None], dtype=np.float64)
    dist = haversine_km(lat[:, None], lon[:, None], alat[None, :], alon[None, :])
    nearest = dist.argmin(axis=1) if located else np.zeros(0, dtype=np.int64)
    counts = np.bincount(nearest, minlength=len(placed))
    room = np.array([a.capacity for a in placed])
    out: dict[str, str] = {}
    if (counts <= room).all():
        ids = [a.node_id for a in placed]
        out = {s.sensor_id: ids[j] for s, j in zip(located, nearest.tolist(), strict=True)}
    else:
        # Capacity binds: the sensors closest to an agent keep it, the others take their next nearest.
        prefs = np.argsort(dist, axis=1, kind="stable")
        left = room.copy()
        for i in np.argsort(dist[np.arange(len(located)), nearest], kind="stable").tolist():
            for j in prefs[i].tolist():
                if left[j] > 0:
                    left[j] -= 1
                    out[located[i].sensor_id] = placed[j].node_id
                    break
    if rest:
        # Sensors without coordinates go round the ring, among agents that still have room.
        used: dict[str, int] = {}
        for node in out.values():
            used[node] = used.get(node, 0) + 1
        spare = [AgentInfo(a.node_id, a.capacity - used.get(a.node_id, 0), a.location, a.load, a.sensors)
                 for a in agents if a.capacity - used.get(a.node_id, 0) > 0]
        if spare:
            out.update(_consistent_hash(rest, spare, vnodes))
    return out


def _hash64(text: str) -> int:
    # blake2b: stable across processes and Python versions (unlike hash()), and fast for short keys
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


_SENSOR_HASHES: dict[str, int] = {}
_MAX_CACHED = 1_000_000  # a fleet's ids hashed once; the cache is bounded so a churn of ids cannot grow it


def _sensor_hash(sensor_id: str) -> int:
    h = _SENSOR_HASHES.get(sensor_id)
    if h is None:
        h = _hash64(sensor_id)
        if len(_SENSOR_HASHES) < _MAX_CACHED:
            _SENSOR_HASHES[sensor_id] = h
    return h


def _ring(agents: Sequence[AgentInfo], vnodes: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    points = np.array([_hash64(f"{a.node_id}#{v}") for a in agents for v in range(vnodes)], dtype=np.uint64)
    owners = np.repeat(np.arange(len(agents), dtype=np.int64), vnodes)
    order = np.argsort(points, kind="stable")
    return points[order], owners[order]


def _consistent_hash(sensors: Sequence[SensorInfo], agents: Sequence[AgentInfo], vnodes: int) -> dict[str, str]:
    if vnodes < 1:
        raise ValueError(f"vnodes={vnodes}: use at least 1 ring point per agent")
    points, owners = _ring(agents, vnodes)
    keys = np.array([_sensor_hash(s.sensor_id) for s in sensors], dtype=np.uint64)
    pos = np.searchsorted(points, keys, side="left") % len(points)
    first = owners[pos]
    room = np.array([a.capacity for a in agents])
    ids = [a.node_id for a in agents]
    if (np.bincount(first, minlength=len(agents)) <= room).all():
        return {s.sensor_id: ids[j] for s, j in zip(sensors, first.tolist(), strict=True)}
    # Bounded loads: place sensors in ring order; one whose agent is full walks clockwise to the next
    # agent with room. Deterministic, and still moves few sensors when membership changes.
    out: dict[str, str] = {}
    left = room.copy()
    n = len(points)
    for i in np.argsort(keys, kind="stable").tolist():
        p = int(pos[i])
        for step in range(n):
            j = int(owners[(p + step) % n])
            if left[j] > 0:
                left[j] -= 1
                out[sensors[i].sensor_id] = ids[j]
                break
        else:
            break
    return out


_STRATEGIES: dict[str, Strategy] = {
    "round_robin": _round_robin,
    "least_loaded": _least_loaded,
    "geo_proximity": _geo_proximity,
    "consistent_hash": _consistent_hash,
}

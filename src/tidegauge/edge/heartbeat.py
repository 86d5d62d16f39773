"""What an edge agent reports about itself, and what the coordinator answers.

An agent sends ``POST /api/v1/edge/heartbeat`` with a JSON :class:`Heartbeat` every ``interval``; the
coordinator answers with the agent's :class:`Assignment`. The field names are also the column names of
the heartbeat records the coordinator puts into the upstream flow, which the default alert rules use
(``node_id``, ``battery_pct``, ``availability``, ...).

Resource figures are real readings of the machine (psutil); ``battery_pct`` is ``None`` where the
hardware reports no battery.

>>> hb = Heartbeat(node_id="gw-1", sent_at_us=0, version="0.1.0", resources=Resources(cpu_pct=3.5))
>>> Heartbeat.decode(hb.encode()).node_id
'gw-1'
"""

from __future__ import annotations

import logging
from typing import Literal

import msgspec

__all__ = ["Assignment", "Heartbeat", "Resources", "probe_resources"]

logger = logging.getLogger(__name__)

LinkState = Literal["up", "down", "degraded"]


class Resources(msgspec.Struct, frozen=True, kw_only=True):
    """Machine figures at the time of the heartbeat (``None``: not reported by this hardware)."""

    cpu_pct: float = 0.0
    memory_pct: float = 0.0
    memory_rss_bytes: int = 0
    disk_pct: float = 0.0
    battery_pct: float | None = None


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """One agent's state, sent to the coordinator.

    Parameters
    ----------
    node_id:
        The agent's id (``tidegauge agent --id``).
    sent_at_us:
        When the agent sent it: UTC, microseconds since the epoch.
    version:
        The agent's tidegauge version.
    location:
        ``(latitude, longitude)`` of the gateway, for ``geo_proximity`` assignment.
    capacity:
        How many sensors the agent is willing to process.
    labels:
        Free labels (``site``, ``line``, ...), usable in assignment and alert rules.
    resources:
        Real machine figures (:func:`probe_resources`).
    load:
        Readings per second the agent processed over the last interval.
    outbox_depth, outbox_bytes, outbox_age_s:
        Records waiting in the durable outbox, their size, and the age of the oldest one.
    link:
        The uplink's state as the agent sees it.
    sensors:
        The sensors the agent is processing now.
    generation:
        The assignment generation the agent is acting on (0: none yet).
    """

    node_id: str
    sent_at_us: int
    version: str
    location: tuple[float, float] | None = None
    capacity: int = 1000
    labels: dict[str, str] = {}
    resources: Resources = Resources()
    load: float = 0.0
    outbox_depth: int = 0
    outbox_bytes: int = 0
    outbox_age_s: float = 0.0
    link: LinkState = "up"
    sensors: list[str] = []
    generation: int = 0

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> Heartbeat:
        """Parse and validate a heartbeat (raises :class:`msgspec.ValidationError` on a bad one)."""
        return msgspec.json.decode(data, type=cls)


class Assignment(msgspec.Struct, frozen=True, kw_only=True):
    """The coordinator's answer to a heartbeat.

    ``generation`` increases whenever the agent's sensor set changes; an agent starts processing a new
    set only once it has seen its generation, and the coordinator hands a sensor to a new owner only after
    the old owner acknowledged (by a heartbeat with that generation) that it dropped it, or after the old
    owner's heartbeat timeout: so no sensor is processed by two agents at once.
    ``detection`` maps a sensor to where its anomaly detection runs (``edge`` or ``cloud``).
    ``lease_s`` (the coordinator's heartbeat timeout; 0: none) is how long the assignment holds without a
    successful heartbeat: an agent that cannot reach the coordinator for that long (counted from sending
    the last heartbeat that got an answer) stops processing its sensors, because by then the coordinator
    has declared it offline and may have handed them to another agent.
    """

    node_id: str
    generation: int
    sensors: list[str] = []
    detection: dict[str, Literal["edge", "cloud"]] = {}
    lease_s: float = 0.0


def probe_resources(data_dir: str = ".") -> Resources:
    """The machine's CPU, memory, disk (of ``data_dir``) and battery figures, read with psutil."""
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError as exc:
        from tidegauge.errors import MissingDependencyError

        raise MissingDependencyError("psutil", "edge") from exc
    proc = psutil.Process()
    battery = None
    sensors_battery = getattr(psutil, "sensors_battery", None)
    if sensors_battery is not None:
        try:
            b = sensors_battery()
        except (OSError, RuntimeError):  # some platforms raise where no battery interface exists
            b = None
        battery = None if b is None else float(b.percent)
    return Resources(
        # interval=None: the figure since the last call, so a heartbeat loop gets the load between beats
        cpu_pct=float(psutil.cpu_percent(interval=None)),
        memory_pct=float(psutil.virtual_memory().percent),
        memory_rss_bytes=int(proc.memory_info().rss),
        disk_pct=float(psutil.disk_usage(data_dir).percent),
        battery_pct=battery,
    )

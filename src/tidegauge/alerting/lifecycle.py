"""The alert lifecycle: inactive -> pending -> firing -> resolved, with ``for``, ``keep_firing_for``,
acknowledgement and flap detection.

One :class:`Alert` exists per rule and label set (its fingerprint). The functions here are pure state
transitions on processing time (microseconds); the manager calls them and persists the result.

>>> p = LifecyclePolicy(for_us=60_000_000, keep_firing_for_us=0, flap_window_us=600_000_000, flap_threshold=3)
>>> a = new_alert("f1", "hot", {"alertname": "hot"}, "warning", now_us=0)
>>> observe(a, p, seen=True, active=True, now_us=0, values={})
[]
>>> advance(a, p, now_us=60_000_000)
['firing']
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "Alert",
    "AlertState",
    "LifecyclePolicy",
    "RemoteTransition",
    "advance",
    "fingerprint",
    "iso",
    "new_alert",
    "observe",
]

logger = logging.getLogger(__name__)

AlertState = Literal["pending", "firing", "resolved"]


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable 16-hex-digit id of a label set (same labels -> same alert, across restarts and versions)."""
    canon = "\x1f".join(f"{k}\x1e{labels[k]}" for k in sorted(labels))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def iso(us: int | None) -> str:
    """RFC 3339 UTC time of ``us`` (Alertmanager's zero time for ``None``)."""
    if us is None:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LifecyclePolicy:
    """Timing of one rule's alerts (microseconds)."""

    for_us: int
    keep_firing_for_us: int
    flap_window_us: int
    flap_threshold: int


@dataclass
class Alert:
    """One alert. ``active`` is whether the rule's condition currently holds for it."""

    fingerprint: str
    rule: str
    labels: dict[str, str]
    severity: str
    state: AlertState = "pending"
    annotations: dict[str, str] = field(default_factory=dict)
    active: bool = False
    active_since: int = 0
    fired_at: int | None = None
    last_active: int = 0
    resolved_at: int | None = None
    fire_times: list[int] = field(default_factory=list)
    flapping: bool = False
    ack_by: str | None = None
    ack_at: int | None = None
    ack_comment: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    updated_at: int = 0
    remote: bool = False
    """raised elsewhere (an edge agent's rules, :meth:`AlertManager.receive`): its state changes only by the
    transitions received, never by this manager's rules or clock"""

    @property
    def acknowledged(self) -> bool:
        return self.ack_by is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view (API and CLI)."""
        return {
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "state": self.state,
            "severity": self.severity,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "active_since": iso(self.active_since),
            "fired_at": iso(self.fired_at) if self.fired_at is not None else None,
            "resolved_at": iso(self.resolved_at) if self.resolved_at is not None else None,
            "flapping": self.flapping,
            "acknowledged": self.acknowledged,
            "ack": {"by": self.ack_by, "at": iso(self.ack_at), "comment": self.ack_comment} if self.ack_by else None,
        }


@dataclass(frozen=True)
class RemoteTransition:
    """An alert transition raised elsewhere (an edge agent's rules), for :meth:`AlertManager.receive`.

    ``at`` is when it happened there (microseconds, UTC); ``notify`` whether it should be notified here
    (``False``: recorded in the alert state only, e.g. an alert that fired and resolved while its agent was
    offline).
    """

    rule: str
    severity: str
    state: str
    labels: Mapping[str, str]
    at_us: int
    notify: bool


def new_alert(fp: str, rule: str, labels: dict[str, str], severity: str, *, now_us: int) -> Alert:
    """A fresh pending alert (not yet observed)."""
    return Alert(fp, rule, labels, severity, active_since=now_us, last_active=now_us, updated_at=now_us)


def observe(
    alert: Alert, policy: LifecyclePolicy, *, seen: bool, active: bool, now_us: int, values: dict[str, Any]
) -> list[str]:
    """Apply one evaluation of the rule to ``alert``; return the states it entered, in order.

    ``seen``: the condition held at some point in this evaluation; ``active``: it holds at its end
    (event-like rules, such as patterns, are seen but not active and rely on ``keep_firing_for``).
    """
    entered: list[str] = []
    if alert.state == "resolved":
        if not seen:
            return entered
        # a new episode of the same alert: start pending again, forget the previous acknowledgement
        alert.state = "pending"
        alert.active_since = now_us
        alert.fired_at = None
        alert.resolved_at = None
        alert.ack_by = alert.ack_at = alert.ack_comment = None
        entered.append("pending")
    if seen:
        alert.last_active = now_us
        alert.values = values
    alert.active = active
    alert.updated_at = now_us
    entered.extend(advance(alert, policy, now_us=now_us, seen_now=seen))
    return entered


def advance(alert: Alert, policy: LifecyclePolicy, *, now_us: int, seen_now: bool = False) -> list[str]:
    """Time-driven transitions (``for`` elapsed, ``keep_firing_for`` over); returns the states entered.

    A pending alert whose condition no longer holds becomes inactive: the caller drops it (``"inactive"``).
    """
    entered: list[str] = []
    if alert.state == "pending":
        if alert.active or seen_now:
            if now_us - alert.active_since >= policy.for_us:
                alert.state = "firing"
                alert.fired_at = now_us
                alert.fire_times = [t for t in alert.fire_times if now_us - t < policy.flap_window_us] + [now_us]
                if len(alert.fire_times) >= policy.flap_threshold and not alert.flapping:
                    alert.flapping = True
                    logger.info("alert %s (%s) is flapping", alert.fingerprint, alert.rule)
                entered.append("firing")
        else:
            entered.append("inactive")
            return entered
    if alert.state == "firing" and not alert.active:
        hold = policy.keep_firing_for_us
        if alert.flapping:
            hold = max(hold, policy.flap_window_us)
        if now_us - alert.last_active >= hold:
            alert.state = "resolved"
            alert.resolved_at = now_us
            alert.flapping = False
            entered.append("resolved")
    if entered:
        alert.updated_at = now_us
    return entered

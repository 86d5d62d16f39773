"""Aggregation groups and their flushes (Alertmanager's ``group_wait`` / ``group_interval`` / ``repeat_interval``).

A group collects the alerts of one route with equal ``group_by`` label values. It is first flushed
``group_wait`` after it is created, then every ``group_interval``. A flush notifies when the set of firing
(unmuted) alerts changed since the last notification, or an alert it had notified resolved (and the receiver
wants resolutions), or ``repeat_interval`` passed since the last notification with unacknowledged alerts
still firing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tidegauge.alerting.lifecycle import Alert
from tidegauge.alerting.notifiers import build_payload
from tidegauge.alerting.routing import Route
from tidegauge.alerting.store import GroupState

__all__ = ["FlushResult", "flush_group", "group_key", "new_group"]

logger = logging.getLogger(__name__)


def group_key(route: Route, labels: Mapping[str, str]) -> str:
    """Alertmanager-style group key: ``<route path>:{label="value",...}``."""
    inner = ",".join(f'{k}="{labels[k]}"' for k in sorted(labels))
    return f"{route.path}:{{{inner}}}"


def new_group(route: Route, labels: Mapping[str, str], now_us: int) -> GroupState:
    return GroupState(
        key=group_key(route, labels), route=route.path, receiver=route.receiver, labels=dict(labels), alerts=[],
        next_flush=now_us + route.group_wait_us,
    )


@dataclass
class FlushResult:
    payload: dict[str, Any] | None
    remove_group: bool


def _order(a: Alert) -> tuple[int, tuple[tuple[str, str], ...]]:
    return (0 if a.state == "firing" else 1, tuple(sorted(a.labels.items())))


def flush_group(
    g: GroupState,
    route: Route,
    alerts: Mapping[str, Alert],
    muted: Mapping[str, str],
    *,
    send_resolved: bool,
    external_url: str,
    now_us: int,
) -> FlushResult:
    """Decide what group ``g`` notifies at ``now_us`` and update its state in place."""
    members = [alerts[fp] for fp in g.alerts if fp in alerts]
    firing = [a for a in members if a.state == "firing" and a.fingerprint not in muted]
    prev = set(g.notified_firing or [])
    resolved_new = [a for a in members if a.state == "resolved" and a.fingerprint in prev]
    firing_fps = {a.fingerprint for a in firing}
    changed = firing_fps != prev
    repeat = bool(
        firing and g.last_notify is not None and now_us - g.last_notify >= route.repeat_interval_us
        and any(not a.acknowledged for a in firing)
    )
    payload = None
    if changed or repeat:
        shown = firing + (resolved_new if send_resolved else [])
        if firing or shown:
            payload = build_payload(receiver=g.receiver, group_key=g.key, group_labels=g.labels,
                                    alerts=sorted(shown, key=_order), external_url=external_url)
            g.last_notify = now_us
        g.notified_firing = sorted(firing_fps)
    # resolved alerts leave the group once the flush has seen them
    g.alerts = [fp for fp in g.alerts if fp in alerts and alerts[fp].state != "resolved"]
    g.next_flush = now_us + route.group_interval_us
    return FlushResult(payload, remove_group=not g.alerts)

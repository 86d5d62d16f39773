"""Notifiers (receivers) and the Alertmanager-compatible payload.

A notifier has a ``name``, ``send_resolved`` and ``send(payload)``, which raises on failure (the dispatcher
retries with backoff). The payload is Alertmanager's webhook format (version 4), with ``groupKey`` and each
alert's ``fingerprint``, so existing Alertmanager consumers work unchanged.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from tidegauge._time import parse_duration
from tidegauge.alerting.config import ReceiverConfig
from tidegauge.alerting.lifecycle import Alert, iso
from tidegauge.errors import ConnectorError

__all__ = ["LogNotifier", "Notifier", "WebhookNotifier", "build_notifier", "build_payload"]

logger = logging.getLogger(__name__)


@runtime_checkable
class Notifier(Protocol):
    """Delivers one notification payload; raises on failure."""

    name: str
    send_resolved: bool

    def send(self, payload: Mapping[str, Any]) -> None: ...


def _common(dicts: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dict(dicts[0])
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def build_payload(
    *, receiver: str, group_key: str, group_labels: Mapping[str, str], alerts: Sequence[Alert], external_url: str
) -> dict[str, Any]:
    """The Alertmanager webhook payload (``version: "4"``) for one group notification."""
    items: list[dict[str, Any]] = []
    for a in alerts:
        firing = a.state != "resolved"
        annotations = dict(a.annotations)
        if a.flapping:
            annotations["flapping"] = "true"
        items.append({
            "status": "firing" if firing else "resolved",
            "labels": dict(a.labels),
            "annotations": annotations,
            "startsAt": iso(a.fired_at if a.fired_at is not None else a.active_since),
            "endsAt": iso(None if firing else a.resolved_at),
            "generatorURL": f"{external_url}/alerts?rule={a.rule}",
            "fingerprint": a.fingerprint,
        })
    status = "firing" if any(i["status"] == "firing" for i in items) else "resolved"
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": dict(group_labels),
        "commonLabels": _common([i["labels"] for i in items]),
        "commonAnnotations": _common([i["annotations"] for i in items]),
        "externalURL": external_url,
        "alerts": items,
    }


def summary(payload: Mapping[str, Any]) -> str:
    """One line describing a notification (log receiver, email subject)."""
    alerts = payload.get("alerts", [])
    firing = sum(1 for a in alerts if a["status"] == "firing")
    labels = ", ".join(f"{k}={v}" for k, v in payload.get("groupLabels", {}).items())
    return f"[{payload.get('status', '?').upper()}:{firing}/{len(alerts)}] {labels}"


class WebhookNotifier:
    """POSTs the payload as JSON to ``url`` (a non-2xx answer or a network error is a failure)."""

    def __init__(self, name: str, url: str, *, send_resolved: bool = True, timeout: float = 5.0) -> None:
        self.name = name
        self.url = url
        self.send_resolved = send_resolved
        self.timeout = timeout

    def send(self, payload: Mapping[str, Any]) -> None:
        body = json.dumps(payload).encode()
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "tidegauge"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectorError(f"webhook {self.name} ({self.url}): {exc}") from exc


class LogNotifier:
    """Writes each notification to the ``tidegauge.alerting.notifiers`` logger (and keeps the last ones)."""

    def __init__(self, name: str = "log", *, send_resolved: bool = True, keep: int = 100) -> None:
        self.name = name
        self.send_resolved = send_resolved
        self.keep = keep
        self.sent: list[dict[str, Any]] = []

    def send(self, payload: Mapping[str, Any]) -> None:
        logger.warning("alert notification %s %s", summary(payload), payload.get("groupKey"))
        self.sent = [*self.sent[-(self.keep - 1):], dict(payload)] if self.keep > 0 else []


def build_notifier(cfg: ReceiverConfig) -> Notifier:
    """The notifier described by a receiver config (optional clients are imported only here)."""
    timeout = parse_duration(cfg.timeout) / 1_000_000
    if cfg.kind == "webhook":
        return WebhookNotifier(cfg.name, cfg.url or "", send_resolved=cfg.send_resolved, timeout=timeout)
    if cfg.kind == "log":
        return LogNotifier(cfg.name, send_resolved=cfg.send_resolved)
    if cfg.kind == "email":
        from tidegauge.alerting.smtp import EmailNotifier

        return EmailNotifier(cfg.name, host=cfg.smtp_host, port=cfg.smtp_port, sender=cfg.sender, to=cfg.to,
                             starttls=cfg.starttls, send_resolved=cfg.send_resolved, timeout=timeout)
    if cfg.kind == "mqtt":
        from tidegauge.alerting.mqtt import MqttNotifier

        return MqttNotifier(cfg.name, host=cfg.host, port=cfg.port, topic=cfg.topic, qos=cfg.qos,
                            send_resolved=cfg.send_resolved, timeout=timeout)
    from tidegauge.alerting.nats import NatsNotifier

    return NatsNotifier(cfg.name, url=cfg.url or "", subject=cfg.subject, send_resolved=cfg.send_resolved,
                        timeout=timeout)

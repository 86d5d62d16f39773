"""Alerting: rules over readings, windows and detector output, turned into alerts with a lifecycle, grouped,
muted (inhibition, silences), routed and delivered, with all state persisted so restarts neither re-page nor
forget.

The contract: a :class:`AlertManager` is driven by a clock through ``evaluate(df, now)`` (after each batch)
and ``tick(now)`` (time passing), both returning the alert transitions as rows
(``at, fingerprint, rule, severity, state, labels``). :class:`AlertStep` runs it inside a flow;
:func:`watch` puts one shared manager on several streams, :func:`watch_health` adds the flow's own health
records (:class:`RunnerHealthSource`), :func:`default_alerting` is the demo's ready-made manager, and a
pipeline file's ``alerts:`` section (:mod:`.pipeline_section`) does all of it from YAML.
Notifications are Alertmanager webhook payloads (version 4).
"""

from __future__ import annotations

from tidegauge.alerting.config import (
    AlertingConfig,
    FlapConfig,
    InhibitRuleConfig,
    ReceiverConfig,
    RouteConfig,
    RuleConfig,
    default_config,
    load_config,
    parse_config,
)
from tidegauge.alerting.dispatch import DeliveryPolicy, Dispatcher
from tidegauge.alerting.health import RunnerHealthSource
from tidegauge.alerting.lifecycle import Alert, fingerprint
from tidegauge.alerting.manager import AlertManager
from tidegauge.alerting.notifiers import LogNotifier, Notifier, WebhookNotifier, build_payload
from tidegauge.alerting.routing import Matcher, Silence
from tidegauge.alerting.step import AlertStep
from tidegauge.alerting.store import AlertStore, open_store
from tidegauge.alerting.wiring import default_alerting, watch, watch_health

__all__ = [
    "Alert",
    "AlertManager",
    "AlertStep",
    "AlertStore",
    "AlertingConfig",
    "DeliveryPolicy",
    "Dispatcher",
    "FlapConfig",
    "InhibitRuleConfig",
    "LogNotifier",
    "Matcher",
    "Notifier",
    "ReceiverConfig",
    "RouteConfig",
    "RuleConfig",
    "RunnerHealthSource",
    "Silence",
    "WebhookNotifier",
    "build_payload",
    "default_alerting",
    "default_config",
    "fingerprint",
    "load_config",
    "open_store",
    "parse_config",
    "watch",
    "watch_health",
]

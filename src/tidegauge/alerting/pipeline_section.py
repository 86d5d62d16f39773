"""The ``alerts:`` section of a pipeline file: which rules, where their state lives, which streams they watch.

.. code-block:: yaml

    alerts:
      rules: rules.yaml              # relative to the pipeline file; `default` for the demo's fleet rules
      store: alerts.db               # SQLite file (relative to the pipeline file) or a postgresql:// URL
      streams: [readings, windows]   # any of readings, windows, health (the default: readings + windows)
      health_interval: 1s            # with `health`: one record of the flow's own figures per interval

``readings`` are the records as they enter the first window step (after every step before it, such as
``detect``), or at the end of the steps when there is no window step; ``windows`` are the results of every
window step; ``health`` are :class:`~tidegauge.alerting.health.RunnerHealthSource` records
(``processing_latency_ms``, ``readings_per_s``, ...). One :class:`~tidegauge.alerting.AlertManager` serves
them all, and the HTTP server's alert API when the file has a ``server:`` section.

The section and the rules file are validated when the pipeline file is loaded; errors name the pipeline
file, the path inside it (``$.alerts.rules``) and, for a bad rules file, the rules file and its own path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from tidegauge._time import parse_duration
from tidegauge.alerting.config import AlertingConfig, default_config, load_config
from tidegauge.alerting.health import RunnerHealthSource
from tidegauge.alerting.manager import AlertManager
from tidegauge.alerting.wiring import watch, watch_health
from tidegauge.dataflow.flow import Flow, Stream
from tidegauge.errors import ConfigError

__all__ = ["AlertsSection", "PipelineAlerting", "alerts_section", "build_alerts"]

logger = logging.getLogger(__name__)

StreamName = Literal["readings", "windows", "health"]


class AlertsSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``alerts:`` mapping of a pipeline file."""

    rules: str
    store: str = "alerts.db"
    streams: list[StreamName] | None = None
    health_interval: str = "1s"


_FIXES = {
    "rules": "name a rules file relative to the pipeline file (e.g. rules.yaml) or write `default`",
    "store": "give a SQLite file (e.g. alerts.db) or a postgresql:// URL",
    "streams": "list any of readings, windows, health (e.g. streams: [readings, windows])",
    "health_interval": "give a duration such as '1s'",
}


def _is_url(store: str) -> bool:
    return store.startswith(("postgresql://", "postgres://"))


def alerts_section(raw: Any, *, base_dir: str | Path = ".") -> tuple[AlertsSection, AlertingConfig]:
    """Validate ``raw`` (the section as read from YAML) and load its rules file.

    Raises :class:`ConfigError` starting with ``at $.alerts...`` (the caller prefixes the pipeline file).
    """
    if not isinstance(raw, dict):
        raise ConfigError("at $.alerts: expected a mapping such as {rules: rules.yaml, store: alerts.db}")
    try:
        section = msgspec.convert(raw, AlertsSection)
    except msgspec.ValidationError as exc:
        problem, _, at = str(exc).partition(" - at `")
        where = "$.alerts" + at.rstrip("`").removeprefix("$")
        field = where.removeprefix("$.alerts.").split("[")[0].split(".")[0]
        fix = _FIXES.get(field, f"valid keys here: {', '.join(AlertsSection.__struct_fields__)}")
        raise ConfigError(f"at {where}: {problem}; {fix}") from None
    if not section.rules.strip():
        raise ConfigError("at $.alerts.rules: empty; name a rules file (e.g. rules.yaml) or write `default`")
    try:
        interval = parse_duration(section.health_interval, name="health_interval")
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"at $.alerts.health_interval: {exc}; give a duration such as '1s'") from None
    if interval <= 0:
        raise ConfigError("at $.alerts.health_interval: must be positive; give a duration such as '1s'")
    if section.streams is not None and not section.streams:
        raise ConfigError("at $.alerts.streams: empty; list readings, windows and/or health (or leave it out)")
    if section.rules == "default":
        return section, default_config()
    path = Path(base_dir) / section.rules
    try:
        return section, load_config(path)
    except ConfigError as exc:
        raise ConfigError(f"at $.alerts.rules: {exc}") from None


@dataclass
class PipelineAlerting:
    """What :func:`build_alerts` added to a flow; the CLI attaches it to the runner and closes it."""

    manager: AlertManager
    health: RunnerHealthSource | None
    _closed_summary: str | None = None

    def attach(self, runner: Any) -> None:
        """Bind the health source (if any) to the runner that runs the flow."""
        if self.health is not None:
            self.health.attach(runner)

    def summary(self) -> str:
        """One line: alerts by state and notifications sent / failed / waiting (as of :meth:`close` once closed)."""
        if self._closed_summary is not None:
            return self._closed_summary
        m = self.manager.metrics()
        states = ", ".join(f"{n} {s}" for s, n in m["alerts"].items())
        c = self.manager.store.notification_counts()
        return (f"alerts: {states}; notifications: {c.get('sent', 0)} sent, {c.get('failed', 0)} failed, "
                f"{c.get('pending', 0)} waiting for retry")

    def close(self, *, flush: bool = False) -> None:
        """Stop delivery (after one last attempt at what is due); ``flush``: first notify the groups still
        waiting out ``group_wait`` (a finite run's end)."""
        if flush:
            self.manager.flush_now()
        self.manager.close_delivery()
        self._closed_summary = self.summary()
        self.manager.close()


def build_alerts(raw: Any, flow: Flow, *, readings: Stream, windows: list[Stream], base_dir: str | Path = ".",
                 where: str = "$.alerts") -> PipelineAlerting:
    """Add the section's alert steps (and health source) to ``flow``; the store is opened here."""
    base = Path(base_dir)
    section, config = alerts_section(raw, base_dir=base)
    streams = section.streams if section.streams is not None else ["readings", *(["windows"] if windows else [])]
    if "windows" in streams and not windows:
        raise ConfigError(f"at {where}.streams: lists `windows` but the pipeline has no window step; "
                          "remove it or add a window step")
    store = section.store if _is_url(section.store) else str(base / section.store)
    manager = AlertManager(config, store=store, delivery="background", key_column=flow.key, time_column=flow.time)
    try:
        taps: list[Stream] = []
        if "readings" in streams:
            taps.append(readings)
        if "windows" in streams:
            taps += windows
        watch(manager, *taps)
        health = watch_health(manager, flow, interval=section.health_interval) if "health" in streams else None
    except BaseException:
        manager.close()
        raise
    logger.info("alerting: %d rules on %s, state in %s", len(config.rules), ", ".join(streams), manager.store.path)
    return PipelineAlerting(manager, health)

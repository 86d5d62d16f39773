"""Putting alerting into a flow: one shared :class:`AlertManager` watching several streams, the flow's own
health records, and the demo's ready-made alerting.

>>> from tidegauge.dataflow import Flow
>>> from tidegauge.testing import MemorySource
>>> import polars as pl, tempfile
>>> manager = default_alerting(tempfile.mkdtemp(), delivery="none")
>>> flow = Flow("demo")
>>> readings = flow.source(MemorySource(pl.DataFrame({"sensor_id": ["a"], "timestamp": [0],
...                                                   "temperature": [20.0]})))
>>> _ = watch(manager, readings)
>>> health = watch_health(manager, flow)
>>> runner = flow.runner()
>>> health.attach(runner)
>>> manager.close()
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from tidegauge._time import Clock, Duration
from tidegauge.alerting.config import AlertingConfig, default_config
from tidegauge.alerting.health import RunnerHealthSource
from tidegauge.alerting.manager import AlertManager
from tidegauge.alerting.notifiers import Notifier
from tidegauge.alerting.step import AlertStep
from tidegauge.dataflow.flow import Flow, Stream

__all__ = ["default_alerting", "watch", "watch_health"]

logger = logging.getLogger(__name__)


def default_alerting(
    data_dir: str | Path,
    *,
    config: AlertingConfig | None = None,
    notifiers: Mapping[str, Notifier] | None = None,
    clock: Clock | None = None,
    delivery: Literal["inline", "background", "none"] = "background",
    key_column: str = "sensor_id",
    time_column: str = "timestamp",
) -> AlertManager:
    """The demo's alerting: the fleet health rules of ``default_rules.yaml``, notified to the log, with the
    alert state in ``<data_dir>/alerts.db`` (SQLite; restored on the next start).

    The rules cover a high anomaly rate (``is_anomaly`` over 15% of readings over 5 minutes), a critical
    anomaly (flagged with ``score > 0.9``), a sensor reporting ``operational_status = 'alert'``, a silent sensor, the
    flow's processing latency (health records: :func:`watch_health`) and edge nodes (heartbeat records with
    ``node_id``, ``heartbeat``, ``availability``, ``battery_pct``). A rule whose columns a stream lacks stays
    dormant on that stream. Pass ``config`` to use other rules with the same store, ``notifiers`` to
    replace receivers by name (e.g. ``{"log": my_notifier}``). Close the manager when the flow ends.
    """
    store = Path(data_dir) / "alerts.db"
    return AlertManager(config or default_config(), store=store, clock=clock, notifiers=notifiers,
                        delivery=delivery, key_column=key_column, time_column=time_column)


def watch(manager: AlertManager, *streams: Stream, name: str = "alerts") -> list[Stream]:
    """Evaluate ``manager``'s rules on every record of each stream (one :class:`AlertStep` each, all sharing
    ``manager``); returns the streams of alert transitions (``at, fingerprint, rule, severity, state, labels``).

    Steps are named ``<name>``, ``<name>_1``, ...
    """
    out: list[Stream] = []
    for s in streams:
        step_name = _free_name(s.flow, name)
        out.append(s.then(AlertStep(manager.config, manager=manager), name=step_name))
    return out


def watch_health(manager: AlertManager, flow: Flow, *, interval: Duration = "1s",
                 name: str = "health") -> RunnerHealthSource:
    """Add a :class:`RunnerHealthSource` to ``flow`` and evaluate ``manager``'s rules on its records.

    Returns the source: call ``health.attach(runner)`` once the runner exists.
    """
    health = RunnerHealthSource(interval=interval, key_column="flow", time_column=flow.time,
                                name=_free_name(flow, name))
    watch(manager, flow.source(health, key="flow", time=flow.time), name=f"alerts_{health.name}")
    return health


def _free_name(flow: Flow, base: str) -> str:
    n, candidate = 1, base
    while candidate in flow.nodes:
        candidate = f"{base}_{n}"
        n += 1
    return candidate

"""``AlertStep``: the alert manager as a dataflow step.

``process`` evaluates the rules on each batch and emits the alert transitions as rows; ``on_watermark`` (after
every batch and on timer ticks) drives the time-based transitions and notifications on the flow's processing
time. Alert state lives in the alert store (SQLite), committed at every evaluation, so the step's checkpoint
snapshot only records the store it used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import msgspec
import polars as pl

from tidegauge.alerting.config import AlertingConfig
from tidegauge.alerting.manager import AlertManager
from tidegauge.alerting.notifiers import Notifier
from tidegauge.dataflow.base import KEY_ID, WM, StepContext

__all__ = ["AlertStep", "AlertStepSnapshot"]

logger = logging.getLogger(__name__)


class AlertStepSnapshot(msgspec.Struct, frozen=True, tag="alert-step/1"):
    store: str


class AlertStep:
    """Step definition evaluating ``config`` on every batch (state in the SQLite file ``store``).

    Delivery runs in background threads by default so a slow receiver never blocks the dataflow.
    ``manager`` shares an existing :class:`AlertManager` (e.g. the one the HTTP server's alert API serves)
    instead of building one: acknowledgements and silences made through it are seen by the flow at once.
    ``store`` may be a SQLite path or a ``postgresql://`` URL.
    """

    snapshot_type = AlertStepSnapshot

    def __init__(
        self,
        config: AlertingConfig,
        *,
        store: str | Path = "alerts.db",
        notifiers: dict[str, Notifier] | None = None,
        delivery: Literal["inline", "background", "none"] = "background",
        manager: AlertManager | None = None,
    ) -> None:
        if manager is not None and manager.config is not config:
            raise ValueError("AlertStep(config, manager=m): pass m.config as the config of a shared manager")
        self.config = config
        self.manager = manager
        self.store = manager.store.path if manager is not None else str(store)
        self.notifiers = notifiers
        self.delivery = delivery

    def build(self, resume_state: AlertStepSnapshot | None) -> _AlertLogic:
        return _AlertLogic(self)


class _AlertLogic:
    def __init__(self, d: AlertStep) -> None:
        self.d = d
        self.manager: AlertManager | None = None

    def _manager(self, ctx: StepContext) -> AlertManager:
        if self.manager is None and self.d.manager is not None:
            self.manager = self.d.manager
        elif self.manager is None:
            self.manager = AlertManager(self.d.config, store=self.d.store, notifiers=self.d.notifiers,
                                        delivery=self.d.delivery, key_column=ctx.key_column,
                                        time_column=ctx.time_column)
        return self.manager

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        # the internal event time stays: rules needing event time read it (window results have no
        # `timestamp` column); the key id and watermark columns mean nothing to a rule
        out = self._manager(ctx).evaluate(df.drop([c for c in (KEY_ID, WM) if c in df.columns]), ctx.now_us)
        return out if out.height else None

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        out = self._manager(ctx).tick(ctx.now_us)
        return out if out.height else None

    def snapshot(self) -> Any:
        return AlertStepSnapshot(self.d.store)

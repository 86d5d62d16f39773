"""The live dashboard for a pipeline file: the live steps attached to its streams.

``tidegauge serve`` and ``tidegauge run`` with a ``server:`` section (and ``server.dashboard`` not
``false``) call :func:`attach_dashboard` before the runner is built, and hand the returned
:class:`~tidegauge.server.live.LiveState` to :func:`~tidegauge.server.serve`, which mounts the page, the
login and the live endpoints. What feeds it:

- **readings**: a :class:`~tidegauge.server.live.LiveStep` on the stream entering the pipeline's first
  ``window`` step, which is the scored stream when a ``detect`` step comes before it (scores, anomalies and
  sensor status on the Overview and Sensors pages), or on the pipeline's last stream when it has no window
  step. Latency on the Overview is event time to this step, on the wall clock (a replayed file shows its
  age).
- **windows**: a :class:`~tidegauge.server.live.LiveWindowsStep` on the first window step's output (the
  latest window of a sensor on its page).
- **dead letters**: a :class:`~tidegauge.server.live.LiveDeadLettersStep` on the flow's dead-letter stream
  (counts by the stage that rejected them, on the Pipeline page).

The steps emit nothing and keep no state: the pipeline's outputs and checkpoints are the same with the
dashboard on or off (they are left out of the checkpoint fingerprint).

>>> from tidegauge.dataflow import Flow
>>> from tidegauge.server.config import DashboardConfig
>>> from tidegauge.testing import MemorySink, MemorySource
>>> import polars as pl
>>> flow = Flow("f")
>>> readings = flow.source(MemorySource(pl.DataFrame({"sensor_id": ["a"], "timestamp": [0], "t": [1.0]})))
>>> live = attach_dashboard(flow, readings, [], DashboardConfig())
>>> sorted(n for n in flow.nodes if n.startswith("dashboard"))
['dashboard', 'dashboard_dead_letters']
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tidegauge.dataflow import Flow, Stream
from tidegauge.server.config import DashboardConfig
from tidegauge.server.live import LiveDeadLettersStep, LiveState, LiveStep, LiveWindowsStep

__all__ = ["attach_dashboard"]

logger = logging.getLogger(__name__)


def attach_dashboard(flow: Flow, readings: Stream, windows: Sequence[Stream], config: DashboardConfig) -> LiveState:
    """Attach the live steps to ``readings``, the first of ``windows`` and the dead letters of ``flow``."""
    live = LiveState(config.fields, history_s=config.history_s)
    readings.then(LiveStep(live, latency="arrival"), name=_free(flow, "dashboard"), base="dashboard")
    if windows:
        windows[0].then(LiveWindowsStep(live), name=_free(flow, "dashboard_windows"), base="dashboard")
    flow.dead_letters().then(LiveDeadLettersStep(live), name=_free(flow, "dashboard_dead_letters"), base="dashboard")
    logger.info("dashboard: readings from %s%s", readings.node_id,
                f", windows from {windows[0].node_id}" if windows else "")
    return live


def _free(flow: Flow, name: str) -> str | None:
    """``name`` if no node has it yet (else ``None``: a generated ``dashboard_N``)."""
    return None if name in flow.nodes else name

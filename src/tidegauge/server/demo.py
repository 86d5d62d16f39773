"""The demo in one process: simulator -> detectors -> windows, alerts, history store, live state, server.

:func:`build_demo` wires it; ``tidegauge demo`` (:mod:`tidegauge.cli.demo`) parses the flags, calls it and
runs the result with :func:`~tidegauge.server.app.serve`. The history store layout (``tidegauge report``
reads it)::

    <data_dir>/run-<UTC %Y%m%dT%H%M%S>/
        readings.parquet      every reading column + score, is_anomaly, truth_*, latency_ms
                              (committed parts in readings.parquet.parts/ while running)
        windows_1m.parquet    1-minute tumbling windows per sensor
        windows_5m.parquet    5-minute tumbling windows per sensor
        dead_letters.jsonl    rejected records with their reason
        alerts.sqlite         the AlertManager's store
        state/                checkpoints (every 10 s; they also commit the files above)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from tidegauge._time import parse_duration
from tidegauge.connectors.simulator import SimulatorSource, SimulatorSourceLogic
from tidegauge.dataflow.base import StepContext
from tidegauge.server.config import HistoryConfig, ServerConfig, TokenConfig
from tidegauge.server.live import LatencyStep, LiveDeadLettersStep, LiveState, LiveStep, LiveWindowsStep
from tidegauge.simulate import FleetSnapshot

__all__ = ["DEMO_FIELDS", "TOKEN_ENV", "Demo", "DemoConfig", "build_demo", "demo_alert_manager"]

logger = logging.getLogger(__name__)

DEMO_FIELDS = ["temperature", "vibration", "power_consumption"]
"""The fields the default detector scores."""
CHART_FIELDS = ["temperature", "humidity", "pressure", "vibration", "power_consumption"]
TOKEN_ENV = "TIDEGAUGE_DEMO_TOKEN"
"""The name the demo's token goes by in the server config (its value is passed as ``environ``)."""
_AGGS = ["count", "mean", "min", "max", "std"]
# only mergeable aggregations: their window state is a few arrays per sensor. A p99 (exact or sketched)
# keeps values or bucket rows per sensor and pane: 40 MB per window step in every checkpoint at 10,000
# sensors, which stalled the flow for seconds every 5 s.


class DemoConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What ``tidegauge demo`` runs."""

    sensors: int = 200
    rate: float = 2000.0
    seed: int = 42
    anomaly_rate: float = 0.02
    data_dir: str = "tidegauge-data"
    host: str = "127.0.0.1"
    port: int = 8080
    checkpoint_interval: str = "10s"
    max_delay: str = "20ms"

    def __post_init__(self) -> None:
        if self.sensors < 1:
            raise ValueError(f"sensors={self.sensors}: need at least one sensor")
        if self.rate <= 0:
            raise ValueError(f"rate={self.rate}: must be positive (readings per second)")
        if not 0 <= self.anomaly_rate < 1:
            raise ValueError(f"anomaly_rate={self.anomaly_rate}: a fraction in [0, 1)")


@dataclass
class Demo:
    """A wired demo, ready for :func:`~tidegauge.server.app.serve`."""

    runner: Any
    alerts: Any
    live: LiveState
    server: ServerConfig
    run_dir: Path
    source: Any
    """the simulator source (its ``started_at`` is when rows started to fall due)"""


class _FleetNowSource(SimulatorSource):
    """The simulator with its first event time set when the flow starts reading (not when it was wired),
    so event time equals wall-clock time and ``latency_ms`` measures the pipeline, not the start-up."""

    started_at: float | None = None
    """``time.monotonic()`` when the flow started reading: rows are due at ``rate`` from then on."""

    def build(self, resume_state: FleetSnapshot | None) -> SimulatorSourceLogic:
        if resume_state is None:
            self.config = msgspec.structs.replace(self.config, start=datetime.now(UTC))
        self.started_at = time.monotonic()
        return super().build(resume_state)


class _CoalesceLogic:
    def __init__(self, every_us: int) -> None:
        self.every_us = every_us
        self.frames: list[pl.DataFrame] = []
        self.last_us: int | None = None

    def _due(self, now_us: int) -> pl.DataFrame | None:
        if self.last_us is None:
            self.last_us = now_us
        if not self.frames or now_us - self.last_us < self.every_us:
            return None
        out = pl.concat(self.frames, how="diagonal_relaxed") if len(self.frames) > 1 else self.frames[0]
        self.frames, self.last_us = [], now_us
        return out

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        self.frames.append(df)
        return self._due(ctx.now_us)

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        return self._due(ctx.now_us)

    def snapshot(self) -> Any:
        return None


class Coalesce:
    """Step passing its input on in batches at most every ``every`` (processing time), concatenated.

    The alert manager's cost per batch grows with the number of active alerts, not with rows (it saves
    every active alert at each evaluation): fed once a second instead of every ~20 ms batch it keeps up
    with 10,000 sensors, and an alert is at most a second later. Rows held when the flow stops are not
    evaluated (the alert state lives in its own store, not in the flow's checkpoints, so nothing else
    is lost).
    """

    snapshot_type = None

    def __init__(self, every: str) -> None:
        self.every_us = parse_duration(every, name="every")

    def build(self, resume_state: Any | None) -> _CoalesceLogic:
        return _CoalesceLogic(self.every_us)


def demo_alert_manager(run_dir: Path) -> Any:
    """The demo's alert manager: the default rules (:func:`tidegauge.alerting.default_config`), state in
    ``run_dir/alerts.sqlite``. Delivery runs in background threads (the default ``log`` receiver) so the flow
    never waits on it.
    """
    from tidegauge.alerting import AlertManager, default_config

    return AlertManager(default_config(), store=run_dir / "alerts.sqlite", delivery="background")


def _warm_up(fields: list[str]) -> None:
    """Run a few thousand readings through the demo's compiled kernels (detector, windows, watermark).

    Numba compiles them on first use, which takes a few seconds; done here, before the paced simulator
    starts, those seconds do not show up as latency of the first readings.
    """
    from tidegauge.connectors.simulator import SimulatorSource
    from tidegauge.dataflow import Flow
    from tidegauge.detectors import default_detector
    from tidegauge.simulate import FleetConfig
    from tidegauge.testing import MemorySink
    from tidegauge.windows import Tumbling

    t0 = time.perf_counter()
    flow = Flow("warm-up")
    scored = flow.source(SimulatorSource(FleetConfig(sensors=10, rate=1000.0), limit=3000)).detect(
        default_detector(fields=fields))
    scored.window(Tumbling("1m"), {f: list(_AGGS) for f in fields}).sink(MemorySink())
    scored.sink(MemorySink())
    flow.run(max_batch=500)
    logger.info("warm-up took %.1f s", time.perf_counter() - t0)


def build_demo(cfg: DemoConfig, *, now: datetime | None = None, warm_up: bool = True) -> Demo:
    """Wire the demo flow, its runner, alert manager, live state and server config (nothing runs yet).

    ``warm_up`` first compiles the numba kernels on a small throwaway flow (see :func:`_warm_up`).
    """
    if warm_up:
        _warm_up(DEMO_FIELDS)
    from tidegauge.alerting import AlertStep, watch_health
    from tidegauge.connectors.files import FileSink
    from tidegauge.dataflow import CheckpointConfig, Flow, Runner, WatermarkConfig
    from tidegauge.detectors import default_detector
    from tidegauge.simulate import FleetConfig
    from tidegauge.windows import Tumbling

    start = now or datetime.now(UTC)
    run_dir = Path(cfg.data_dir) / start.strftime("run-%Y%m%dT%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    fleet = FleetConfig(sensors=cfg.sensors, rate=cfg.rate, seed=cfg.seed, start=start,
                        anomaly_rate=cfg.anomaly_rate)
    live = LiveState(CHART_FIELDS)
    alerts = demo_alert_manager(run_dir)

    flow = Flow("demo", watermark=WatermarkConfig.of(max_delay="2s", idle_timeout="5s"))
    source = _FleetNowSource(fleet, paced=True)
    scored = (flow.source(source)
              .detect(default_detector(fields=DEMO_FIELDS), name="detect")
              .then(LatencyStep(), name="latency"))
    scored.sink(FileSink(run_dir / "readings.parquet"), name="readings")
    scored.then(LiveStep(live), name="live")
    scored.then(Coalesce("1s"), name="alert_batches").then(AlertStep(alerts.config, manager=alerts),
                                                              name="alerts")
    aggs: dict[str, Any] = {f: list(_AGGS) for f in DEMO_FIELDS}
    aggs["score"] = ["max", "mean"]
    w1 = scored.window(Tumbling("1m"), aggs, name="window_1m")
    w1.sink(FileSink(run_dir / "windows_1m.parquet"), name="windows_1m")
    w1.then(LiveWindowsStep(live), name="live_windows")
    scored.window(Tumbling("5m"), aggs, name="window_5m").sink(FileSink(run_dir / "windows_5m.parquet"),
                                                               name="windows_5m")
    # the flow's own health (processing latency, rates) once a second, for the ProcessingLatencyHigh rule
    health = watch_health(alerts, flow, interval="1s")
    dead = flow.dead_letters()
    dead.sink(FileSink(run_dir / "dead_letters.jsonl"), name="dead_letter_file")
    dead.then(LiveDeadLettersStep(live), name="live_dead_letters")
    # checkpoints also commit the sinks, so the history files fill up while it runs
    runner = Runner(flow, max_delay=cfg.max_delay,
                    checkpoint=CheckpointConfig(run_dir / "state", interval=cfg.checkpoint_interval))
    health.attach(runner)

    readings = str(run_dir / "readings.parquet")
    server = ServerConfig(
        host=cfg.host, port=cfg.port,
        tokens=[TokenConfig(name="demo", env=TOKEN_ENV, scopes=["read", "admin"])],
        history=HistoryConfig(readings=readings, windows=str(run_dir / "windows_1m.parquet"),
                              anomalies=readings),
        intake_dir=str(run_dir / "intake"),
        # the paced simulator and the health watch run beside the server in one loop, as the demo always has
        flow="loop",
    )
    return Demo(runner=runner, alerts=alerts, live=live, server=server, run_dir=run_dir, source=source)

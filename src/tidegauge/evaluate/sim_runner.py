"""Simulator runs: generate a labelled fleet stream and feed it through one detector with per-sensor state.

The stream is fed the way the engine feeds it: in arrival order, in micro-batches, sensor ids encoded
once as dense key ids (``_tg_key``) so a single detector logic keeps per-sensor state in its arrays.
Detectors that do not follow the tidegauge contract (e.g. the Mahalanobis baseline, one model per
stream) get one logic per sensor instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import polars as pl

from tidegauge._time import Duration, timestamp_column_to_micros
from tidegauge.dataflow.base import KEY_ID, TS
from tidegauge.dataflow.keys import KeyDictionary
from tidegauge.detectors.base import Detector
from tidegauge.evaluate.runner import DetectorSpec
from tidegauge.evaluate.sim import TypeMetrics, score_simulation
from tidegauge.simulate import FleetConfig, FleetSimulator

__all__ = ["SimReport", "generate_simulation", "run_simulation", "stream_simulation"]

logger = logging.getLogger(__name__)

_CHUNK = 65_536
"""Rows per micro-batch: the source's default batch size, large enough to amortise per-batch overhead."""


@dataclass(frozen=True, slots=True)
class SimReport:
    """Per-type metrics of one simulator run, with its size and probation."""

    readings: int
    sensors: int
    probation: int
    types: dict[str, TypeMetrics]


def generate_simulation(config: FleetConfig, duration: Duration) -> pl.DataFrame:
    """All readings of ``config`` covering ``duration`` of event time, with their truth columns.

    >>> generate_simulation(FleetConfig(sensors=2, rate=10.0), "1s").height
    10
    """
    sim = FleetSimulator(config)
    total = config.readings_for(duration)
    if total <= 0:
        raise ValueError(f"duration={duration!r} at rate={config.rate} gives no readings; give a longer one")
    parts = [sim.next_batch(min(_CHUNK, total - a)) for a in range(0, total, _CHUNK)]
    return pl.concat(parts, how="vertical")


def stream_simulation(
    frame: pl.DataFrame,
    detector: DetectorSpec,
    *,
    key: str = "sensor_id",
    time: str = "timestamp",
    batch_rows: int = _CHUNK,
) -> pl.DataFrame:
    """``frame`` plus the detector's ``score``/``is_anomaly``, rows in time order (ties in arrival order).

    A tidegauge :class:`~tidegauge.detectors.base.Detector` runs as one logic over the whole stream with
    per-key state; any other detector definition gets one logic per key.
    """
    if batch_rows <= 0:
        raise ValueError(f"batch_rows={batch_rows!r}: give a number of rows > 0, e.g. 65536")
    missing = [c for c in (key, time) if c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} are missing; the frame has {frame.columns}")
    frame = frame.sort(time, maintain_order=True)
    if not isinstance(detector, Detector):
        parts = [detector.build(None).score_learn(g) for _, g in frame.group_by(key, maintain_order=True)]
        return pl.concat(parts, how="diagonal_relaxed").sort(time, maintain_order=True)
    keys = KeyDictionary()
    logic = detector.build(None)
    ts = timestamp_column_to_micros(frame[time]).cast(pl.Int64).alias(TS)
    prepared = frame.with_columns(keys.encode(frame[key]).alias(KEY_ID), ts)
    out = [logic.score_learn(prepared.slice(a, batch_rows)) for a in range(0, max(prepared.height, 1), batch_rows)]
    return pl.concat(out, how="vertical").drop(KEY_ID, TS)


def run_simulation(
    frame: pl.DataFrame,
    detector: DetectorSpec,
    *,
    probation: int = 100,
    key: str = "sensor_id",
    time: str = "timestamp",
) -> SimReport:
    """Stream ``frame`` through ``detector`` and score it against the truth columns per anomaly type.

    ``probation`` is each sensor's first readings in which events are censored and alarms not counted
    (the detector's warm-up; see :func:`~tidegauge.evaluate.score_simulation`).
    """
    out = stream_simulation(frame, detector, key=key, time=time)
    types = score_simulation(out, key=key, time=time, probation=probation)
    sensors = frame[key].n_unique()
    logger.info("simulation: %d readings of %d sensors scored", frame.height, sensors)
    return SimReport(readings=frame.height, sensors=sensors, probation=probation, types=types)

"""``DetectStep``: a detector as a pipeline step (``.detect(...)`` in Python, ``detect:`` in YAML)."""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from tidegauge.dataflow.base import KEY_ID, TS, WM, StepContext
from tidegauge.detectors.base import Detector, DetectorLogic, DetectorSnapshot

__all__ = ["DetectStep"]

logger = logging.getLogger(__name__)


class DetectStep:
    """Step definition running ``detector`` over a keyed stream.

    ``process`` is the detector's ``score_learn`` (input batches carry ``_tg_key`` and ``_tg_ts``);
    ``on_watermark`` returns ``None`` except for detectors that emit from time alone
    (:class:`~tidegauge.detectors.NoData`, alone or inside an ensemble): their rows get the flow's key
    column (decoded from ``ctx.keys``), the time column (the check's time) and ``_tg_wm``.

    Examples
    --------
    >>> from tidegauge.detectors import ZScore
    >>> step = DetectStep(ZScore(["temperature"]))
    >>> step.snapshot_type.__name__
    'ZScoreSnapshot'
    """

    def __init__(self, detector: Detector, *, warm_up: bool = True) -> None:
        if not isinstance(detector, Detector):
            raise TypeError(f"DetectStep takes a Detector, got {type(detector).__name__}: see build_detector")
        self.detector = detector
        self.warm_up = warm_up
        """load the kernels when the step is built (a first batch then does not stall the flow); ``False``
        keeps a flow that may never see data from holding numba (~55 MB: the edge agent's idle memory)"""
        self.snapshot_type: type | None = detector.snapshot_type

    def build(self, resume_state: Any | None) -> _DetectStepLogic:
        logic = _DetectStepLogic(self.detector.build(resume_state))
        if self.warm_up:
            _warm_up(self.detector)
        return logic

    def __repr__(self) -> str:
        return f"DetectStep({self.detector!r})"


def _warm_up(detector: Detector) -> None:
    """Load (or compile) the detector's numba kernels now, on a throwaway state, not in the first batch.

    Loading them takes 0.3-2 s (numba's import, its BLAS check, the on-disk cache); in the first batch
    that stalls the whole flow, and every record queued behind it arrives that much later, which at
    10,000 readings/s was the whole p99 of the publish-to-output latency. Best effort: a detector whose
    kernels need columns this synthetic batch lacks simply compiles at its first batch as before.
    """
    fields = [f for f in getattr(detector, "fields", ()) if isinstance(f, str)]
    df = pl.DataFrame(
        {
            **{f: pl.Series(f, [1.0, 2.0], dtype=pl.Float64) for f in fields},
            KEY_ID: pl.Series(KEY_ID, [0, 0], dtype=pl.UInt32),
            TS: pl.Series(TS, [1_000_000, 2_000_000], dtype=pl.Int64),
        }
    )
    try:
        detector.build(None).score_learn(df)
    except Exception as exc:  # only a warm-up: the real batches report real failures
        logger.debug("warm-up of %r skipped: %s: %s", detector, type(exc).__name__, exc)


class _DetectStepLogic:
    def __init__(self, logic: DetectorLogic) -> None:
        self.logic = logic

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        self.logic.now_us = ctx.now_us
        return self.logic.score_learn(df)

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        out = self.logic.on_tick(ctx.now_us, ctx.watermark)
        if out is None or not out.height:
            return None
        keys = ctx.keys.decode(out[KEY_ID]).alias(ctx.key_column)
        when = out[TS].cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias(ctx.time_column)
        return out.with_columns(keys, when, pl.lit(ctx.watermark, dtype=pl.Int64).alias(WM))

    def snapshot(self) -> DetectorSnapshot:
        return self.logic.snapshot()

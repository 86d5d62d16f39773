"""Dataflows: sources -> steps -> sinks over polars micro-batches, with event time and checkpoints.

Contract: every step is a definition with ``build(resume_state) -> logic``; logic has
``process(df, ctx)``, ``on_watermark(ctx)`` and ``snapshot()`` (see :mod:`tidegauge.dataflow.base`).
"""

from __future__ import annotations

from tidegauge.dataflow.base import StepContext, StepDefinition, StepLogic
from tidegauge.dataflow.flow import Flow, Stream
from tidegauge.dataflow.keys import KeyDictionary
from tidegauge.dataflow.runner import CheckpointConfig, Runner, RunResult
from tidegauge.dataflow.watermark import WatermarkConfig

__all__ = [
    "CheckpointConfig",
    "Flow",
    "KeyDictionary",
    "RunResult",
    "Runner",
    "StepContext",
    "StepDefinition",
    "StepLogic",
    "Stream",
    "WatermarkConfig",
]

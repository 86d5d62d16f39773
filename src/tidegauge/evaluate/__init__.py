"""Detector scoring: the NAB v1.1 scorer, the SKAB protocol, and simulator ground truth.

The scorers (:mod:`~tidegauge.evaluate.nab`, :mod:`~tidegauge.evaluate.skab`,
:mod:`~tidegauge.evaluate.sim`) are pure functions over arrays and frames and know nothing of detectors.
The runners (:func:`run_skab`, :func:`run_nab`, :func:`run_simulation`) stream each labelled file
through a detector definition
(``build(None) -> logic``, ``logic.score_learn(batch)``), one key per file, rows in time order, and
hand the outputs to the scorers; simulator streams run through one detector with per-sensor state.
"""

from __future__ import annotations

from tidegauge.evaluate.baseline import MahalanobisBaselineDetector, skab_changepoint_detector
from tidegauge.evaluate.nab import NAB_PROFILES, CostProfile, NabFile, NabProfileResult, score_corpus
from tidegauge.evaluate.runner import (
    DetectorFactory,
    DetectorSpec,
    NabReport,
    SkabReport,
    load_nab_profiles,
    load_nab_windows,
    run_nab,
    run_skab,
)
from tidegauge.evaluate.sim import TypeMetrics, score_simulation
from tidegauge.evaluate.sim_runner import SimReport, generate_simulation, run_simulation, stream_simulation
from tidegauge.evaluate.skab import BinaryMetrics, SkabNabResult, binary_metrics, chance_scores, skab_nab

__all__ = [
    "NAB_PROFILES",
    "BinaryMetrics",
    "CostProfile",
    "DetectorFactory",
    "DetectorSpec",
    "MahalanobisBaselineDetector",
    "NabFile",
    "NabProfileResult",
    "NabReport",
    "SimReport",
    "SkabNabResult",
    "SkabReport",
    "TypeMetrics",
    "binary_metrics",
    "chance_scores",
    "generate_simulation",
    "load_nab_profiles",
    "load_nab_windows",
    "run_nab",
    "run_simulation",
    "run_skab",
    "score_corpus",
    "score_simulation",
    "skab_changepoint_detector",
    "skab_nab",
    "stream_simulation",
]

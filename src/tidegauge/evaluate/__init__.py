"""Detector scoring: the NAB v1.1 scorer, the SKAB protocol, and simulator ground truth.

The scorers (:mod:`~tidegauge.evaluate.nab`, :mod:`~tidegauge.evaluate.skab`,
:mod:`~tidegauge.evaluate.sim`) are pure functions over arrays and frames and know nothing of detectors.
The runners (:func:`run_skab`, :func:`run_nab`) stream each labelled file through a detector definition
(``build(None) -> logic``, ``logic.score_learn(batch)``), one key per file, rows in time order, and
hand the outputs to the scorers.
"""

from __future__ import annotations

from tidegauge.evaluate.baseline import MahalanobisBaselineDetector
from tidegauge.evaluate.nab import NAB_PROFILES, CostProfile, NabFile, NabProfileResult, score_corpus
from tidegauge.evaluate.runner import (
    DetectorSpec,
    NabReport,
    SkabReport,
    load_nab_profiles,
    load_nab_windows,
    run_nab,
    run_skab,
)
from tidegauge.evaluate.sim import TypeMetrics, score_simulation
from tidegauge.evaluate.skab import BinaryMetrics, SkabNabResult, binary_metrics, skab_nab

__all__ = [
    "NAB_PROFILES",
    "BinaryMetrics",
    "CostProfile",
    "DetectorSpec",
    "MahalanobisBaselineDetector",
    "NabFile",
    "NabProfileResult",
    "NabReport",
    "SkabNabResult",
    "SkabReport",
    "TypeMetrics",
    "binary_metrics",
    "load_nab_profiles",
    "load_nab_windows",
    "run_nab",
    "run_skab",
    "score_corpus",
    "score_simulation",
    "skab_nab",
]

"""Online anomaly detectors: per-key state, vectorised over micro-batches, scores in [0, 1].

Contract (see :mod:`tidegauge.detectors.base`): a detector is an immutable definition;
``det.build(resume_state)`` gives logic with ``score(df)``, ``learn(df)``, ``score_learn(df)``
(record-at-a-time semantics: one batch gives exactly what one record at a time gives) and ``snapshot()``
(a frozen ``msgspec.Struct``, decoded with ``det.snapshot_type``). Output columns: ``score`` (Float64 in
[0, 1], higher = more anomalous), ``is_anomaly`` (Boolean), ``detector`` (the detector's name).
Multi-field detectors score each field and take the maximum (``ZScore``, ``RobustZ``; rules fire on any
field) or score the vector jointly (``HalfSpaceTrees``, ``IsolationForest``, ``Mahalanobis``).
NaN, inf, null and missing fields never update state and score 0.

Use a detector standalone (``ZScore(["t"], key="sensor_id").build().score_learn(df)``), as a step
(:class:`DetectStep`), or from config (:func:`build_detector`).
"""

from __future__ import annotations

from tidegauge.detectors.base import Detector, DetectorLogic, DetectorSnapshot
from tidegauge.detectors.calibrated import Calibrated
from tidegauge.detectors.cusum import Cusum
from tidegauge.detectors.ensemble import Ensemble
from tidegauge.detectors.flatline import Flatline
from tidegauge.detectors.hst import HalfSpaceTrees
from tidegauge.detectors.isolation_forest import IsolationForest
from tidegauge.detectors.mahalanobis import Mahalanobis
from tidegauge.detectors.no_data import NoData
from tidegauge.detectors.rate_of_change import RateOfChange
from tidegauge.detectors.registry import DETECTORS, build_detector, default_detector
from tidegauge.detectors.robust_z import RobustZ
from tidegauge.detectors.step import DetectStep
from tidegauge.detectors.threshold import Threshold
from tidegauge.detectors.zscore import ZScore

__all__ = [
    "DETECTORS",
    "Calibrated",
    "Cusum",
    "DetectStep",
    "Detector",
    "DetectorLogic",
    "DetectorSnapshot",
    "Ensemble",
    "Flatline",
    "HalfSpaceTrees",
    "IsolationForest",
    "Mahalanobis",
    "NoData",
    "RateOfChange",
    "RobustZ",
    "Threshold",
    "ZScore",
    "build_detector",
    "default_detector",
]

"""Detectors by name: ``build_detector`` for config files, ``default_detector`` for the demo."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tidegauge.detectors.base import Detector
from tidegauge.detectors.calibrated import Calibrated
from tidegauge.detectors.cusum import Cusum
from tidegauge.detectors.ensemble import Ensemble
from tidegauge.detectors.flatline import Flatline
from tidegauge.detectors.hst import HalfSpaceTrees
from tidegauge.detectors.isolation_forest import IsolationForest
from tidegauge.detectors.mahalanobis import Mahalanobis
from tidegauge.detectors.no_data import NoData
from tidegauge.detectors.rate_of_change import RateOfChange
from tidegauge.detectors.robust_z import RobustZ
from tidegauge.detectors.threshold import Threshold
from tidegauge.detectors.zscore import ZScore
from tidegauge.errors import ConfigError

__all__ = ["DETECTORS", "build_detector", "default_detector"]

logger = logging.getLogger(__name__)

DETECTORS: dict[str, type[Detector]] = {
    cls.kind: cls
    for cls in (
        Calibrated,
        Cusum,
        Ensemble,
        Flatline,
        HalfSpaceTrees,
        IsolationForest,
        Mahalanobis,
        NoData,
        RateOfChange,
        RobustZ,
        Threshold,
        ZScore,
    )
}
"""Registry: config ``type`` name -> detector class."""

_ALIASES = {
    "half_space_trees": "hst",
    "halfspacetrees": "hst",
    "range": "threshold",
    "robustz": "robust_z",
    "iforest": "isolation_forest",
    "nodata": "no_data",
    "deadman": "no_data",
    "rateofchange": "rate_of_change",
    "changepoint": "cusum",
    "page_hinkley": "cusum",
}


def build_detector(spec: str | Mapping[str, Any] | Detector, *, fields: Sequence[str] | None = None) -> Detector:
    """A detector from a name or a config mapping (the ``detect:`` section of a pipeline file).

    ``spec`` is a type name (``"zscore"``) or a mapping with ``type`` and the detector's parameters;
    ``fields`` fills in a missing ``fields`` parameter. Ensembles list members under ``detectors`` and
    ``Calibrated`` its inner detector under ``detector``, each a spec of its own.

    Raises
    ------
    ConfigError
        Unknown type or parameter (naming the valid ones), or a bad value.

    Examples
    --------
    >>> build_detector({"type": "zscore", "fields": ["temperature"], "threshold": 0.99}).threshold
    0.99
    >>> build_detector("flatline", fields=["vibration"]).n
    10
    """
    if isinstance(spec, Detector):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"detector spec {spec!r}: give a type name or a mapping with 'type'")
    params = dict(spec)
    kind = params.pop("type", None)
    if not isinstance(kind, str):
        types = ", ".join(sorted(DETECTORS))
        raise ConfigError(f"detector spec {dict(spec)!r} has no 'type'; valid types: {types}")
    name = _ALIASES.get(kind.lower().replace("-", "_"), kind.lower().replace("-", "_"))
    cls = DETECTORS.get(name)
    if cls is None:
        raise ConfigError(f"unknown detector type {kind!r}; valid types: {', '.join(sorted(DETECTORS))}")
    sig = inspect.signature(cls.__init__)
    valid = [p for p in sig.parameters if p != "self"]
    unknown = [p for p in params if p not in valid]
    if unknown:
        raise ConfigError(f"{kind}: unknown parameter(s) {unknown}; valid parameters: {', '.join(valid)}")
    if "detectors" in params and cls is Ensemble:
        params["detectors"] = [build_detector(s, fields=fields) for s in params["detectors"]]
    if "detector" in params and cls is Calibrated:
        params["detector"] = build_detector(params["detector"], fields=fields)
    if "fields" in valid and "fields" not in params and cls is not NoData:
        if fields is None:
            raise ConfigError(f"{kind}: give 'fields', the value columns to score")
        params["fields"] = list(fields)
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{kind}: {exc}") from exc


def default_detector(
    fields: Sequence[str] = ("temperature", "vibration", "power_consumption"), *, seed: int = 0
) -> Detector:
    """The demo's detector: a calibrated per-sensor z-score plus a stuck-value rule, combined by max.

    Tuned on the simulator's anomalies (level shifts of 5+ standard deviations lasting ~30 s, i.e. ~300
    readings of a sensor at the demo's 10 readings/s): a slow ``ZScore(alpha=0.001, clip=4)`` keeps
    flagging a sustained shift and barely drifts during it; its fleet prior (``fleet=True``) decides,
    when a sensor is contradicted for 10 readings, whether its baseline or the new level is the normal
    one (a sensor that started mid-episode restarts when it comes back to normal; an anomaly is not
    adopted as normal); calibration with ``threshold=0.99999`` flags about one normal reading in
    100,000 per field on every sensor, and learns flagged readings at 1% of its step so one long
    episode does not blind a sensor to the next; ``Flatline`` catches a sensor stuck on one value for
    20 readings. ``seed`` is accepted for interface symmetry (nothing in it is random). About 80 bytes
    of state per sensor and field.

    >>> default_detector(["temperature"]).name
    'default'
    """
    del seed
    z = ZScore(list(fields), alpha=0.001, clip=4.0, warmup=100, restart=(10, 1000), fleet=True, name="zscore")
    return Ensemble(
        [Calibrated(z, threshold=0.99999, flagged_weight=0.01, name="zscore"), Flatline(list(fields), n=20)],
        combine="max",
        name="default",
    )

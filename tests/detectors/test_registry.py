from __future__ import annotations

import pytest

import tidegauge.detectors as detectors
from tidegauge.detectors import (
    DETECTORS,
    Calibrated,
    Ensemble,
    HalfSpaceTrees,
    ZScore,
    build_detector,
    default_detector,
)
from tidegauge.errors import ConfigError


def test_exported_names_are_complete() -> None:
    public = {n for n in dir(detectors) if n[0].isupper()}
    classes = {cls.__name__ for cls in DETECTORS.values()}
    assert classes <= set(detectors.__all__)
    assert {"DetectStep", "build_detector", "default_detector"} <= set(detectors.__all__)
    assert public <= set(detectors.__all__)


def test_build_from_mapping_and_name() -> None:
    det = build_detector({"type": "zscore", "fields": ["temperature"], "threshold": 0.99})
    assert isinstance(det, ZScore) and det.threshold == 0.99 and det.fields == ("temperature",)
    assert isinstance(build_detector("half_space_trees", fields=["a"]), HalfSpaceTrees)
    assert build_detector("no_data").kind == "no_data"


def test_nested_specs() -> None:
    det = build_detector(
        {
            "type": "ensemble",
            "combine": "vote",
            "detectors": [
                {"type": "calibrated", "detector": {"type": "zscore"}},
                {"type": "range", "upper": 45},
                "flatline",
            ],
        },
        fields=["temperature"],
    )
    assert isinstance(det, Ensemble) and isinstance(det.detectors[0], Calibrated)
    assert [d.kind for d in det.detectors] == ["calibrated", "threshold", "flatline"]


def test_unknown_type_names_valid_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown detector type 'zscroe'.*zscore"):
        build_detector({"type": "zscroe", "fields": ["t"]})


def test_unknown_parameter_names_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['alpah'\].*alpha"):
        build_detector({"type": "zscore", "fields": ["t"], "alpah": 0.1})


def test_bad_value_is_config_error() -> None:
    with pytest.raises(ConfigError, match="alpha=2"):
        build_detector({"type": "zscore", "fields": ["t"], "alpha": 2})
    with pytest.raises(ConfigError, match="fields"):
        build_detector("zscore")
    with pytest.raises(ConfigError, match="no 'type'"):
        build_detector({"fields": ["t"]})


def test_default_detector() -> None:
    det = default_detector(["temperature", "vibration"])
    assert isinstance(det, Ensemble) and det.name == "default"

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import polars as pl
import pytest
import sklearn  # noqa: F401  (the [ml]/dev extra installs it: missing is a failure)

import tidegauge.detectors.isolation_forest as iforest_mod
from tidegauge.detectors import IsolationForest


def _frame(n: int, seed: int = 0, group: str = "t") -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"g": [group] * n, "x": rng.normal(0, 1, n), "y": rng.normal(5, 1, n)})


def test_background_retrain_never_blocks_and_old_model_keeps_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    started = threading.Event()
    real_fit = iforest_mod._fit_model
    calls: list[int] = []

    def slow_fit(sample: np.ndarray, *args: Any) -> Any:
        calls.append(len(sample))
        if len(calls) > 1:  # the first model fits at once; the retrain waits for the gate
            started.set()
            assert gate.wait(timeout=60)
        return real_fit(sample, *args)

    monkeypatch.setattr(iforest_mod, "_fit_model", slow_fit)
    det = IsolationForest(["x", "y"], group="g", sample_size=100, retrain_every=100, n_estimators=10, seed=1)
    logic = det.build()
    logic.score_learn(_frame(100))  # triggers fit 1
    logic.wait_for_retrain(timeout=60)  # type: ignore[attr-defined]
    first_model = logic.groups["t"].model  # type: ignore[attr-defined]
    assert first_model is not None
    logic.score_learn(_frame(100, seed=1))  # triggers fit 2, which blocks on the gate
    assert started.wait(timeout=60)
    # the stream goes on while the fit is pending, scored by the old model
    out = logic.score_learn(_frame(50, seed=2))
    assert (out["score"].to_numpy() > 0).all()
    assert logic.groups["t"].model is first_model  # type: ignore[attr-defined]
    assert logic.groups["t"].pending is not None  # type: ignore[attr-defined]
    gate.set()
    logic.wait_for_retrain(timeout=60)  # type: ignore[attr-defined]
    assert logic.groups["t"].model is not first_model  # type: ignore[attr-defined]


def test_one_model_per_group_and_outlier() -> None:
    det = IsolationForest(["x", "y"], group="g", sample_size=200, retrain_every=200, retrain="inline", seed=3)
    logic = det.build()
    logic.score_learn(pl.concat([_frame(200, group="a"), _frame(200, seed=5, group="b")]))
    assert set(logic.groups) == {"a", "b"}  # type: ignore[attr-defined]
    probe = pl.DataFrame({"g": ["a", "a"], "x": [0.0, 8.0], "y": [5.0, -4.0]})
    s = logic.score(probe)["score"].to_numpy()
    assert s[1] > det.threshold > s[0]


def test_scores_zero_before_first_model() -> None:
    out = IsolationForest(["x"], sample_size=50, retrain_every=50, retrain="inline").build().score_learn(_frame(50))
    assert (out["score"].to_numpy() == 0).all()


def test_validation() -> None:
    with pytest.raises(ValueError, match="sample_size"):
        IsolationForest(["x"], sample_size=4)
    with pytest.raises(ValueError, match="retrain"):
        IsolationForest(["x"], retrain="sometimes")  # type: ignore[arg-type]

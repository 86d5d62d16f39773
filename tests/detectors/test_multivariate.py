from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tidegauge.detectors import Mahalanobis, RobustZ


def test_mahalanobis_catches_broken_correlation() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 500)
    b = a + rng.normal(0, 0.1, 500)
    df = pl.DataFrame({"a": np.r_[a, 1.5], "b": np.r_[b, -1.5]})
    out = Mahalanobis(["a", "b"]).build().score_learn(df)
    assert out["is_anomaly"].to_list()[-1]
    assert out["is_anomaly"][30:500].mean() < 0.01  # type: ignore[operator]


def test_mahalanobis_score_matches_chi_square_roughly() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (20000, 3))
    out = (
        Mahalanobis(["a", "b", "c"], alpha=0.001, clip=None)
        .build()
        .score_learn(pl.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}))
    )
    s = out["score"].to_numpy()[2000:]
    # calibrated scores are roughly uniform under the model
    assert abs(np.mean(s > 0.9) - 0.1) < 0.02 and abs(np.mean(s > 0.99) - 0.01) < 0.006


def test_robust_z_against_numpy_median_mad() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(10, 1, 80)
    out = RobustZ("v", window=20, warmup=20).build().score_learn(pl.DataFrame({"v": x}))["score"].to_numpy()
    i = 50
    w = x[i - 20 : i]
    med = np.median(w)
    sd = 1.4826 * np.median(np.abs(w - med))
    from math import erf, sqrt

    assert out[i] == pytest.approx(erf(abs(x[i] - med) / sd / sqrt(2)), rel=1e-12)
    assert (out[:20] == 0).all()


def test_robust_z_validation() -> None:
    with pytest.raises(ValueError, match="exceeds window"):
        RobustZ("v", window=10, warmup=20)

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tidegauge.detectors import HalfSpaceTrees


def _stream(seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = 1200
    return pl.DataFrame(
        {
            "_tg_key": pl.Series(rng.integers(0, 3, n), dtype=pl.UInt32),
            "a": rng.normal(0.5, 0.05, n),
            "b": rng.normal(0.3, 0.05, n),
        }
    )


@pytest.mark.parametrize("state", ["per_key", "shared"])
def test_outlier_scores_above_normal_points(state: str) -> None:
    df = _stream()
    logic = HalfSpaceTrees(["a", "b"], window_size=100, state=state, seed=7).build()  # type: ignore[arg-type]
    normal = logic.score_learn(df)["score"].to_numpy()[-300:]
    probe = pl.DataFrame(
        {"_tg_key": pl.Series([0, 1, 2], dtype=pl.UInt32), "a": [0.95, 0.5, 0.05], "b": [0.9, 0.3, 0.9]}
    )
    s = logic.score(probe)["score"].to_numpy()
    assert s[0] > np.quantile(normal, 0.99) and s[2] > np.quantile(normal, 0.99)
    assert s[1] <= np.quantile(normal, 0.9)


def test_first_window_is_warmup_per_key() -> None:
    df = pl.DataFrame({"_tg_key": pl.Series([0] * 50 + [1] * 5, dtype=pl.UInt32), "a": [0.5] * 55})
    out = HalfSpaceTrees(["a"], window_size=50).build().score_learn(df)["score"].to_numpy()
    assert (out[:50] == 0).all() and (out[50:] == 0).all()  # key 1 has no reference window yet


def test_limits_scale_features() -> None:
    rng = np.random.default_rng(1)
    x = np.r_[rng.normal(100, 5, 500), 180.0]
    det = HalfSpaceTrees(["x"], limits={"x": (50.0, 150.0)}, window_size=100, seed=2)
    s = det.build().score_learn(pl.DataFrame({"x": x}))["score"].to_numpy()
    assert s[-1] > s[100:500].max()


def test_same_seed_same_trees_other_seed_differs() -> None:
    a, b, c = (HalfSpaceTrees(["x", "y"], seed=s) for s in (1, 1, 2))
    assert np.array_equal(a._split, b._split) and not np.array_equal(a._split, c._split)


def test_validation() -> None:
    with pytest.raises(ValueError, match="limits"):
        HalfSpaceTrees(["x"], limits={"y": (0, 1)})
    with pytest.raises(ValueError, match="low < high"):
        HalfSpaceTrees(["x"], limits={"x": (1, 0)})
    with pytest.raises(ValueError, match="state"):
        HalfSpaceTrees(["x"], state="global")  # type: ignore[arg-type]

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from tidegauge.detectors import ZScore


def _oracle(x: np.ndarray, alpha: float, warmup: int, min_std: float) -> np.ndarray:
    """Plain-numpy bias-corrected EWMA z-score, one value at a time."""
    mean = var = 0.0
    out = np.zeros(len(x))
    for n, v in enumerate(x):
        if n >= warmup and n > 0:
            sd = math.sqrt(max(var, min_std**2))
            out[n] = math.erf(abs(v - mean) / sd / math.sqrt(2))
        a = max(alpha, 1.0 / (n + 1))
        d = v - mean
        mean += a * d
        var = (1 - a) * (var + a * d * d)
    return out


def test_matches_numpy_oracle_per_key() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, (300, 2))
    keys = rng.integers(0, 2, 300)
    df = pl.DataFrame({"k": keys, "v": x[:, 0]})
    out = ZScore("v", alpha=0.05, warmup=10, clip=None, key="k").build().score_learn(df)
    for k in (0, 1):
        sel = keys == k
        expect = _oracle(x[sel, 0], 0.05, 10, 1e-6)
        np.testing.assert_allclose(out["score"].to_numpy()[sel], expect, rtol=1e-12, atol=1e-15)


def test_running_moments_are_exact_before_alpha_kicks_in() -> None:
    x = np.random.default_rng(1).normal(0, 3, 40)
    logic = ZScore("v", alpha=0.01, warmup=0, clip=None).build()
    logic.learn(pl.DataFrame({"v": x}))
    snap = logic.snapshot()
    from tidegauge.checkpoint.codec import unpack_array

    assert unpack_array(snap.arrays["mean"])[0, 0] == pytest.approx(x.mean(), rel=1e-12)
    assert unpack_array(snap.arrays["var"])[0, 0] == pytest.approx(x.var(), rel=1e-12)


def test_warmup_scores_zero_then_flags() -> None:
    x = np.r_[np.random.default_rng(2).normal(0, 1, 50), 20.0]
    out = ZScore("v", warmup=50).build().score_learn(pl.DataFrame({"v": x}))
    assert out["score"][:50].sum() == 0.0
    assert out["is_anomaly"].to_list()[-1]


def test_winsorised_update_keeps_flagging_a_sustained_shift() -> None:
    rng = np.random.default_rng(3)
    x = np.r_[rng.normal(20, 2, 200), rng.normal(35, 2, 30)]
    clipped = ZScore("v", alpha=0.02, clip=3.0, restart=None).build().score_learn(pl.DataFrame({"v": x}))
    plain = ZScore("v", alpha=0.02, clip=None).build().score_learn(pl.DataFrame({"v": x}))
    assert clipped["is_anomaly"][200:].sum() >= 28
    assert clipped["is_anomaly"][200:].sum() > plain["is_anomaly"][200:].sum()


def test_multi_field_score_is_max_over_fields() -> None:
    rng = np.random.default_rng(4)
    df = pl.DataFrame({"a": rng.normal(0, 1, 100), "b": rng.normal(0, 1, 100)})
    both = ZScore(["a", "b"], warmup=5).build().score_learn(df)["score"].to_numpy()
    a = ZScore("a", warmup=5).build().score_learn(df)["score"].to_numpy()
    b = ZScore("b", warmup=5).build().score_learn(df)["score"].to_numpy()
    np.testing.assert_array_equal(both, np.maximum(a, b))


def test_young_baseline_restarts_at_a_sustained_new_level() -> None:
    rng = np.random.default_rng(5)
    # learned during an anomaly (level 40), then the real level (20) for good
    x = np.r_[rng.normal(40, 2, 100), rng.normal(20, 2, 400)]
    out = ZScore("v", warmup=30, restart=(10, 1000)).build().score_learn(pl.DataFrame({"v": x}))
    flags = out["is_anomaly"].to_numpy()
    assert flags[100:110].all() and flags[110:].sum() == 0
    never = ZScore("v", warmup=30, restart=None).build().score_learn(pl.DataFrame({"v": x}))
    assert never["is_anomaly"][100:].sum() > 100


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"alpha": 0.0}, ValueError, "alpha=0.0"),
        ({"alpha": 1.5}, ValueError, "alpha=1.5"),
        ({"threshold": 2}, ValueError, "threshold=2"),
        ({"warmup": -1}, ValueError, "warmup=-1"),
        ({"clip": "x"}, TypeError, "clip='x'"),
        ({"restart": (10,)}, ValueError, "restart"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        ZScore("v", **kwargs)  # type: ignore[arg-type]


def test_bad_fields() -> None:
    with pytest.raises(TypeError, match="fields"):
        ZScore([1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least 1"):
        ZScore([])


def test_return_from_an_absorbed_shift_is_not_flagged() -> None:
    import numpy as np
    import polars as pl

    from tidegauge.detectors import ZScore

    rng = np.random.default_rng(1)
    # 1,500 normal readings (a mature baseline), a shift of 10 sd for 4,000 readings that the slow mean
    # absorbs, then back to the old level
    x = np.r_[rng.normal(0, 1, 1500), rng.normal(10, 1, 4000), rng.normal(0, 1, 500)]
    det = ZScore(["x"], alpha=0.001, clip=4.0, warmup=100, restart=(10, 1000), threshold=0.99999)
    flags = det.build().score_learn(pl.DataFrame({"x": x}))["is_anomaly"].to_numpy()
    assert flags[1500:1510].all()  # the shift is caught at once
    assert flags[5500:].sum() <= 2  # the return is recognised as the old normal

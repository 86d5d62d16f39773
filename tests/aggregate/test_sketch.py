"""QuantileSketch: documented relative error, merging, vectorised bucket helpers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidegauge.aggregate import QuantileSketch, bucket_expr, sketch_quantiles
from tidegauge.aggregate.sketch import bucket_values

values = st.lists(st.one_of(st.floats(1e-6, 1e9), st.floats(-1e9, -1e-6)), min_size=1, max_size=300)


@settings(max_examples=60, deadline=None)
@given(values, st.sampled_from([0.001, 0.01, 0.05]), st.floats(0, 1))
def test_quantile_within_relative_error(xs: list[float], alpha: float, q: float) -> None:
    a = np.array(xs)
    s = QuantileSketch(alpha)
    s.add(a)
    got = s.quantile(q)
    srt = np.sort(a)
    rank = (a.size - 1) * q
    lo, hi = srt[int(np.floor(rank))], srt[int(np.ceil(rank))]
    exact = float(np.quantile(a, q, method="linear"))
    assert got is not None
    bound = alpha * (abs(exact) if np.sign(lo) == np.sign(hi) else max(abs(lo), abs(hi)))
    assert abs(got - exact) <= bound * (1 + 1e-9) + 1e-12


@settings(max_examples=30, deadline=None)
@given(values, values)
def test_merge_equals_adding_everything(xs: list[float], ys: list[float]) -> None:
    a, b, both = QuantileSketch(), QuantileSketch(), QuantileSketch()
    a.add(xs)
    b.add(ys)
    both.add(xs + ys)
    a.merge(b)
    assert a.count == both.count == len(xs) + len(ys)
    for q in (0.0, 0.5, 0.9, 1.0):
        assert a.quantile(q) == both.quantile(q)


def test_memory_is_buckets_not_values() -> None:
    s = QuantileSketch(0.01)
    s.add(np.random.default_rng(0).lognormal(0, 1, 100_000))
    assert s.count == 100_000
    assert s.n_buckets < 1_000


def test_empty_nan_and_bad_arguments() -> None:
    s = QuantileSketch()
    s.add([float("nan")])
    assert s.quantile(0.5) is None and s.count == 0
    with pytest.raises(ValueError, match="alpha"):
        QuantileSketch(0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        s.quantile(1.5)
    with pytest.raises(ValueError, match=r"same|alpha"):
        s.merge(QuantileSketch(0.02))


def test_polars_buckets_match_numpy_and_group_quantiles() -> None:
    x = np.array([0.0, 1e-15, 1.0, -2.5, 3.7, 1000.0])
    got = pl.DataFrame({"x": x}).select(bucket_expr("x", 0.01))["x"].to_numpy()
    np.testing.assert_allclose(got, bucket_values(x, 0.01))
    assert got[0] == got[1] == 0.0
    assert np.all(np.abs(got[2:] - x[2:]) <= 0.01 * np.abs(x[2:]))
    counts = pl.DataFrame({"g": [1, 1, 1, 2], "b": [1.0, 2.0, 3.0, 5.0], "n": [1, 1, 2, 1]})
    res = sketch_quantiles(counts, ["g"], {"med": 0.5, "top": 1.0}).sort("g")
    assert res["med"].to_list() == [2.5, 5.0]  # values 1,2,3,3 -> median 2.5
    assert res["top"].to_list() == [3.0, 5.0]

"""Cusum: changepoints at level shifts, once per change, per key; checked against a plain-Python oracle."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tidegauge.detectors import Cusum, build_detector


def _oracle(x: np.ndarray, *, h: float, drift: float, reference: int, warmup: int) -> np.ndarray:
    """Textbook two-sided CUSUM with a restart (and a new reference level) after every alarm, one field."""
    scores = np.zeros(x.size)
    sd = float(np.std(x[:warmup], ddof=1))
    level, ref, pos, neg = float(np.mean(x[:warmup])), [], 0.0, 0.0
    for i in range(warmup, x.size):
        if level is None:
            ref.append(x[i])
            if len(ref) == reference:
                level = float(np.mean(ref))
            continue
        z = (x[i] - level) / sd
        pos, neg = max(0.0, pos + z - drift), max(0.0, neg - z - drift)
        s = max(pos, neg)
        scores[i] = s / (s + h)
        if s >= h:
            level, ref, pos, neg = None, [], 0.0, 0.0
    return scores


def _steps(rng: np.random.Generator) -> np.ndarray:
    return np.r_[rng.normal(0, 1, 300), rng.normal(3, 1, 200), rng.normal(-2, 1, 200), rng.normal(0, 1, 300)]


def test_matches_the_textbook_recursion() -> None:
    x = _steps(np.random.default_rng(7))
    out = Cusum(["v"], h=6.0, drift=0.5, reference=8, warmup=100).build().score_learn(pl.DataFrame({"v": x}))
    want = _oracle(x, h=6.0, drift=0.5, reference=8, warmup=100)
    np.testing.assert_allclose(out["score"].to_numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out["is_anomaly"].to_numpy(), want >= 0.5)


def test_one_alarm_per_change_soon_after_it() -> None:
    rng = np.random.default_rng(3)
    x = _steps(rng)
    flagged = np.flatnonzero(
        Cusum(["v"], h=10.0, drift=0.5, warmup=200).build().score_learn(pl.DataFrame({"v": x}))["is_anomaly"]
    )
    # changes at 300 (up), 500 (down), 700 (back): one alarm within 10 readings of each, nothing else
    assert len(flagged) == 3, flagged
    for got, change in zip(flagged, (300, 500, 700), strict=True):
        assert change <= got < change + 10


def test_stationary_noise_rarely_alarms() -> None:
    x = np.random.default_rng(0).normal(5.0, 2.0, 20_000)
    out = Cusum(["v"], h=12.0, drift=1.0, warmup=500).build().score_learn(pl.DataFrame({"v": x}))
    assert int(out["is_anomaly"].sum()) <= 1


def test_keys_are_independent() -> None:
    rng = np.random.default_rng(1)
    n = 800
    a = rng.normal(0, 1, n)
    b = rng.normal(0, 1, n)
    b[500:] += 5.0
    df = pl.DataFrame({"s": ["a"] * n + ["b"] * n, "v": np.r_[a, b], "i": np.r_[np.arange(n), np.arange(n)]}).sort(
        "i", maintain_order=True
    )
    det = Cusum(["v"], h=10.0, drift=1.0, warmup=100, key="s")
    out = det.build().score_learn(df)
    alone = det.build().score_learn(pl.DataFrame({"s": ["a"] * n, "v": a}))
    np.testing.assert_array_equal(out.filter(pl.col("s") == "a")["score"].to_numpy(), alone["score"].to_numpy())
    hits = out.filter("is_anomaly")
    assert hits["s"].to_list() == ["b"] and 500 <= hits["i"][0] < 510


def test_multi_field_restarts_every_field_of_the_key() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (600, 2))
    x[400:, 1] += 6.0
    out = Cusum(["a", "b"], h=8.0, warmup=100).build().score_learn(pl.DataFrame({"a": x[:, 0], "b": x[:, 1]}))
    flagged = np.flatnonzero(out["is_anomaly"].to_numpy())
    assert flagged.tolist() and 400 <= flagged[0] < 405 and len(flagged) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"h": 0}, "h=0"),
        ({"drift": -1}, "drift=-1"),
        ({"reference": 0}, "reference=0"),
        ({"warmup": 1}, "warmup=1"),
        ({"threshold": 0.0}, "threshold=0"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Cusum(["v"], **kwargs)  # type: ignore[arg-type]


def test_registry_names() -> None:
    for name in ("cusum", "changepoint", "page-hinkley"):
        det = build_detector({"type": name, "h": 5.0}, fields=["v"])
        assert isinstance(det, Cusum) and det.h == 5.0 and det.emits_changepoints

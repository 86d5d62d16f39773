"""Quantile sketch with a documented relative error (DDSketch-style logarithmic buckets).

A value ``x`` is mapped to the bucket ``i = ceil(log_gamma(|x|))`` with ``gamma = (1 + alpha) / (1 - alpha)``
and represented by ``sign(x) * 2 * gamma**i / (gamma + 1)``, which is within a *relative* error ``alpha`` of
every value of the bucket. Values with ``|x| < MIN_MAGNITUDE`` are represented by 0.

Guarantee: for ``q`` in [0, 1], the sketch's quantile (linear interpolation between the values of rank
``floor(q*(n-1))`` and ``ceil(q*(n-1))``, like polars' ``interpolation="linear"``) is within
``alpha * |exact|`` of the exact quantile whenever the two neighbouring values have the same sign
(and within ``alpha * max(|lo|, |hi|)`` otherwise). Memory is one count per occupied bucket: about
``log(max/min) / log(gamma)`` buckets, i.e. ~1,400 for alpha = 1% over 12 decades, whatever the number of
values. Sketches merge exactly (bucket counts add), so window panes combine without loss.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

__all__ = ["MIN_MAGNITUDE", "QuantileSketch", "bucket_expr", "bucket_values", "sketch_quantiles"]

logger = logging.getLogger(__name__)

MIN_MAGNITUDE = 1e-12
"""Values smaller than this in magnitude are counted as 0 (absolute error below 1e-12)."""


def _check_alpha(alpha: float) -> float:
    if not isinstance(alpha, float | int) or not 0.0 < alpha < 0.5:
        raise ValueError(f"sketch relative error alpha={alpha!r} must be in (0, 0.5); 0.01 (1%) is typical")
    return float(alpha)


def bucket_values(values: np.ndarray, alpha: float) -> np.ndarray:
    """Representative value of each value's bucket (NaN stays NaN)."""
    gamma = (1 + alpha) / (1 - alpha)
    lg = math.log(gamma)
    mag = np.abs(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        rep = np.exp(np.ceil(np.log(mag) / lg) * lg) * (2.0 / (gamma + 1.0))
    return np.where(mag < MIN_MAGNITUDE, 0.0, np.sign(values) * rep)


def bucket_expr(column: str | pl.Expr, alpha: float) -> pl.Expr:
    """Polars expression of :func:`bucket_values` (nulls stay null), named after ``column`` when a string."""
    col = pl.col(column) if isinstance(column, str) else column
    gamma = (1 + alpha) / (1 - alpha)
    lg = math.log(gamma)
    mag = col.cast(pl.Float64).abs()
    rep = ((mag.log() / lg).ceil() * lg).exp() * (2.0 / (gamma + 1.0))
    out = pl.when(mag < MIN_MAGNITUDE).then(0.0).otherwise(col.cast(pl.Float64).sign() * rep)
    return out.alias(column) if isinstance(column, str) else out


def sketch_quantiles(
    counts: pl.DataFrame, by: Sequence[str], quantiles: Mapping[str, float], *, bucket: str = "b", n: str = "n"
) -> pl.DataFrame:
    """Quantiles per group from bucket counts.

    ``counts`` has the group columns ``by``, a bucket value column and a count column (rows of the same
    group and bucket may repeat; they are added). Returns one row per group with one column per entry of
    ``quantiles`` (output name -> q).
    """
    by = list(by)
    g = (
        counts.group_by([*by, bucket])
        .agg(pl.col(n).sum())
        .sort([*by, bucket])
        .with_columns(
            _cum=pl.col(n).cum_sum().over(by),
            _tot=pl.col(n).sum().over(by),
        )
    )
    exprs: list[pl.Expr] = []
    for name, q in quantiles.items():
        rank = (pl.col("_tot") - 1).cast(pl.Float64) * q
        lo, hi = rank.floor(), rank.ceil()
        v_lo = pl.col(bucket).filter(pl.col("_cum") > lo).first()
        v_hi = pl.col(bucket).filter(pl.col("_cum") > hi).first()
        frac = (rank - lo).first()
        exprs.append((v_lo + (v_hi - v_lo) * frac).alias(name))
    return g.group_by(by, maintain_order=True).agg(exprs)


class QuantileSketch:
    """A mergeable quantile sketch with relative error ``alpha``.

    Parameters
    ----------
    alpha:
        Relative error bound, in (0, 0.5). Default 1%.

    Examples
    --------
    >>> s = QuantileSketch(0.01)
    >>> s.add(np.arange(1.0, 1001.0))
    >>> abs(s.quantile(0.99) - 990.01) <= 0.01 * 990.01
    True
    >>> s.count
    1000
    """

    def __init__(self, alpha: float = 0.01) -> None:
        self.alpha = _check_alpha(alpha)
        self._buckets = np.zeros(0, np.float64)
        self._counts = np.zeros(0, np.int64)

    @property
    def count(self) -> int:
        """Number of (non-NaN) values added."""
        return int(self._counts.sum())

    @property
    def n_buckets(self) -> int:
        """Memory held: number of occupied buckets."""
        return int(self._buckets.size)

    def add(self, values: np.ndarray | Sequence[float]) -> None:
        """Add values (NaN ignored)."""
        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        if v.size:
            b, c = np.unique(bucket_values(v, self.alpha), return_counts=True)
            self._merge_counts(b, c.astype(np.int64))

    def merge(self, other: QuantileSketch) -> None:
        """Add every value of ``other`` (same ``alpha`` required)."""
        if other.alpha != self.alpha:
            raise ValueError(f"cannot merge sketches with alpha {self.alpha} and {other.alpha}; use one alpha")
        self._merge_counts(other._buckets, other._counts)

    def _merge_counts(self, b: np.ndarray, c: np.ndarray) -> None:
        allb = np.concatenate([self._buckets, b])
        allc = np.concatenate([self._counts, c])
        self._buckets, inv = np.unique(allb, return_inverse=True)
        self._counts = np.bincount(inv.reshape(-1), weights=allc, minlength=self._buckets.size).astype(np.int64)

    def quantile(self, q: float) -> float | None:
        """Approximate ``q``-quantile (linear interpolation), ``None`` when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q={q!r} must be in [0, 1]")
        total = self.count
        if total == 0:
            return None
        cum = np.cumsum(self._counts)
        rank = (total - 1) * q
        lo, hi = math.floor(rank), math.ceil(rank)
        v_lo = float(self._buckets[np.searchsorted(cum, lo, side="right")])
        v_hi = float(self._buckets[np.searchsorted(cum, hi, side="right")])
        return v_lo + (v_hi - v_lo) * (rank - lo)

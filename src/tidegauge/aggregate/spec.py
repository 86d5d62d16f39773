"""Aggregation specs: what a window computes, parsed once at construction.

A window's ``aggregate`` argument maps a field (a value column) to the aggregations wanted on it::

    {"temperature": ["count", "mean", "p99", "quantile(0.75)"],
     "humidity": ["max", {"name": "temp_range", "expr": "max(temperature) - min(temperature)"}]}

Each entry becomes an :class:`AggSpec`. Output columns are named ``<field>_<agg>`` (``temperature_p99``,
``temperature_p75`` for ``quantile(0.75)``, ``temperature_q0_755`` for ``quantile(0.755)``); custom
expressions keep their own name.

Missing values: nulls *and NaN* in a field are ignored by that field's aggregations (NaN is treated as a
missing reading, not propagated), so ``count`` is the number of valid values, and ``mean``/``min``/...
of a window with no valid value is null. Numeric results are ``Float64``; ``count`` is ``UInt32``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import polars as pl

__all__ = [
    "AGGREGATIONS",
    "FAST_AGGREGATIONS",
    "AggSpec",
    "parse_aggregations",
    "polars_expression",
]

logger = logging.getLogger(__name__)

AggName = Literal["count", "sum", "mean", "min", "max", "std", "var", "first", "last", "quantile", "custom"]

FAST_AGGREGATIONS = frozenset({"count", "sum", "mean", "min", "max", "std", "var", "first", "last"})
"""Aggregations kept as mergeable running state (no raw values buffered)."""

_PERCENTILES = {"median": 0.5, "p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
AGGREGATIONS = (*sorted(FAST_AGGREGATIONS), *_PERCENTILES, "pNN", "quantile(q)", "{name, expr}")
"""Names accepted in an aggregation list (``pNN`` is any percentile such as ``p75``)."""

_QUANTILE = re.compile(r"^quantile\(\s*([0-9]*\.?[0-9]+)\s*\)$")
_PNN = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")


@dataclass(frozen=True, slots=True)
class AggSpec:
    """One output column of a window.

    Parameters
    ----------
    field:
        The input column (``None`` for a custom expression, which names its own columns).
    agg:
        The aggregation kind.
    name:
        The output column name.
    q:
        The quantile in [0, 1] for ``agg="quantile"``.
    expr:
        The polars expression of a custom aggregation (already aliased to ``name``).
    """

    field: str | None
    agg: AggName
    name: str
    q: float | None = None
    expr: pl.Expr | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """Input columns this aggregation reads."""
        if self.expr is not None:
            return tuple(dict.fromkeys(self.expr.meta.root_names()))
        assert self.field is not None  # every non-custom spec has a field, by construction
        return (self.field,)

    @property
    def fast(self) -> bool:
        """Whether this aggregation is computed from running state rather than buffered rows."""
        return self.agg in FAST_AGGREGATIONS

    def describe(self) -> str:
        """A stable text form (used to check that a snapshot belongs to the same definition)."""
        extra = f"({self.q})" if self.q is not None else ""
        extra += f"[{self.expr.meta.serialize(format='json')}]" if self.expr is not None else ""
        return f"{self.name}={self.field}:{self.agg}{extra}"


def _quantile_name(field: str, q: float) -> str:
    pct = q * 100
    if abs(pct - round(pct)) < 1e-9:
        return f"{field}_p{round(pct)}"
    return f"{field}_q{str(q).replace('.', '_')}"


def _parse_one(field: str, item: object) -> AggSpec:
    if isinstance(item, AggSpec):
        return item
    if isinstance(item, pl.Expr):
        name = item.meta.output_name(raise_if_undetermined=False)
        if not name or name in item.meta.root_names():
            raise ValueError(f"aggregate[{field!r}]: custom expression {item} needs a name; add .alias('my_name')")
        return AggSpec(None, "custom", name, expr=item)
    if isinstance(item, Mapping):
        if set(item) != {"name", "expr"}:
            raise ValueError(
                f"aggregate[{field!r}]: a custom aggregation is {{name: ..., expr: ...}}, got keys {sorted(item)}"
            )
        name, sql = item["name"], item["expr"]
        if not isinstance(name, str) or not isinstance(sql, str) or not name:
            raise ValueError(f"aggregate[{field!r}]: custom aggregation name and expr must be strings")
        try:
            expr = pl.sql_expr(sql)
        except Exception as exc:
            raise ValueError(
                f"aggregate[{field!r}]: custom aggregation {name!r} has an invalid SQL expression {sql!r}: {exc}"
            ) from exc
        assert isinstance(expr, pl.Expr)  # a single string gives a single expression
        return AggSpec(None, "custom", name, expr=expr.alias(name))
    if not isinstance(item, str):
        raise TypeError(
            f"aggregate[{field!r}]: expected an aggregation name, a {{name, expr}} mapping or a polars "
            f"expression, got {type(item).__name__}"
        )
    text = item.strip().lower()
    if text in FAST_AGGREGATIONS:
        return AggSpec(field, text, f"{field}_{text}")  # type: ignore[arg-type]
    q: float | None = None
    if text in _PERCENTILES:
        q = _PERCENTILES[text]
    elif m := _PNN.match(text):
        q = float(m.group(1)) / 100
    elif m := _QUANTILE.match(text):
        q = float(m.group(1))
    if q is None or not 0.0 <= q <= 1.0 or math.isnan(q):
        raise ValueError(
            f"aggregate[{field!r}]: unknown aggregation {item!r}; valid ones are {', '.join(AGGREGATIONS)} "
            "(quantile q in [0, 1])"
        )
    name = f"{field}_median" if text == "median" else _quantile_name(field, q)
    return AggSpec(field, "quantile", name, q=q)


def parse_aggregations(aggregate: Mapping[str, Sequence[object]]) -> tuple[AggSpec, ...]:
    """Parse a ``{field: [aggregation, ...]}`` mapping into :class:`AggSpec` objects.

    Raises
    ------
    ValueError
        For an unknown aggregation name (the message lists the valid ones), an empty mapping, or two
        aggregations with the same output name.

    Examples
    --------
    >>> [s.name for s in parse_aggregations({"temperature": ["mean", "p99", "quantile(0.75)"]})]
    ['temperature_mean', 'temperature_p99', 'temperature_p75']
    """
    if not isinstance(aggregate, Mapping) or not aggregate:
        raise ValueError(
            f"aggregate: expected a non-empty mapping {{field: [aggregations]}}, got {aggregate!r}; "
            "e.g. {'temperature': ['mean', 'max']}"
        )
    specs: list[AggSpec] = []
    for field, items in aggregate.items():
        if not isinstance(field, str):
            raise TypeError(f"aggregate: field names must be strings, got {field!r}")
        if isinstance(items, str | pl.Expr | Mapping):
            items = [items]
        specs.extend(_parse_one(field, item) for item in items)
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"aggregate: output column(s) {dupes} defined twice; remove the duplicates")
    reserved = {"window_start", "window_end"}
    if reserved & set(names):
        raise ValueError(f"aggregate: {sorted(reserved & set(names))} are reserved output names")
    return tuple(specs)


def polars_expression(spec: AggSpec, time_column: str) -> pl.Expr:
    """The polars group-by expression computing ``spec`` over raw rows.

    Rows must already have NaN replaced by null in the aggregated fields; ``first``/``last`` follow
    ``time_column`` with ties broken by row order (arrival).
    """
    if spec.agg == "custom":
        assert spec.expr is not None
        return spec.expr
    col = pl.col(spec.field)  # type: ignore[arg-type]
    match spec.agg:
        case "count":
            e = col.count()
        case "sum":
            e = col.cast(pl.Float64).sum()
        case "mean":
            e = col.cast(pl.Float64).mean()
        case "min":
            e = col.cast(pl.Float64).min()
        case "max":
            e = col.cast(pl.Float64).max()
        case "std":
            e = col.cast(pl.Float64).std(ddof=1)
        case "var":
            e = col.cast(pl.Float64).var(ddof=1)
        case "first":
            e = col.cast(pl.Float64).sort_by(time_column, maintain_order=True).drop_nulls().first()
        case "last":
            e = col.cast(pl.Float64).sort_by(time_column, maintain_order=True).drop_nulls().last()
        case "quantile":
            e = col.cast(pl.Float64).quantile(spec.q, interpolation="linear")  # type: ignore[arg-type]
        case _:  # pragma: no cover - AggName is exhaustive
            raise ValueError(f"unknown aggregation {spec.agg!r}")
    return e.alias(spec.name)

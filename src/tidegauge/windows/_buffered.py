"""Aggregation of buffered raw rows with one polars group-by (sessions, count windows)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

from tidegauge.aggregate.sketch import bucket_expr, sketch_quantiles
from tidegauge.aggregate.spec import AggSpec, polars_expression
from tidegauge.dataflow.base import TS

__all__ = ["SEQ", "aggregate_rows", "needed_columns"]

logger = logging.getLogger(__name__)

SEQ = "_tg_seq"
"""Internal column: arrival order of buffered rows (ties of first/last are broken by it)."""


def needed_columns(specs: Sequence[AggSpec]) -> list[str]:
    """User columns the aggregations read."""
    return list(dict.fromkeys(c for s in specs for c in s.columns))


def aggregate_rows(
    rows: pl.DataFrame, by: Sequence[str], specs: Sequence[AggSpec], *, sketch: bool, alpha: float
) -> pl.DataFrame:
    """One row per group of ``by`` with a column per spec (``rows`` NaN-cleaned, any order)."""
    by = list(by)
    rows = rows.sort(SEQ)
    sketched = [s for s in specs if sketch and s.agg == "quantile"]
    exprs = [polars_expression(s, TS) for s in specs if s not in sketched]
    out = rows.group_by(by, maintain_order=True).agg(exprs) if exprs else rows.select(by).unique(by)
    for field in dict.fromkeys(s.field for s in sketched if s.field is not None):
        qs = {s.name: s.q for s in sketched if s.field == field and s.q is not None}
        counts = rows.select(*by, bucket_expr(field, alpha).alias("b"), pl.lit(1, pl.Int64).alias("n"))
        res = sketch_quantiles(counts.drop_nulls("b"), by, qs)
        out = out.join(res, on=by, how="left", maintain_order="left")
    return out

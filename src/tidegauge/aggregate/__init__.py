"""Aggregations for windows: specs, polars expressions and quantile sketches.

Contract: :func:`parse_aggregations` turns ``{field: [aggregation, ...]}`` into :class:`AggSpec` objects;
mergeable aggregations (:data:`FAST_AGGREGATIONS`) are computed from running state by the window engine,
quantiles either exactly (buffered values) or with a :class:`QuantileSketch` of documented relative error,
and custom aggregations are polars expressions (``pl.Expr`` with an alias, or SQL via ``polars.sql_expr``).
"""

from __future__ import annotations

from tidegauge.aggregate.sketch import MIN_MAGNITUDE, QuantileSketch, bucket_expr, sketch_quantiles
from tidegauge.aggregate.spec import (
    AGGREGATIONS,
    FAST_AGGREGATIONS,
    AggSpec,
    parse_aggregations,
    polars_expression,
)

__all__ = [
    "AGGREGATIONS",
    "FAST_AGGREGATIONS",
    "MIN_MAGNITUDE",
    "AggSpec",
    "QuantileSketch",
    "bucket_expr",
    "parse_aggregations",
    "polars_expression",
    "sketch_quantiles",
]

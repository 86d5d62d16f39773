"""Parsing of aggregation lists."""

from __future__ import annotations

import polars as pl
import pytest

from tidegauge.aggregate import AGGREGATIONS, AggSpec, parse_aggregations, polars_expression


def test_names_and_kinds() -> None:
    specs = parse_aggregations({"t": ["count", "std", "p99", "median", "p75", "quantile(0.755)", "Mean"], "h": "max"})
    assert [s.name for s in specs] == [
        "t_count", "t_std", "t_p99", "t_median", "t_p75", "t_q0_755", "t_mean", "h_max",
    ]  # fmt: skip
    assert [s.q for s in specs if s.agg == "quantile"] == [0.99, 0.5, 0.75, 0.755]
    assert [s.fast for s in specs] == [True, True, False, False, False, False, True, True]


def test_custom_sql_and_expr() -> None:
    sql, expr = parse_aggregations(
        {"t": [{"name": "rng", "expr": "max(t) - min(t)"}, (pl.col("t").sum() * 2).alias("twice")]}
    )
    assert (sql.name, sql.agg, sql.columns) == ("rng", "custom", ("t",))
    df = pl.DataFrame({"t": [1.0, 4.0]})
    assert df.select(polars_expression(sql, "ts"), polars_expression(expr, "ts")).row(0) == (3.0, 10.0)


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("avg", "unknown aggregation 'avg'; valid ones are count"),
        ("quantile(2)", "quantile q in"),
        ({"name": "x"}, "name: ..., expr: ..."),
        ({"name": "x", "expr": "max(("}, "invalid SQL expression"),
        (pl.col("t").max(), "needs a name"),
    ],
)
def test_errors_name_the_problem(item: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_aggregations({"t": [item]})


def test_wrong_type_is_type_error() -> None:
    with pytest.raises(TypeError, match="expected an aggregation name"):
        parse_aggregations({"t": [3]})


def test_listing_and_prebuilt_spec() -> None:
    assert "p99" in AGGREGATIONS and "quantile(q)" in AGGREGATIONS
    spec = AggSpec("t", "max", "hottest")
    assert parse_aggregations({"t": [spec]}) == (spec,)

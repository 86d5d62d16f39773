"""``with_series``/``without``: the hot path's column moves give what ``with_columns``/``drop`` give."""

from __future__ import annotations

import polars as pl
import pytest

from tidegauge.dataflow.base import with_series, without

DF = pl.DataFrame({"a": [1, 2], "b": ["x", "y"], "c": [0.5, None]})


@pytest.mark.parametrize("columns", [
    [pl.Series("a", [5, 6])],
    [pl.Series("z", [True, False]), pl.Series("b", ["p", "q"])],
    [pl.Series("c", [1, 2], dtype=pl.Int8), pl.Series("d", [None, None], dtype=pl.String), pl.Series("e", [1, 1])],
])
def test_with_series_is_with_columns(columns: list[pl.Series]) -> None:
    got = with_series(DF, *columns)
    want = DF.with_columns(*columns)
    assert got.columns == want.columns and got.schema == want.schema and got.equals(want)
    assert DF.columns == ["a", "b", "c"] and DF["a"].to_list() == [1, 2]  # the input is untouched


def test_with_series_checks_lengths_and_fills_an_empty_frame() -> None:
    with pytest.raises(ValueError, match="3 values for a batch of 2"):
        with_series(DF, pl.Series("a", [1, 2, 3]))
    assert with_series(pl.DataFrame(), pl.Series("a", [1, 2])).equals(pl.DataFrame({"a": [1, 2]}))


@pytest.mark.parametrize("names", [["a"], ["b", "c"], ["zz"], [], ["c", "zz", "a"]])
def test_without_is_drop_of_the_present_columns(names: list[str]) -> None:
    got = without(DF, names)
    assert got.equals(DF.drop([n for n in names if n in DF.columns]))
    assert DF.columns == ["a", "b", "c"]

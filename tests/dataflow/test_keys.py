"""The key dictionary: ids by first appearance, the same whichever lookup path a batch takes.

String keys are looked up in a dict for small batches and in a compiled hash table (which rehashes as it
doubles) for large ones, other key types by a join; the ids must not depend on the batching or the path,
and must survive a snapshot.
"""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tidegauge.dataflow.keys import _TABLE_MIN_ROWS, KeyDictionary

_POOL = [f"k{i}" for i in range(3 * _TABLE_MIN_ROWS)]
# batches below and above the table's threshold, so that a run mixes the two paths
keys = st.one_of(st.lists(st.sampled_from(_POOL[:40]), min_size=1, max_size=60),
                 st.lists(st.sampled_from(_POOL), min_size=_TABLE_MIN_ROWS, max_size=2 * _TABLE_MIN_ROWS))


def first_appearance(batches: list[list[str]]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for batch in batches:
        for k in batch:
            ids.setdefault(k, len(ids))
    return ids


@settings(max_examples=60, deadline=None)
@given(st.lists(keys, min_size=1, max_size=8))
def test_ids_are_first_appearance_order_whatever_the_path(batches: list[list[str]]) -> None:
    d = KeyDictionary()
    want = first_appearance(batches)
    for batch in batches:
        got = d.encode(pl.Series("k", batch))
        assert got.dtype == pl.UInt32
        assert got.to_list() == [want[k] for k in batch]
    restored = KeyDictionary(d.snapshot())
    again = [k for b in batches for k in b]
    assert restored.encode(pl.Series("k", again)).to_list() == [want[k] for k in again]


def test_ids_hold_across_table_growth_sliced_input_and_a_restore_mid_stream() -> None:
    d = KeyDictionary()
    known = [f"S{i:05d}" for i in range(5_000)]  # the table doubles several times on the way
    assert d.encode(pl.Series("k", known[:300])).to_list() == list(range(300))  # the dict
    assert d.encode(pl.Series("k", known)).to_list() == list(range(len(known)))  # the table catches up
    assert d.encode(pl.Series("k", known[::-1])).to_list() == list(range(len(known)))[::-1]
    sliced = pl.Series("k", known).slice(100, _TABLE_MIN_ROWS)  # an offset into the Arrow buffers
    assert d.encode(sliced).to_list() == list(range(100, 100 + _TABLE_MIN_ROWS))
    mixed = pl.Series("k", ["new-1", known[7], "new-2", known[7], "", "é-ü"])  # new keys among known ones
    n = len(known)
    assert d.encode(mixed).to_list() == [n, 7, n + 1, 7, n + 2, n + 3]
    assert d.decode(pl.Series([n + 3, n + 2, 7], dtype=pl.UInt32)).to_list() == ["é-ü", "", known[7]]
    assert d.encode(pl.Series("k", ["new-4", *known[:_TABLE_MIN_ROWS]])).to_list()[:2] == [n + 4, 0]
    restored = KeyDictionary(d.snapshot())
    assert restored.encode(pl.Series("k", ["new-3", "new-2", known[0]])).to_list() == [n + 5, n + 1, 0]
    big = pl.Series("k", ["new-5", "new-4", *known[:_TABLE_MIN_ROWS]])  # the table, after the dict added one
    assert restored.encode(big).to_list()[:3] == [n + 6, n + 4, 0]
    assert restored.decode(pl.Series([n + 5, n + 6], dtype=pl.UInt32)).to_list() == ["new-3", "new-5"]


def test_numeric_keys_take_the_join_path_with_the_same_contract() -> None:
    d = KeyDictionary()
    assert d.encode(pl.Series("k", [30, 10, 30])).to_list() == [0, 1, 0]
    assert d.encode(pl.Series("k", [20, 10])).to_list() == [2, 1]
    assert KeyDictionary(d.snapshot()).decode(pl.Series([2, 0], dtype=pl.UInt32)).to_list() == [20, 30]

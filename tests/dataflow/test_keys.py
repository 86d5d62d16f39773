"""The key dictionary: ids by first appearance, the same whichever lookup path a batch takes.

Small string batches are looked up in a Python dict, large ones by the polars Enum cast, batches with new
keys by a join; the ids must not depend on which, and must survive a snapshot.
"""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tidegauge.dataflow.keys import _DICT_LOOKUP_MAX, KeyDictionary

keys = st.lists(st.sampled_from([f"k{i}" for i in range(40)]), min_size=1, max_size=60)


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


def test_small_and_large_batches_agree_past_the_dict_threshold() -> None:
    d = KeyDictionary()
    known = [f"S{i:05d}" for i in range(3 * _DICT_LOOKUP_MAX)]
    assert d.encode(pl.Series("k", known)).to_list() == list(range(len(known)))
    large = pl.Series("k", known[::-1])  # above the threshold: the Enum cast
    small = pl.Series("k", known[5:25])  # below it: the dict
    assert d.encode(large).to_list() == list(range(len(known)))[::-1]
    assert d.encode(small).to_list() == list(range(5, 25))
    mixed = pl.Series("k", ["new-1", known[7], "new-2", known[7]])  # new keys among known ones
    assert d.encode(mixed).to_list() == [len(known), 7, len(known) + 1, 7]
    assert d.encode(pl.Series("k", ["new-2"])).to_list() == [len(known) + 1]

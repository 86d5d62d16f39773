"""The key dictionary: key values <-> dense integer ids.

Keys are encoded once, at the source, so that every stateful step can keep per-key state in arrays
indexed by the id. Ids are given in order of first appearance and never reused; the dictionary is part
of every checkpoint, so ids are stable across restarts.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import polars as pl

from tidegauge.dataflow._keytable import KeyTable
from tidegauge.dataflow.base import KEY_ID

__all__ = ["KeyDictionary", "KeyDictionarySnapshot"]

_TABLE_MIN_ROWS = 512
"""Batches of string keys from this size are looked up in the compiled table, smaller ones in a dict
(where the two cost the same: ``benchmarks/README.md``, 2026-12-05)."""

logger = logging.getLogger(__name__)


class KeyDictionarySnapshot(msgspec.Struct, frozen=True, tag="keys/1"):
    """Checkpointed form: the key values in id order, as JSON-able scalars."""

    dtype: str
    values: list[str | int | float | bool]


class KeyDictionary:
    """Maps a key column to ``UInt32`` ids (first appearance order).

    >>> d = KeyDictionary()
    >>> d.encode(pl.Series("k", ["b", "a", "b"])).to_list()
    [0, 1, 0]
    >>> d.decode(pl.Series([1, 0], dtype=pl.UInt32)).to_list()
    ['a', 'b']
    """

    def __init__(self, snapshot: KeyDictionarySnapshot | None = None) -> None:
        self._table: pl.DataFrame | None = None
        # String keys: ``_table`` holds them in id order; two lookups follow it, each brought up to date
        # with the keys added since its last use (so both give the same ids): a dict for small batches
        # (~0.1 us a key, no fixed cost, no numba in a light flow) and, from _TABLE_MIN_ROWS rows, a
        # compiled hash table kept between batches (see _keytable; ~30 ns a key plus ~20 us a batch).
        self._index: dict[str, int] = {}
        self._strings: KeyTable | None = None
        if snapshot is not None and snapshot.values:
            dtype = _dtype_from_name(snapshot.dtype)
            self._table = pl.DataFrame(
                {
                    "key": pl.Series("key", snapshot.values, dtype=dtype),
                    KEY_ID: pl.arange(0, len(snapshot.values), dtype=pl.UInt32, eager=True),
                }
            )

    def __len__(self) -> int:
        return 0 if self._table is None else self._table.height

    @property
    def values(self) -> pl.Series:
        """All keys in id order."""
        if self._table is None:
            return pl.Series("key", [], dtype=pl.String)
        return self._table["key"]

    def encode(self, keys: pl.Series) -> pl.Series:
        """Ids of ``keys`` (new keys get new ids). ``keys`` must have no nulls."""
        if keys.dtype == pl.String and not keys.null_count() and (
                self._table is None or self._table.schema["key"] == pl.String):
            if keys.len() < _TABLE_MIN_ROWS:
                return self._encode_dict(keys)
            return self._encode_table(keys)
        return self._encode_join(keys)  # keys of another type (numeric keys; rare)

    def _encode_dict(self, keys: pl.Series) -> pl.Series:
        index = self._index
        known = len(self)
        if len(index) < known:
            assert self._table is not None
            base = len(index)
            index.update((k, base + i) for i, k in enumerate(self._table["key"][base:].to_list()))
        ids = []
        new: list[str] = []
        for k in keys.to_list():
            i = index.get(k)
            if i is None:
                i = index[k] = known + len(new)
                new.append(k)
            ids.append(i)
        if new:
            self._append(pl.Series("key", new, dtype=pl.String), known)
        return pl.Series(KEY_ID, ids, dtype=pl.UInt32)

    def _encode_table(self, keys: pl.Series) -> pl.Series:
        table = self._strings
        if table is None:
            table = self._strings = KeyTable()
        known = len(self)
        if len(table) < known:  # keys added by the dict path or a snapshot: the same ids, in order
            assert self._table is not None
            table.encode(_large_strings(self._table["key"][len(table):]))
        ids = table.encode(_large_strings(keys))
        if len(table) > known:
            self._append(pl.Series("key", table.keys(known, len(table)), dtype=pl.String), known)
        return pl.Series(KEY_ID, ids, dtype=pl.UInt32)

    def _append(self, new: pl.Series, start: int) -> None:
        added = pl.DataFrame({"key": new, KEY_ID: pl.arange(start, start + new.len(), dtype=pl.UInt32, eager=True)})
        self._table = added if self._table is None else pl.concat([self._table, added])

    def _encode_join(self, keys: pl.Series) -> pl.Series:
        frame = keys.alias("key").to_frame()
        if self._table is None:
            self._append(keys.alias("key").unique(maintain_order=True), 0)
        elif keys.dtype != self._table.schema["key"]:
            frame = frame.with_columns(pl.col("key").cast(self._table.schema["key"]))
        assert self._table is not None
        joined = frame.join(self._table, on="key", how="left", maintain_order="left")
        ids = joined[KEY_ID]
        if ids.null_count():
            self._append(joined.filter(pl.col(KEY_ID).is_null())["key"].unique(maintain_order=True), len(self))
            ids = frame.join(self._table, on="key", how="left", maintain_order="left")[KEY_ID]
        return ids.alias(KEY_ID)

    def decode(self, ids: pl.Series | pl.Expr) -> pl.Series:
        """Key values for ``ids``."""
        if isinstance(ids, pl.Expr):
            raise TypeError("decode takes a Series of ids")
        return self.values.gather(ids.cast(pl.UInt32)).alias("key")

    def snapshot(self) -> KeyDictionarySnapshot:
        if self._table is None:
            return KeyDictionarySnapshot(dtype="String", values=[])
        return KeyDictionarySnapshot(dtype=_dtype_name(self._table.schema["key"]), values=self.values.to_list())


def _large_strings(keys: pl.Series) -> Any:
    """``keys`` as a pyarrow ``large_string`` array (what polars exports; a copy of the bytes, ~4 ns a key)."""
    import pyarrow as pa  # here, not at import: ~26 MB resident in every process that imports the flow

    array = keys.to_arrow()
    return array if array.type == pa.large_string() else array.cast(pa.large_string())


def _dtype_name(dtype: pl.DataType) -> str:
    return "String" if dtype == pl.String else str(dtype.base_type().__name__)


def _dtype_from_name(name: str) -> pl.DataType:
    dtype = getattr(pl, name, None)
    if isinstance(dtype, type) and issubclass(dtype, pl.DataType):
        return dtype()
    raise ValueError(f"unknown key dtype {name!r} in checkpoint")

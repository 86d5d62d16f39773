"""Typed ingest records: the msgspec Struct of an HTTP source's schema, and its hand-off to the flow as columns.

The server validates each request by decoding it into :attr:`RecordCodec.record` (msgspec, in C). The
accepted records then reach the flow without being parsed again: :meth:`RecordCodec.pack` encodes them
as msgpack (msgspec, about a third of the decode's cost), the intake log keeps that next to the NDJSON it
writes (:mod:`tidegauge.connectors.intake`, in memory only), and :meth:`RecordCodec.frame` turns the
packed records of a whole batch into a polars DataFrame in one compiled pass
(:mod:`tidegauge.connectors._unpack`): floats are copied bit for bit, times are already microseconds.
On replay (the frames read back from the file) the NDJSON is decoded by the same Struct and packed the
same way, so the flow sees exactly the same values either way.

Constraints of the Struct (what the server rejects as ``invalid``): strings at most 4,096 characters, the
key 1-256; floats finite and within float64; ints within int64; the time an RFC 3339 timestamp with a
zone, or epoch seconds within +-1e11.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import polars as pl
import pyarrow as pa

from tidegauge.connectors import _ndjson, _unpack

__all__ = ["FieldType", "RecordCodec"]

logger = logging.getLogger(__name__)

FieldType = Literal["str", "float", "int", "bool", "timestamp"]
"""Type of a field of an ingested record; ``timestamp`` is an RFC 3339 string with a zone, or epoch seconds."""

_FINITE = msgspec.Meta(ge=-1.7e308, le=1.7e308)  # rejects inf (and "huge numbers" beyond float64)
_EPOCH = msgspec.Meta(ge=-1e11, le=1e11)  # epoch seconds within +-3000 years: beyond that, a unit mistake
_TYPES: dict[str, Any] = {
    "str": Annotated[str, msgspec.Meta(max_length=4096)],
    "float": Annotated[float, _FINITE],
    "int": Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)],
    "bool": bool,
    "timestamp": Annotated[datetime, msgspec.Meta(tz=True)] | Annotated[float, _EPOCH],
}
_KEY = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_KINDS = {"str": _unpack.STR, "float": _unpack.FLOAT, "int": _unpack.INT, "bool": _unpack.BOOL,
          "timestamp": _unpack.TIME}
_ARROW: dict[str, pa.DataType] = {"str": pa.large_string(), "float": pa.float64(), "int": pa.int64(),
                                  "bool": pa.bool_(), "timestamp": pa.timestamp("us", "UTC")}


class RecordCodec:
    """The record Struct of ``schema`` (``key`` and ``time`` required, other fields optional) and its packing.

    Examples
    --------
    >>> codec = RecordCodec({"sensor_id": "str", "timestamp": "timestamp", "t": "float"})
    >>> recs = codec.decode_lines(b'{"sensor_id":"a","timestamp":"2026-01-01T00:00:00Z","t":1}\\n')
    >>> codec.frame([codec.pack(recs)], len(recs)).rows()
    [('a', datetime.datetime(2026, 1, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 1.0)]
    """

    def __init__(self, schema: Mapping[str, FieldType], *, key: str = "sensor_id", time: str = "timestamp") -> None:
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for name, type_ in schema.items():
            if type_ not in _TYPES:
                raise ValueError(f"field {name!r}: type {type_!r}; use one of {', '.join(_TYPES)}")
            if name == key:
                fields.append((name, _KEY))
            elif name == time:
                fields.append((name, _TYPES[type_]))
            else:
                fields.append((name, _TYPES[type_] | None, None))
        fields.sort(key=len)  # required fields first, as Python requires
        self.schema = dict(schema)
        self.key, self.time = key, time
        # gc=False: records hold only scalars (no cycles), and a body decodes thousands of them: leaving
        # them untracked spares the garbage collector's passes over every decoded batch
        self.record: type[msgspec.Struct] = msgspec.defstruct("Record", fields, frozen=True, gc=False)
        self._lines = msgspec.json.Decoder(self.record)
        self._pack = msgspec.msgpack.Encoder().encode
        order = [f[0] for f in fields]  # the Struct's field order, which msgspec encodes in
        self._fields = order
        encoded = [name.encode() for name in order]
        self._names = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._name_at = np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64)
        self._kinds = np.array([_KINDS[schema[name]] for name in order], dtype=np.int64)
        self._arrow = [_ARROW[schema[name]] for name in order]
        self._schema_order = list(schema)
        # the compiled reader checks what the Struct checks: required fields, string lengths (in characters)
        self._required = np.array([name in (key, time) for name in order], dtype=np.bool_)
        self._min_chars = np.array([1 if name == key else 0 for name in order], dtype=np.int64)
        self._max_chars = np.array([256 if name == key else 4096 if schema[name] == "str" else -1 for name in order],
                                   dtype=np.int64)
        # ... only where the Struct's types are the schema's (a key declared other than "str" is a str in the
        # Struct: such a schema goes through msgspec only)
        self._scannable = schema.get(key) == "str"
        self._scratch = np.empty((3, 0), dtype=np.int64)  # the server's validation scans (one thread)

    def decode_lines(self, ndjson: bytes) -> list[Any]:
        """Records of an NDJSON body (raises ``msgspec.DecodeError`` / ``msgspec.ValidationError``)."""
        return self._lines.decode_lines(ndjson)

    def pack(self, records: Sequence[Any]) -> bytes:
        """``records`` (of :attr:`record`) as msgpack, the form :meth:`frame` reads."""
        return self._pack(records)

    def scan_count(self, body: bytes) -> int | None:
        """Records of ``body`` if the compiled reader validates all of them (else ``None``: use msgspec).

        For the server, on one thread: the columns go to scratch arrays, reused.
        """
        if not self._scannable:
            return None
        buf = np.frombuffer(body, dtype=np.uint8)
        cap = int(_ndjson.count_objects(buf))
        nf = len(self._fields)
        if self._scratch.shape[1] < nf * cap:
            self._scratch = np.empty((3, nf * cap), dtype=np.int64)
        values = self._scratch[0, :nf * cap].reshape(nf, cap)
        lengths = self._scratch[1, :nf * cap].reshape(nf, cap)
        valid = self._scratch[2, :nf * cap].view(np.bool_)[:nf * cap].reshape(nf, cap)
        n = self._scan(buf, 0, values, valid, lengths)
        return None if n < 0 else int(n)

    def frame_ndjson(self, payloads: Sequence[bytes]) -> pl.DataFrame | None:
        """One DataFrame of NDJSON payloads, read by the compiled reader; ``None`` if it does not take one."""
        if not self._scannable:
            return None
        bufs = [np.frombuffer(p, dtype=np.uint8) for p in payloads]
        cap = sum(int(_ndjson.count_objects(b)) for b in bufs)
        values, valid, lengths = self._columns(cap)
        buffers, row = [], 0
        for buf in bufs:
            n = self._scan(buf, row, values, valid, lengths)
            if n < 0:
                return None
            buffers.append((buf, row, n))
            row += n
        return self._frame(values, valid, lengths, buffers, row)

    def frame(self, packed: Sequence[bytes], rows: int) -> pl.DataFrame | None:
        """One DataFrame (columns in schema order) of the packed lists of records, ``rows`` of them in all.

        ``None`` if a payload is not what :meth:`pack` makes for this schema (another schema's records).
        """
        values, valid, lengths = self._columns(rows)
        buffers, row = [], 0
        for payload in packed:
            buf = np.frombuffer(payload, dtype=np.uint8)
            n = _unpack.unpack(buf, row, self._names, self._name_at, self._kinds, values, valid, lengths)
            if n < 0:
                return None
            buffers.append((buf, row, n))
            row += n
        if row != rows:
            return None
        return self._frame(values, valid, lengths, buffers, rows)

    def _scan(self, buf: np.ndarray, row0: int, values: np.ndarray, valid: np.ndarray, lengths: np.ndarray) -> int:
        n: int = _ndjson.scan(buf, row0, self._names, self._name_at, self._kinds, self._min_chars, self._max_chars,
                              self._required, values, valid, lengths)
        return n

    def _columns(self, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nf = len(self._fields)
        # lengths by calloc: the rows of non-string fields are never written, and cost nothing
        return (np.empty((nf, rows), dtype=np.int64), np.empty((nf, rows), dtype=np.bool_),
                np.zeros((nf, rows), dtype=np.int64))

    def _frame(self, values: np.ndarray, valid: np.ndarray, lengths: np.ndarray,
               buffers: list[tuple[np.ndarray, int, int]], rows: int) -> pl.DataFrame:
        columns = [self._column(f, values, valid, lengths, buffers, rows) for f in range(len(self._fields))]
        df = pl.from_arrow(pa.Table.from_arrays(columns, names=self._fields))
        assert isinstance(df, pl.DataFrame)  # from a Table, always
        return df.select(self._schema_order)

    def _column(self, f: int, values: np.ndarray, valid: np.ndarray, lengths: np.ndarray,
                buffers: list[tuple[np.ndarray, int, int]], rows: int) -> pa.Array:
        type_ = self._arrow[f]
        ok = valid[f, :rows]
        nulls = rows - int(np.count_nonzero(ok))
        if nulls == rows:
            return pa.nulls(rows, type_)
        mask = None if not nulls else pa.py_buffer(np.packbits(ok, bitorder="little"))
        kind = self._kinds[f]
        if kind == _unpack.BOOL:
            return pa.array(values[f, :rows].astype(np.bool_), mask=~ok if nulls else None)
        if kind != _unpack.STR:  # int64 slots: float bits, integers or microseconds, as Arrow reads them
            return pa.Array.from_buffers(type_, rows, [mask, pa.py_buffer(values[f, :rows])], null_count=nulls)
        offsets = np.empty(rows + 1, dtype=np.int64)
        offsets[0] = 0
        data = np.empty(int(lengths[f, :rows].sum()), dtype=np.uint8)
        used = 0
        for buf, row0, n in buffers:
            used = _unpack.gather_strings(buf, values, lengths, valid, f, row0, n, offsets, data, used)
        return pa.Array.from_buffers(type_, rows, [mask, pa.py_buffer(offsets), pa.py_buffer(data)],
                                     null_count=nulls)

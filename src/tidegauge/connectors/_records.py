"""Typed ingest records: the msgspec Struct of an HTTP source's schema, and its hand-off to the flow as columns.

The server validates each request as :attr:`RecordCodec.record` (msgspec) says. Plain NDJSON records
(the usual case) are validated by the compiled reader of :mod:`tidegauge.connectors._ndjson` instead,
which applies the same rules without the GIL and writes the values into columns (:meth:`RecordCodec.scan`);
anything else is decoded by msgspec and :meth:`RecordCodec.pack` encodes the accepted records as msgpack
(msgspec, about a third of the decode's cost). The intake log keeps either form in memory next to the
NDJSON it writes (:mod:`tidegauge.connectors.intake`), and the flow turns it into a polars DataFrame:
:meth:`RecordCodec.frame_columns`, or :meth:`RecordCodec.frame` for packed records (one compiled pass,
:mod:`tidegauge.connectors._unpack`: floats copied bit for bit, times already microseconds). So the flow
does not parse the records again. Frames read back from the file (a replay) are read by the compiled
reader again (:meth:`RecordCodec.frame_ndjson`), else decoded by the same Struct and packed, so a replay
gives exactly the values the live flow got.

Constraints of the Struct (what the server rejects as ``invalid``): strings at most 4,096 characters, the
key 1-256; floats finite and within float64; ints within int64; the time an RFC 3339 timestamp with a
zone, or epoch seconds within +-1e11.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import numpy as np
import polars as pl

from tidegauge.connectors import _ndjson, _unpack

__all__ = ["Columns", "FieldType", "RecordCodec"]

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
_POLARS: dict[str, pl.DataType] = {"str": pl.String(), "float": pl.Float64(), "int": pl.Int64(),
                                   "bool": pl.Boolean(), "timestamp": pl.Datetime("us", "UTC")}


class Columns(NamedTuple):
    """Records read by :meth:`RecordCodec.scan`: field-by-row slots (see :func:`._unpack.unpack`) of ``buf``."""

    values: np.ndarray
    valid: np.ndarray
    lengths: np.ndarray
    rows: int
    buf: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes held besides the body (what the intake log's in-memory queue counts)."""
        return int(self.values.nbytes + self.valid.nbytes + self.lengths.nbytes)


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
        self._polars = [_POLARS[schema[name]] for name in order]
        self._schema_order = list(schema)
        # the compiled reader checks what the Struct checks: required fields, string lengths (in characters)
        self._required = np.array([name in (key, time) for name in order], dtype=np.bool_)
        self._min_chars = np.array([1 if name == key else 0 for name in order], dtype=np.int64)
        self._max_chars = np.array([256 if name == key else 4096 if schema[name] == "str" else -1 for name in order],
                                   dtype=np.int64)
        # ... only where the Struct's types are the schema's (a key declared other than "str" is a str in the
        # Struct: such a schema goes through msgspec only)
        self._scannable = schema.get(key) == "str"
        self._nulls: dict[int, pl.Series] = {}  # field -> an all-null column, sliced for batches (immutable)

    def warm_up(self) -> None:
        """Compile the readers now (numba; seconds when its on-disk cache is cold) rather than at the first
        request, where it would hold up the server's event loop."""
        time_value = '"2026-01-01T00:00:00Z"' if self.schema[self.time] == "timestamp" else "0"
        body = f'{{"{self.key}":"w","{self.time}":{time_value}}}\n'.encode()
        columns = self.scan(body)
        if columns is not None:
            self.frame_columns([columns])
        self.frame([self.pack(self.decode_lines(body))], 1)

    def decode_lines(self, ndjson: bytes) -> list[Any]:
        """Records of an NDJSON body (raises ``msgspec.DecodeError`` / ``msgspec.ValidationError``)."""
        return self._lines.decode_lines(ndjson)

    def pack(self, records: Sequence[Any]) -> bytes:
        """``records`` (of :attr:`record`) as msgpack, the form :meth:`frame` reads."""
        return self._pack(records)

    def scan(self, body: bytes) -> Columns | None:
        """The records of ``body`` as columns, if the compiled reader validates all of them (else ``None``:
        use msgspec, which gives the reason of a bad record)."""
        if not self._scannable:
            return None
        buf = np.frombuffer(body, dtype=np.uint8)
        values, valid, lengths = self._columns(int(_ndjson.count_objects(buf)))
        n = self._scan(buf, 0, values, valid, lengths)
        return None if n < 0 else Columns(values, valid, lengths, int(n), buf)

    def frame_columns(self, parts: Sequence[Columns]) -> pl.DataFrame:
        """One DataFrame (columns in schema order) of :meth:`scan` results."""
        if len(parts) == 1:
            c = parts[0]
            return self._frame(c.values, c.valid, c.lengths, [(c.buf, 0, c.rows)], c.rows)
        values = np.concatenate([c.values[:, :c.rows] for c in parts], axis=1)
        valid = np.concatenate([c.valid[:, :c.rows] for c in parts], axis=1)
        lengths = np.concatenate([c.lengths[:, :c.rows] for c in parts], axis=1)
        buffers, row = [], 0
        for c in parts:
            buffers.append((c.buf, row, c.rows))
            row += c.rows
        return self._frame(values, valid, lengths, buffers, row)

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
        columns = {name: self._column(f, values, valid, lengths, buffers, rows) for f, name in enumerate(self._fields)}
        return pl.DataFrame([columns[name] for name in self._schema_order])

    def _column(self, f: int, values: np.ndarray, valid: np.ndarray, lengths: np.ndarray,
                buffers: list[tuple[np.ndarray, int, int]], rows: int) -> pl.Series:
        name, dtype = self._fields[f], self._polars[f]
        ok = valid[f, :rows]
        nulls = rows - int(np.count_nonzero(ok))
        if nulls == rows:  # a field nobody sends: a slice of a kept all-null column (pl.repeat costs ~70 us)
            kept = self._nulls.get(f)
            if kept is None or kept.len() < rows:
                kept = self._nulls[f] = pl.Series(name, [None], dtype=dtype).extend_constant(None, 2 * rows - 1)
            return kept.slice(0, rows)
        kind = self._kinds[f]
        if kind != _unpack.STR:  # int64 slots: float bits, integers, 0/1 or microseconds
            slots = values[f, :rows]
            if kind == _unpack.FLOAT:
                series = pl.Series(name, slots.view(np.float64))
            elif kind == _unpack.BOOL:
                series = pl.Series(name, slots.astype(np.bool_))
            else:
                series = pl.Series(name, slots).cast(dtype)  # Int64, or microseconds to Datetime (no copy)
            return series if not nulls else series.scatter(np.flatnonzero(~ok), None)
        offsets = np.empty(rows + 1, dtype=np.int64)
        offsets[0] = 0
        data = np.empty(int(lengths[f, :rows].sum()), dtype=np.uint8)
        used = 0
        for buf, row0, n in buffers:
            used = _unpack.gather_strings(buf, values, lengths, valid, f, row0, n, offsets, data, used)
        import pyarrow as pa  # here, not at import: ~26 MB resident in every process that imports the server

        mask = None if not nulls else pa.py_buffer(np.packbits(ok, bitorder="little"))
        array = pa.Array.from_buffers(pa.large_string(), rows, [mask, pa.py_buffer(offsets), pa.py_buffer(data)],
                                      null_count=nulls)
        if hasattr(pa, "string_view"):  # pyarrow >= 16
            # polars keeps strings as views: Arrow makes them about 3x faster than polars converts them
            array = array.cast(pa.string_view())
        series = pl.Series(name, array)
        assert isinstance(series, pl.Series)
        return series

"""Chunked readers behind :class:`~tidegauge.connectors.files_source.FileSource`.

A reader starts at a position (a byte offset for CSV/JSONL, a row index for Parquet) and returns at most
``n`` records per call together with the position *after* each record, so the source can hand out any
prefix and still know exactly where to resume. Memory is bounded by the chunk asked for.
"""

from __future__ import annotations

import csv
import itertools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tidegauge.connectors._fileparse import parse_csv_lines, parse_jsonl_lines

__all__ = ["LineReader", "ParquetReader", "Reader", "read_header", "sample_lines"]

logger = logging.getLogger(__name__)

_PARQUET_BATCH = 65_536
"""Rows per pyarrow read; large enough for throughput, small enough to keep memory flat."""


class Reader(Protocol):
    def read(self, n: int) -> tuple[pl.DataFrame, np.ndarray] | None:
        """Up to ``n`` records and the position after each; ``None`` at the end of the file."""
        ...

    def close(self) -> None: ...


def read_header(path: Path) -> tuple[list[str], int]:
    """The CSV header's column names and the byte offset of the first data line."""
    with open(path, "rb") as f:
        line = f.readline()
        offset = f.tell()
    if not line.strip():
        raise ValueError(f"{path}: the CSV file has no header line; the first line must name the columns")
    names = next(csv.reader([line.decode("utf-8-sig").rstrip("\r\n")]))
    return [n.strip() for n in names], offset


def sample_lines(path: Path, offset: int, n: int) -> list[bytes]:
    """The first ``n`` non-blank lines from ``offset`` (for schema inference)."""
    with open(path, "rb") as f:
        f.seek(offset)
        out = [ln.rstrip(b"\r\n") for ln in itertools.islice(f, n * 2) if ln.strip()]
    return out[:n]


class LineReader:
    """CSV or JSONL records, one per line, parsed chunk by chunk."""

    def __init__(
        self,
        path: Path,
        offset: int,
        *,
        kind: str,
        schema: Mapping[str, pl.DataType],
        header: list[str] | None = None,
    ) -> None:
        self._f = open(path, "rb")
        self._f.seek(offset)
        self._kind = kind
        self._schema = dict(schema)
        self._header = header or []

    def read(self, n: int) -> tuple[pl.DataFrame, np.ndarray] | None:
        while True:
            start = self._f.tell()
            chunk = list(itertools.islice(self._f, n))
            if not chunk:
                return None
            ends = start + np.cumsum(np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk)))
            keep = [i for i, ln in enumerate(chunk) if ln.strip()]
            if not keep:  # only blank lines: skip them and read on
                continue
            lines = [chunk[i].rstrip(b"\r\n") for i in keep]
            if self._kind == "csv":
                frame = parse_csv_lines(lines, self._header, self._schema)
            else:
                frame = parse_jsonl_lines(lines, self._schema)
            return frame, ends[keep]

    def close(self) -> None:
        self._f.close()


class ParquetReader:
    """Typed Parquet record batches from a row offset (row groups before it are never read)."""

    def __init__(self, path: Path, offset: int) -> None:
        self._pf = pq.ParquetFile(path)
        md = self._pf.metadata
        sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        if offset > starts[-1]:
            raise ValueError(f"{path}: resume position {offset} is past the end ({starts[-1]} rows)")
        first = int(np.searchsorted(starts, offset, side="right") - 1)
        first = min(first, max(md.num_row_groups - 1, 0))
        self._skip = offset - int(starts[first]) if md.num_row_groups else 0
        groups = list(range(first, md.num_row_groups))
        self._it = self._pf.iter_batches(batch_size=_PARQUET_BATCH, row_groups=groups) if groups else iter(())
        self._buf: pa.RecordBatch | None = None
        self._pos = offset

    def read(self, n: int) -> tuple[pl.DataFrame, np.ndarray] | None:
        while self._buf is None or self._buf.num_rows == 0:
            batch = next(self._it, None)
            if batch is None:
                return None
            if self._skip:
                cut = min(self._skip, batch.num_rows)
                batch = batch.slice(cut)
                self._skip -= cut
            self._buf = batch
        take = self._buf.slice(0, n)
        self._buf = self._buf.slice(take.num_rows)
        frame = cast(pl.DataFrame, pl.from_arrow(take))  # a RecordBatch always converts to a frame
        ends = self._pos + np.arange(1, take.num_rows + 1, dtype=np.int64)
        self._pos += take.num_rows
        return frame, ends

    def close(self) -> None:
        self._pf.close()

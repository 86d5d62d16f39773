"""Replay a CSV, JSONL or Parquet file as a stream, optionally paced by event time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import msgspec
import numpy as np
import polars as pl

from tidegauge._time import Clock, SystemClock, timestamp_column_to_micros
from tidegauge.checkpoint.codec import frame_to_ipc, ipc_to_frame
from tidegauge.connectors._fileparse import (
    FileFormat,
    csv_strings,
    infer_json_schema,
    infer_string_schema,
    resolve_format,
)
from tidegauge.connectors._filereaders import LineReader, ParquetReader, Reader, read_header, sample_lines
from tidegauge.connectors.base import Guarantee
from tidegauge.errors import CheckpointError

__all__ = ["FileSource", "FileSourceState"]

logger = logging.getLogger(__name__)

_INFER_ROWS = 1_000
"""Lines sampled to infer a CSV/JSONL schema: enough to see every type, cheap to read. Fixed (not tied
to ``max_rows``) so the inferred schema does not depend on how the stream is batched."""


class FileSourceState(msgspec.Struct, frozen=True, tag="tidegauge.file-source.v1"):
    """Position of a :class:`FileSource`: everything a restart needs to parse the rest identically."""

    path: str
    format: str
    offset: int
    """byte offset (CSV/JSONL) or row index (Parquet) of the next record to hand out"""
    rows: int
    """records handed out so far"""
    header: list[str] | None = None
    schema: bytes | None = None
    """the fixed CSV/JSONL schema, as Arrow IPC of an empty frame"""


class FileSource:
    """A file replayed as a stream of batches.

    Guarantee: **exactly-once** (with a transactional sink): the position in :class:`FileSourceState` is
    exact, a restart yields precisely the records after it, and batches are cut deterministically
    (``max_rows`` records per batch from a given position; blank lines are skipped) unless ``speed``
    paces the replay, in which case batch sizes follow the clock but the records and their order do not.

    CSV (with a header line) and JSONL are read line by line in chunks, parsed as strings, and cast to
    ``schema`` (given, or inferred once from the first 1,000 lines and then kept in the snapshot). A row
    that does not parse is not an error: its ``_tg_error`` column names the column and the bad value and
    ``_tg_raw`` holds the original line (both are null on good rows and present on every CSV/JSONL
    batch). Quoted CSV fields may not span lines. Parquet is read by row group with its own types.

    Parameters
    ----------
    path:
        The file; ``FileNotFoundError`` if it does not exist.
    format:
        ``"csv"``, ``"jsonl"`` or ``"parquet"``; default from the extension.
    speed:
        Replay this many times faster than event time (needs ``time_column``); ``None`` = as fast as
        possible.
    time_column:
        Column with the event time (Datetime, ISO string or epoch seconds), used for pacing only.
    schema:
        Column types for CSV/JSONL (ignored for Parquet).
    name:
        Source name (default: the file's stem).
    clock, sleep:
        Processing-time clock and sleep function used for pacing (for tests).

    Examples
    --------
    >>> import asyncio, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.csv"
    >>> _ = p.write_text("sensor_id,temperature\\ns1,20.5\\ns2,oops\\n")
    >>> logic = FileSource(p, schema={"temperature": pl.Float64}).build(None)
    >>> df = asyncio.run(logic.next_batch(10, 0.0))
    >>> df["temperature"].to_list(), df["_tg_error"].to_list()
    ([20.5, None], [None, "column 'temperature': cannot parse 'oops' as Float64"])
    >>> asyncio.run(logic.close())
    """

    snapshot_type: type | None = FileSourceState
    guarantee: Guarantee = "exactly-once"

    def __init__(
        self,
        path: str | Path,
        *,
        format: FileFormat | None = None,
        speed: float | None = None,
        time_column: str | None = None,
        schema: Mapping[str, pl.DataType] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.format: FileFormat = resolve_format(self.path, format)
        if not self.path.is_file():
            raise FileNotFoundError(f"file source: {str(self.path)!r} does not exist (or is not a file)")
        if speed is not None:
            if isinstance(speed, bool) or not isinstance(speed, int | float) or not speed > 0:
                raise ValueError(f"speed={speed!r}: use a positive factor (10 = ten times real time) or None")
            if time_column is None:
                raise ValueError("speed needs time_column= naming the event-time column to pace by")
        self.speed = float(speed) if speed is not None else None
        self.time_column = time_column
        self.schema = {k: (v() if isinstance(v, type) else v) for k, v in (schema or {}).items()} or None
        self.name = name if name is not None else self.path.stem
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.sleep: Callable[[float], Awaitable[None]] = sleep if sleep is not None else asyncio.sleep

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r}, format={self.format!r}, speed={self.speed!r})"

    def build(self, resume_state: FileSourceState | None) -> FileSourceLogic:
        """Open the file at the start, or at the position in ``resume_state``."""
        return FileSourceLogic(self, resume_state)


class FileSourceLogic:
    """The running reader of a :class:`FileSource`."""

    def __init__(self, d: FileSource, state: FileSourceState | None) -> None:
        self._d = d
        header: list[str] | None = None
        schema: dict[str, pl.DataType] | None = dict(d.schema) if d.schema else None
        if state is not None:
            if not isinstance(state, FileSourceState):
                raise TypeError(f"resume_state must be a FileSourceState, got {type(state).__name__}")
            if state.format != d.format:
                raise CheckpointError(
                    f"source {d.name!r}: checkpoint was taken reading {state.format}, not {d.format}; "
                    "restore with the same file or start without the checkpoint"
                )
            if state.path != str(d.path):
                logger.warning("source %s: resuming %s at a position saved for %s", d.name, d.path, state.path)
            offset, self._rows, header = state.offset, state.rows, state.header
            if state.schema is not None:
                schema = dict(ipc_to_frame(state.schema).schema)
            if d.format != "parquet" and offset > d.path.stat().st_size:
                raise CheckpointError(
                    f"source {d.name!r}: {d.path} is shorter than the saved position {offset}; "
                    "the file changed since the checkpoint"
                )
        else:
            offset, self._rows = 0, 0
        self._reader: Reader
        if d.format == "parquet":
            self._reader = ParquetReader(d.path, offset)
            self._header, self._schema = None, None
        else:
            if d.format == "csv" and header is None:
                header, first = read_header(d.path)
                offset = max(offset, first)
            if schema is None:
                sample = sample_lines(d.path, offset, _INFER_ROWS)
                if d.format == "csv":
                    assert header is not None
                    strings, errs = csv_strings(sample, header, ",")
                    schema = infer_string_schema(strings.filter(pl.Series([e is None for e in errs])))
                else:
                    schema = infer_json_schema(sample)
                logger.info("source %s: inferred schema %s", d.name, schema)
            self._header, self._schema = header, schema
            self._reader = LineReader(d.path, offset, kind=d.format, schema=schema, header=header)
        # Encoded once: snapshot() runs after every batch and must stay cheap.
        self._schema_ipc = frame_to_ipc(pl.DataFrame(schema=self._schema)) if self._schema is not None else None
        self._offset = offset
        self._pending: pl.DataFrame | None = None
        self._ends = np.empty(0, dtype=np.int64)
        self._ts = np.empty(0, dtype=np.int64)
        self._eof = False
        self._anchor: tuple[int, int] | None = None  # (event time, processing time) at pace start

    def snapshot(self) -> FileSourceState:
        """The position after the last record handed out."""
        d = self._d
        return FileSourceState(str(d.path), d.format, self._offset, self._rows, self._header, self._schema_ipc)

    def _fill(self, want: int) -> None:
        """Read until ``want`` records are pending or the file ends."""
        while not self._eof and (self._pending is None or self._pending.height < want):
            have = 0 if self._pending is None else self._pending.height
            got = self._reader.read(want - have)
            if got is None:
                self._eof = True
                break
            frame, ends = got
            ts = self._event_times(frame) if self._d.speed is not None else np.empty(0, dtype=np.int64)
            if self._pending is None or not self._pending.height:
                self._pending = frame
            else:
                self._pending = pl.concat([self._pending, frame], how="vertical_relaxed")
            self._ends = np.concatenate([self._ends, ends])
            self._ts = np.concatenate([self._ts, ts])

    def _event_times(self, frame: pl.DataFrame) -> np.ndarray:
        col = self._d.time_column
        if col not in frame.columns:
            raise ValueError(f"time_column={col!r} is not a column of {self._d.path}; columns: {frame.columns}")
        # Unreadable times pace as "due now"; the ingest stage dead-letters them.
        us = timestamp_column_to_micros(frame[col]).fill_null(np.iinfo(np.int64).min)
        return us.to_numpy().astype(np.int64, copy=False)

    def _take(self, k: int) -> pl.DataFrame:
        assert self._pending is not None
        out, self._pending = self._pending.head(k), self._pending.slice(k)
        self._offset = int(self._ends[k - 1])
        self._ends, self._ts = self._ends[k:], self._ts[k:]
        self._rows += k
        return out

    def _next_sync(self, max_rows: int) -> pl.DataFrame | None:
        self._fill(max_rows)
        if self._pending is None or not self._pending.height:
            return None
        return self._take(min(max_rows, self._pending.height))

    def _due(self, now: int) -> tuple[int, float]:
        """Records due at ``now`` (a prefix of the pending ones) and seconds until the next one is due."""
        speed = self._d.speed
        assert speed is not None and self._anchor is not None
        t0, p0 = self._anchor
        allowed = t0 + (now - p0) * speed
        late = np.flatnonzero(self._ts > allowed)
        due = int(late[0]) if late.size else len(self._ts)
        wait = 0.0 if not late.size else (float(self._ts[due]) - allowed) / speed / 1e6
        return due, wait

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        """The next ``max_rows`` records (fewer at the end or when paced); ``None`` at the end."""
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows!r}: ask for at least 1 row")
        if self._d.speed is None:
            return await asyncio.to_thread(self._next_sync, max_rows)
        await asyncio.to_thread(self._fill, max_rows)
        if self._pending is None or not self._pending.height:
            return None
        now = self._d.clock.now_us()
        if self._anchor is None:
            valid = self._ts[self._ts > np.iinfo(np.int64).min]
            self._anchor = (int(valid[0]) if valid.size else 0, now)
        due, wait = self._due(now)
        if due == 0:
            await self._d.sleep(min(wait, max_delay_s))
            due, _ = self._due(self._d.clock.now_us())
            if due == 0:
                return self._pending.clear()
        return self._take(min(due, max_rows))

    async def ack(self, position: FileSourceState | None) -> None:
        """Nothing to do: a file keeps its records."""

    async def close(self) -> None:
        self._reader.close()

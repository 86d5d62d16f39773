"""HTTP ingest: a durable intake log written by the server and read by :class:`HttpIngestSource`.

The server (:mod:`tidegauge.server`) validates each request, appends the accepted records (and the
rejected ones, with their reasons) to an :class:`IntakeLog` and answers 2xx only once that append is
durable. The source reads the log from its checkpointed position, so:

Guarantee
---------
**exactly-once** with transactional sinks, **at-least-once** otherwise. A record the server acknowledged
with a 2xx is in the intake log (fsync'd, with ``durability="fsync"``) and stays there until a checkpoint
that covers it is written (``ack(position)`` deletes whole segments before the checkpointed position).
After a crash the source replays the log from the last checkpoint. With ``durability="os"`` the append is
only written to the operating system (survives a process crash, not a power loss).

Log format: segment files ``<first offset:020d>.seg``; each frame is ``<u32 length><u32 crc32>`` then a
body of ``length`` bytes: ``<u8 kind>`` and the payload (the checksum covers the body). Kind 1: NDJSON
of accepted records; kind 2: msgpack list of
``[reason, payload]`` rejects. A position is a global byte offset over all segments. A torn tail (partial
frame or bad checksum: never acknowledged) is cut off when the log is opened.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec
import polars as pl

from tidegauge.checkpoint._fs import fsync_dir
from tidegauge.connectors.base import Guarantee
from tidegauge.dataflow.base import ERROR, RAW
from tidegauge.errors import ConnectorError

__all__ = ["READING_SCHEMA", "FieldType", "HttpIngestSnapshot", "HttpIngestSource", "IntakeLog"]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # length of the body (kind byte + payload), crc32 of the body
ACCEPTED, REJECTED = 1, 2
_SEGMENT_BYTES = 64 * 1024 * 1024
"""Segment size before rolling over: big enough to make few files, small enough to free disk soon after
a checkpoint (only whole segments are deleted)."""


_PARSE_IN_THREAD_BYTES = 32 * 1024
"""Batches at least this big are parsed in a worker thread: below it, the hop (tens of microseconds) costs
more than it saves and adds latency at low rates."""


class HttpIngestSnapshot(msgspec.Struct, frozen=True, tag="tidegauge.http-ingest.v1"):
    """Position in the intake log: the byte offset after the last frame handed out."""

    offset: int


class IntakeLog:
    """An append-only, segmented, checksummed log of ingest requests, with group commit.

    Parameters
    ----------
    dir:
        Directory of the segment files (created if missing).
    durability:
        ``"fsync"``: :meth:`append` returns once the bytes are on stable storage (one fsync covers every
        append waiting at that moment: group commit); ``"os"``: once written to the operating system.
    segment_bytes:
        Size at which a new segment file is started.
    """

    def __init__(self, dir: str | Path, *, durability: str = "fsync", segment_bytes: int = _SEGMENT_BYTES) -> None:
        if durability not in ("fsync", "os"):
            raise ValueError(f"durability={durability!r}: use 'fsync' or 'os'")
        if segment_bytes < 1024:
            raise ValueError(f"segment_bytes={segment_bytes}: use at least 1024")
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.durability = durability
        self.segment_bytes = segment_bytes
        self._segments: list[int] = sorted(int(p.stem) for p in self.dir.glob("*.seg"))
        self.end = self._recover()
        self.durable = self.end
        self.start = self._segments[0] if self._segments else self.end
        self._fd = self._open_tail()
        # (frame end offset, append time), for the ingest-to-output latency; bounded so that nobody
        # reading it cannot grow memory (older entries are simply not measured)
        self._times: deque[tuple[int, float]] = deque(maxlen=100_000)
        self.records_appended = 0
        self._sync_lock = asyncio.Lock()
        # the segment list and the tail file are shared by the server (appending) and the flow (reading,
        # truncating), which may run in another thread (tidegauge.server.flowthread)
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop | None, asyncio.Event]] = []

    # -- writing -----------------------------------------------------------------------------------
    def _recover(self) -> int:
        if not self._segments:
            return 0
        last = self._segments[-1]
        path = self._path(last)
        data = path.read_bytes()
        pos = 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            body = data[pos + _HEADER.size:pos + _HEADER.size + length]
            if length < 1 or len(body) < length or zlib.crc32(body) != crc:
                break
            pos += _HEADER.size + length
        if pos != len(data):
            logger.warning("intake log %s: cutting a torn tail of %d bytes (never acknowledged)", path, len(data) - pos)
            with open(path, "r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())
        return last + pos

    def _path(self, first: int) -> Path:
        return self.dir / f"{first:020d}.seg"

    def _open_tail(self) -> int:
        if not self._segments:
            self._segments.append(self.end)
        fd = os.open(self._path(self._segments[-1]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fsync_dir(self.dir)
        return fd

    async def append(self, accepted: bytes, n_accepted: int, rejects: list[tuple[str, str]]) -> int:
        """Append one request (NDJSON of accepted records, rejects as ``(reason, payload)``); durable on return.

        Returns the log offset after the request.
        """
        parts: list[bytes] = []
        if n_accepted:
            parts += _frame(ACCEPTED, accepted)
        if rejects:
            parts += _frame(REJECTED, msgspec.msgpack.encode(rejects))
        if not parts:
            return self.end
        if self.end - self._segments[-1] >= self.segment_bytes:
            await self._roll()
        size = sum(len(p) for p in parts)
        with self._lock:
            # one gathered write of the headers and the payloads as they are (no copy of the body);
            # O_APPEND to a regular file: written whole or the call fails
            try:
                written = os.writev(self._fd, parts)
                if written != size:
                    raise OSError(f"intake log {self.dir}: short write ({written} of {size} bytes)")
            except OSError:
                # cut what was partly written (disk full...): later frames must not follow a torn one
                os.ftruncate(self._fd, self.end - self._segments[-1])
                raise
            self.end += size
            end = self.end
        self.records_appended += n_accepted + len(rejects)
        self._times.append((end, time.perf_counter()))
        if self.durability == "fsync":
            await self._sync(end)
        else:
            self.durable = max(self.durable, end)
        self._notify()
        return end

    async def _roll(self) -> None:
        # under the sync lock: no fsync of the old file is in flight while it is closed
        async with self._sync_lock:
            if self.end - self._segments[-1] < self.segment_bytes:
                return
            old = self._fd
            if self.durability == "fsync":
                await asyncio.to_thread(os.fsync, old)  # the old segment's tail, before its fd is gone
            with self._lock:
                self._segments.append(self.end)
                self._fd = self._open_tail()
            os.close(old)

    async def _sync(self, end: int) -> None:
        # group commit: whoever holds the lock fsyncs everything written so far, others find it done
        async with self._sync_lock:
            if self.durable >= end:
                return
            target, fd = self.end, self._fd
            await asyncio.to_thread(os.fsync, fd)
            self.durable = max(self.durable, target)

    def _notify(self) -> None:
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, ev in list(self._waiters):
            if loop is None or loop is here:
                ev.set()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(ev.set)

    def add_waiter(self, event: asyncio.Event) -> None:
        """Have ``event`` set (in the event loop running now) whenever new records become durable."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._waiters.append((loop, event))

    def remove_waiter(self, event: asyncio.Event) -> None:
        self._waiters = [(lp, ev) for lp, ev in self._waiters if ev is not event]

    def appended_at(self, offset: int) -> float | None:
        """``perf_counter()`` time of the first frame ending after ``offset`` still remembered (for latency)."""
        for end, t in self._times:
            if end > offset:
                return t
        return None

    def pop_times(self, upto: int) -> list[float]:
        """Forget (and return) the append times of frames ending at or before ``upto``."""
        out: list[float] = []
        while self._times and self._times[0][0] <= upto:
            out.append(self._times.popleft()[1])
        return out

    # -- reading and truncation --------------------------------------------------------------------
    def read(self, offset: int, max_records: int) -> tuple[list[tuple[int, bytes]], int]:
        """Frames ``(kind, payload)`` from ``offset`` up to the durable end (about ``max_records`` records)."""
        if offset < self.start:
            raise ConnectorError(
                f"intake log {self.dir}: position {offset} was deleted (the log starts at {self.start}); "
                "the checkpoint and the log do not belong together"
            )
        with self._lock:
            return self._read(offset, max_records, self.durable, list(self._segments))

    def _read(self, offset: int, max_records: int, durable: int,
              segments: list[int]) -> tuple[list[tuple[int, bytes]], int]:
        frames: list[tuple[int, bytes]] = []
        idx = max(0, _bisect(segments, offset))
        budget = max_records
        while offset < durable and budget > 0 and idx < len(segments):
            first = segments[idx]
            seg_end = segments[idx + 1] if idx + 1 < len(segments) else durable
            with open(self._path(first), "rb") as f:
                f.seek(offset - first)
                data = f.read(min(seg_end, durable) - offset)
            pos = 0
            while pos + _HEADER.size <= len(data) and budget > 0:
                length, _crc = _HEADER.unpack_from(data, pos)
                kind = data[pos + _HEADER.size]
                payload = data[pos + _HEADER.size + 1:pos + _HEADER.size + length]
                frames.append((kind, payload))
                budget -= payload.count(b"\n") + 1 if kind == ACCEPTED else 1
                pos += _HEADER.size + length
            offset += pos
            if offset >= seg_end:
                idx += 1
        return frames, offset

    def truncate_before(self, offset: int) -> None:
        """Delete whole segments that end at or before ``offset`` (never the one being written)."""
        with self._lock:
            while len(self._segments) > 1 and self._segments[1] <= offset:
                self._path(self._segments.pop(0)).unlink(missing_ok=True)
            self.start = self._segments[0]

    def close(self) -> None:
        os.close(self._fd)


def _frame(kind: int, payload: bytes) -> list[bytes]:
    """A frame as the pieces to write: header with the kind byte, then the payload untouched."""
    k = _KINDS[kind]
    return [_HEADER.pack(len(payload) + 1, zlib.crc32(payload, zlib.crc32(k))) + k, payload]


_KINDS = {ACCEPTED: bytes([ACCEPTED]), REJECTED: bytes([REJECTED])}


def _bisect(segments: list[int], offset: int) -> int:
    lo, hi = 0, len(segments)
    while lo < hi:
        mid = (lo + hi) // 2
        if segments[mid] <= offset:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


FieldType = Literal["str", "float", "int", "bool", "timestamp"]
"""Type of a field of an ingested record; ``timestamp`` is an RFC 3339 string with a zone, or epoch seconds."""

READING_SCHEMA: dict[str, FieldType] = {
    "sensor_id": "str",
    "sensor_type": "str",
    "timestamp": "timestamp",
    "temperature": "float",
    "humidity": "float",
    "pressure": "float",
    "vibration": "float",
    "power_consumption": "float",
    "operational_status": "str",
    "latitude": "float",
    "longitude": "float",
}
"""The demo IoT reading (see the architecture's *Reading* contract)."""

_POLARS: dict[str, pl.DataType] = {
    "str": pl.String(), "float": pl.Float64(), "int": pl.Int64(), "bool": pl.Boolean(), "timestamp": pl.String(),
}


class HttpIngestSource:
    """Records posted to the HTTP server (``POST /api/v1/ingest``, WebSocket), read from the intake log.

    Guarantee: **exactly-once** with a transactional sink (see the module docstring): every record the
    server acknowledged is replayed from the log after a crash, from the last checkpoint's position.
    Records the server rejected reach the flow's dead-letter output with their reason and payload.

    Parameters
    ----------
    log_dir:
        Directory of the intake log, shared with the server (which appends) through :meth:`open_log`.
    schema:
        Field name -> :data:`FieldType`; the server validates each record against it.
    key, time:
        The key and event-time fields (required in every record).
    durability:
        ``"fsync"`` (survives power loss) or ``"os"`` (survives a process crash); see :class:`IntakeLog`.
    max_lag_bytes:
        Log bytes not yet read by the flow beyond which the server answers 503 (backpressure).
    """

    guarantee: Guarantee = "exactly-once"
    snapshot_type = HttpIngestSnapshot

    def __init__(
        self,
        log_dir: str | Path,
        *,
        schema: Mapping[str, FieldType] | None = None,
        key: str = "sensor_id",
        time: str = "timestamp",
        durability: Literal["fsync", "os"] = "fsync",
        max_lag_bytes: int = 16 * 1024 * 1024,
        name: str | None = "http",
    ) -> None:
        self.log_dir = Path(log_dir)
        self.schema: dict[str, FieldType] = dict(READING_SCHEMA if schema is None else schema)
        for field, type_ in self.schema.items():
            if type_ not in _POLARS:
                raise ValueError(f"schema field {field!r}: type {type_!r}; use one of {', '.join(_POLARS)}")
        for field in (key, time):
            if field not in self.schema:
                raise ValueError(f"schema has no field {field!r} (the key/time field); add it")
        if self.schema[time] not in ("timestamp", "float", "int"):
            raise ValueError(f"time field {time!r} must have type 'timestamp' (or a number of epoch seconds)")
        if max_lag_bytes < 1:
            raise ValueError(f"max_lag_bytes={max_lag_bytes}: must be >= 1")
        self.key, self.time = key, time
        self.durability = durability
        self.max_lag_bytes = max_lag_bytes
        self.name = name
        self._log: IntakeLog | None = None
        self.logic: HttpIngestSourceLogic | None = None

    def open_log(self) -> IntakeLog:
        """The intake log (opened once, shared by the server and the source logic)."""
        if self._log is None:
            self._log = IntakeLog(self.log_dir, durability=self.durability)
        return self._log

    def build(self, resume_state: HttpIngestSnapshot | None) -> HttpIngestSourceLogic:
        log = self.open_log()
        # no checkpoint: replay everything still in the log, so that nothing acknowledged is lost
        self.logic = HttpIngestSourceLogic(self, log, log.start if resume_state is None else resume_state.offset)
        return self.logic

    def lag_bytes(self) -> int:
        """Log bytes appended but not yet handed to the flow (the whole log when no flow is reading)."""
        log = self.open_log()
        read = self.logic.offset if self.logic is not None and not self.logic.closed else log.start
        return log.end - read

    def saturated(self) -> bool:
        """Whether the server should refuse new records (the flow is too far behind, or not running)."""
        return self.logic is None or self.logic.closed or self.lag_bytes() > self.max_lag_bytes


class HttpIngestSourceLogic:
    """Reads the intake log from a position; see :class:`HttpIngestSource`."""

    def __init__(self, d: HttpIngestSource, log: IntakeLog, offset: int) -> None:
        self.d, self.log, self.offset = d, log, offset
        self.closed = False
        self._event = asyncio.Event()
        log.add_waiter(self._event)
        self._read_schema = {f: _POLARS[t] for f, t in d.schema.items()}

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        if self.log.durable <= self.offset:
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), timeout=max(max_delay_s, 0.001))
            except TimeoutError:
                return pl.DataFrame()
        frames, self.offset = self.log.read(self.offset, max_rows)
        if not frames:
            return pl.DataFrame()
        if sum(len(p) for _, p in frames) < _PARSE_IN_THREAD_BYTES:
            return self._to_frame(frames)
        # polars parses without the GIL: in a worker thread, the server keeps answering requests on the
        # event loop meanwhile (on a second core) instead of waiting for the flow's parse
        return await asyncio.to_thread(self._to_frame, frames)

    def _to_frame(self, frames: list[tuple[int, bytes]]) -> pl.DataFrame:
        ndjson = [p if p.endswith(b"\n") else p + b"\n" for k, p in frames if k == ACCEPTED]
        parts: list[pl.DataFrame] = []
        if ndjson:
            parts.append(self._parse(b"".join(ndjson)))
        rejects = [r for k, p in frames if k == REJECTED for r in msgspec.msgpack.decode(p, type=list[tuple[str, str]])]
        if rejects:
            parts.append(pl.DataFrame({ERROR: [r[0] for r in rejects], RAW: [r[1] for r in rejects]},
                                      schema={ERROR: pl.String, RAW: pl.String}))
        return pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else parts[0]

    def _parse(self, data: bytes) -> pl.DataFrame:
        try:
            df = pl.read_ndjson(io.BytesIO(data), schema=self._read_schema)
        except Exception:  # validated by the server: only a disagreement between parsers gets here
            return self._parse_lines(data)
        for field, type_ in self.d.schema.items():
            if type_ == "timestamp":
                df = df.with_columns(_timestamp(pl.col(field)).alias(field))
        return df

    def _parse_lines(self, data: bytes) -> pl.DataFrame:
        rows = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                rows.append(self._parse(line + b"\n").with_columns(pl.lit(None, pl.String).alias(ERROR)))
            except Exception as exc:
                rows.append(pl.DataFrame({ERROR: [f"unparsable record: {exc}"],
                                          RAW: [line.decode("utf-8", "replace")]}))
        return pl.concat(rows, how="diagonal_relaxed") if rows else pl.DataFrame()

    def snapshot(self) -> HttpIngestSnapshot:
        return HttpIngestSnapshot(self.offset)

    async def ack(self, position: object) -> None:
        if isinstance(position, HttpIngestSnapshot):
            self.log.truncate_before(position.offset)

    async def close(self) -> None:
        self.closed = True
        self.log.remove_waiter(self._event)


def _timestamp(col: pl.Expr) -> pl.Expr:
    """RFC 3339 strings (any case) or epoch seconds (as text) to ``Datetime("us", "UTC")``."""
    iso = col.str.to_uppercase().str.to_datetime(time_unit="us", time_zone="UTC", strict=False)
    epoch = (col.cast(pl.Float64, strict=False) * 1_000_000).round().cast(pl.Int64, strict=False)
    return pl.coalesce(iso, epoch.cast(pl.Datetime("us", "UTC")))

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

The log's format and its fsync policy (fsync group-committed across requests) are described
in :mod:`tidegauge.connectors.intake`.

Hand-off
--------
Records are parsed once in the steady state. The server validates a request with the compiled NDJSON
reader of :mod:`tidegauge.connectors._ndjson` (plain records, without the GIL) or, for anything else, with
msgspec, and appends to the log, besides the NDJSON it writes, the records in that decoded form (the
reader's columns, or msgspec's records packed): the source takes them from memory and only builds the
DataFrame (:mod:`tidegauge.connectors._records`). Frames read back from the file (a replay after a
restart, a flow that fell far behind) are decoded again the same way (the compiled reader, else msgspec
with the server's Struct), so a replay yields exactly the records the live flow got. Only payloads neither
takes (the edge receiver appends agents' batches unvalidated) are parsed by polars.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec
import polars as pl

from tidegauge.connectors._records import Columns, FieldType, RecordCodec
from tidegauge.connectors._rfc3339 import parse_rfc3339
from tidegauge.connectors.base import Guarantee
from tidegauge.connectors.intake import ACCEPTED, REJECTED, Frame, IntakeLog
from tidegauge.dataflow.base import ERROR, RAW

__all__ = ["ACCEPTED", "READING_SCHEMA", "REJECTED", "FieldType", "HttpIngestSnapshot", "HttpIngestSource", "IntakeLog"]

logger = logging.getLogger(__name__)

_PARSE_IN_THREAD_BYTES = 32 * 1024
"""NDJSON that only polars parses (see *Hand-off*) is parsed in a worker thread from this size: below it,
the hop (tens of microseconds) costs more than it saves and adds latency at low rates."""


class HttpIngestSnapshot(msgspec.Struct, frozen=True, tag="tidegauge.http-ingest.v1"):
    """Position in the intake log: the byte offset after the last frame handed out."""

    offset: int


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
        self.codec = RecordCodec(self.schema, key=key, time=time)
        """the record Struct the server validates with, and the packed hand-off (:mod:`._records`)"""
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

    def refusal(self) -> str:
        """Why a :meth:`saturated` source refuses records: no flow reading it (starting, stopped), or behind."""
        if self.logic is None or self.logic.closed:
            return "the pipeline is not reading its input (starting or stopping); retry later"
        return "the pipeline is behind; retry later"


class HttpIngestSourceLogic:
    """Reads the intake log from a position; see :class:`HttpIngestSource`."""

    def __init__(self, d: HttpIngestSource, log: IntakeLog, offset: int) -> None:
        self.d, self.log, self.offset = d, log, offset
        self.closed = False
        self._event = asyncio.Event()
        # registered in the loop that reads (next_batch): the logic may be built outside any event loop
        self._waiting = False
        self._read_schema = {f: _POLARS[t] for f, t in d.schema.items()}
        self._timestamp_fields = [f for f, t in d.schema.items() if t == "timestamp"]

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        if not self._waiting:
            self.log.add_waiter(self._event)
            self._waiting = True
        if self.log.durable <= self.offset:
            # clear, then look again: an append in between either is seen here or sets the event
            # (IntakeLog sets it only when it is clear)
            self._event.clear()
        if self.log.durable <= self.offset:
            try:
                await asyncio.wait_for(self._event.wait(), timeout=max(max_delay_s, 0.001))
            except TimeoutError:
                return pl.DataFrame()
        frames, self.offset = self.log.read_frames(self.offset, max_rows)
        if not frames:
            return pl.DataFrame()
        parts = await self._accepted([fr for fr in frames if fr.kind == ACCEPTED])
        rejects = [r for fr in frames if fr.kind == REJECTED
                   for r in msgspec.msgpack.decode(fr.payload, type=list[tuple[str, str]])]
        if rejects:
            parts.append(pl.DataFrame({ERROR: [r[0] for r in rejects], RAW: [r[1] for r in rejects]},
                                      schema={ERROR: pl.String, RAW: pl.String}))
        if not parts:
            return pl.DataFrame()
        return pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else parts[0]

    async def _accepted(self, frames: list[Frame]) -> list[pl.DataFrame]:
        """The accepted records of ``frames``, in order, as DataFrames.

        The server hands over, with each frame, the columns of the compiled NDJSON reader it validated the
        records with, or msgspec's records packed (:mod:`tidegauge.connectors._records`); a frame read
        back from the file is read by the compiled reader again; what it does not take, by :meth:`_slow`.
        """
        codec = self.d.codec
        parts: list[pl.DataFrame] = []
        for form, run in itertools.groupby(frames, key=lambda fr: type(fr.decoded)):
            group = list(run)
            df: pl.DataFrame | None
            if form is Columns:
                df = codec.frame_columns([fr.decoded for fr in group if isinstance(fr.decoded, Columns)])
            elif form is bytes:
                df = codec.frame([fr.decoded for fr in group if isinstance(fr.decoded, bytes)],
                                 sum(fr.records or 0 for fr in group))
            else:
                df = codec.frame_ndjson([fr.payload for fr in group])
            parts.append(df if df is not None else await self._slow([fr.payload for fr in group]))
        return parts

    async def _slow(self, payloads: list[bytes]) -> pl.DataFrame:
        """Payloads one by one: the compiled reader, else msgspec as the server decodes (so that a replay
        gives what the server packed), else polars (records appended unvalidated, by the edge receiver)."""
        codec = self.d.codec
        parts: list[pl.DataFrame] = []
        for payload in payloads:
            df = codec.frame_ndjson([payload])
            if df is None:
                try:
                    records = codec.decode_lines(payload)
                except (msgspec.DecodeError, UnicodeDecodeError):
                    pass
                else:
                    df = codec.frame([codec.pack(records)], len(records))
            parts.append(df if df is not None else await self._parse_ndjson([payload]))
        return pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else parts[0]

    async def _parse_ndjson(self, payloads: list[bytes]) -> pl.DataFrame:
        data = _joined(payloads)
        if len(data) < _PARSE_IN_THREAD_BYTES:
            return self._parse(data)
        # polars parses without the GIL: in a worker thread, the server keeps answering requests on the
        # event loop meanwhile (on a second core) instead of waiting for the flow's parse
        return await asyncio.to_thread(self._parse, data)

    def _parse(self, data: bytes) -> pl.DataFrame:
        try:
            df = pl.read_ndjson(io.BytesIO(data), schema=self._read_schema)
        except Exception:  # validated by the server: only a disagreement between parsers gets here
            return self._parse_lines(data)
        stamps = []
        for field in self._timestamp_fields:
            # the compiled RFC 3339 reader (10x polars' general one); what it does not take (epoch
            # seconds, other shapes) goes through the general parser
            ts, missed = parse_rfc3339(df[field])
            if missed is not None:
                ts = df.select(_timestamp(pl.col(field))).to_series().zip_with(missed, ts)
            stamps.append(ts.alias(field))
        return df.with_columns(stamps) if stamps else df

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
        """Stop reading and close the log (its file); a later build opens it again."""
        self.closed = True
        self.log.remove_waiter(self._event)
        if self.d._log is self.log:
            self.d._log = None
        await asyncio.to_thread(self.log.close)


def _joined(payloads: list[bytes]) -> bytes:
    return b"".join(p if p.endswith(b"\n") else p + b"\n" for p in payloads)


def _timestamp(col: pl.Expr) -> pl.Expr:
    """RFC 3339 strings (any case) or epoch seconds (as text) to ``Datetime("us", "UTC")``."""
    iso = col.str.to_uppercase().str.to_datetime(time_unit="us", time_zone="UTC", strict=False)
    epoch = (col.cast(pl.Float64, strict=False) * 1_000_000).round().cast(pl.Int64, strict=False)
    return pl.coalesce(iso, epoch.cast(pl.Datetime("us", "UTC")))

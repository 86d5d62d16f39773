"""Redis Streams source (consumer group) and sink (XADD), with redis-py's asyncio client.

Guarantees
----------
:class:`RedisSource` reads with ``XREADGROUP`` and acknowledges (``XACK``) entries only in
``ack(position)``, after the checkpoint covering them is written; until then they stay in the group's
pending list. On restart the consumer first re-reads its own pending list (entries it was given but never
acknowledged), then new entries, so entries come in stream-id order. The position is the id of the last
entry handed out; pending entries at or below the checkpointed position were already processed (the crash
came between the checkpoint and the ``XACK``) and are acknowledged and skipped. A restarted flow therefore
sees exactly the entries after its checkpoint: **exactly-once** with a transactional sink, provided each
consumer name is used by one flow at a time and entries are not trimmed away (``MAXLEN``) before they are
read.

:class:`RedisSink` appends each row with ``XADD`` (field ``data`` = the row as JSON): **at-least-once**
(a replay after a crash appends the rows again; Redis assigns new ids).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

import msgspec
import polars as pl

from tidegauge.connectors._json_batch import decode_payloads, encode_rows
from tidegauge.connectors.base import Guarantee
from tidegauge.dataflow.base import ERROR, RAW
from tidegauge.errors import ConnectorError, MissingDependencyError

try:
    import redis.asyncio as aredis
    from redis.exceptions import RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("redis", "redis") from exc

__all__ = ["RedisSink", "RedisSource", "RedisSourceState"]

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5
"""XREADGROUP BLOCK for an idle stream: an arriving entry ends it at once; bounds stop() latency."""
_ACK_CHUNK = 10_000
"""Ids per XACK command: keeps one command's size reasonable."""


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisSourceState(msgspec.Struct, frozen=True, tag="tidegauge.redis-source.v1"):
    """Id of the last entry handed out (``"0-0"``: none) and how many were handed out."""

    key: str
    group: str
    last_id: str
    delivered: int


class RedisSource:
    """Readings from a Redis stream through a consumer group.

    Parameters
    ----------
    key:
        The stream's key.
    group, consumer:
        Consumer group (created at the start of the stream, with the stream, if missing) and this
        consumer's name in it (keep it stable across restarts: the pending list is per consumer).
    url:
        ``redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS).
    field:
        The entry field holding the JSON payload.
    schema:
        Column types to decode into.
    """

    snapshot_type: type | None = RedisSourceState
    guarantee: Guarantee = "exactly-once"

    def __init__(
        self,
        key: str,
        *,
        group: str,
        consumer: str,
        url: str = "redis://127.0.0.1:6379/0",
        field: str = "data",
        schema: Mapping[str, pl.DataType] | None = None,
        name: str | None = None,
    ) -> None:
        for label, value in (("key", key), ("group", group), ("consumer", consumer), ("field", field)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"RedisSource: {label}={value!r} must be a non-empty string")
        self.key, self.group, self.consumer, self.url, self.field = key, group, consumer, url, field
        self.schema = dict(schema) if schema else None
        self.name = name if name is not None else "redis"

    def build(self, resume_state: RedisSourceState | None) -> RedisSourceLogic:
        """Logic that connects on its first batch and re-reads its pending entries first."""
        return RedisSourceLogic(self, resume_state)


class RedisSourceLogic:
    """Running state of a :class:`RedisSource`."""

    def __init__(self, d: RedisSource, state: RedisSourceState | None) -> None:
        self._d = d
        self._r: Any = None
        self._last = state.last_id if state is not None else "0-0"
        self._checkpointed = _id_key(self._last)
        self._delivered = state.delivered if state is not None else 0
        self._cursor = "0"  # an id: re-reading our pending list after it; ">": new entries
        self._unacked: deque[tuple[int, bytes]] = deque()
        self._field = d.field.encode()

    async def _ensure(self) -> Any:
        if self._r is None:
            self._r = aredis.from_url(self._d.url, decode_responses=False, protocol=2)
            try:
                await self._r.xgroup_create(self._d.key, self._d.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise ConnectorError(f"redis source {self._d.name}: cannot create group: {exc}") from exc
            except (RedisError, OSError) as exc:
                raise ConnectorError(f"redis source {self._d.name}: cannot reach {self._d.url}: {exc}") from exc
        return self._r

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        """Up to ``max_rows`` entries' readings; empty if none came within ``max(max_delay_s, 0.5 s)``."""
        r = await self._ensure()
        replaying = self._cursor != ">"
        block = None if replaying else max(1, int(max(max_delay_s, _IDLE_WAIT_S) * 1000))
        reply = await r.xreadgroup(
            self._d.group, self._d.consumer, {self._d.key: self._cursor}, count=max_rows, block=block
        )
        entries: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[0][1] if reply else []
        if replaying:
            if not entries:
                self._cursor = ">"
                return pl.DataFrame()
            self._cursor = entries[-1][0].decode()
            stale = [e[0] for e in entries if _id_key(e[0].decode()) <= self._checkpointed or e[1] is None]
            if stale:  # covered by the checkpoint we resumed from (or deleted meanwhile)
                await r.xack(self._d.key, self._d.group, *stale)
                entries = [e for e in entries if _id_key(e[0].decode()) > self._checkpointed and e[1] is not None]
        if not entries:
            return pl.DataFrame()
        payloads: list[bytes] = []
        missing: list[str] = []
        for entry_id, fields in entries:
            self._delivered += 1
            self._unacked.append((self._delivered, entry_id))
            value = (fields or {}).get(self._field)
            if value is None:
                as_text = {k.decode(): v.decode(errors="replace") for k, v in (fields or {}).items()}
                missing.append(msgspec.json.encode(as_text).decode())
            else:
                payloads.append(value)
        self._last = entries[-1][0].decode()
        df = decode_payloads(payloads, schema=self._d.schema)
        if missing:
            reason = f"entry has no field {self._d.field!r}"
            bad = pl.DataFrame({ERROR: [reason] * len(missing), RAW: missing})
            df = pl.concat([df, bad], how="diagonal_relaxed") if df.height else bad
        return df

    def snapshot(self) -> RedisSourceState:
        """Id of the last entry handed out."""
        return RedisSourceState(self._d.key, self._d.group, self._last, self._delivered)

    async def ack(self, position: RedisSourceState | None) -> None:
        """XACK every entry handed out up to ``position``."""
        if position is None or self._r is None:
            return
        ids: list[bytes] = []
        while self._unacked and self._unacked[0][0] <= position.delivered:
            ids.append(self._unacked.popleft()[1])
        for i in range(0, len(ids), _ACK_CHUNK):
            await self._r.xack(self._d.key, self._d.group, *ids[i : i + _ACK_CHUNK])

    async def close(self) -> None:
        """Disconnect (unacknowledged entries stay pending for this consumer's next run)."""
        if self._r is not None:
            await self._r.aclose()


class RedisSink:
    """Append each row to a Redis stream with ``XADD`` (field ``field`` = the row as JSON).

    Parameters
    ----------
    key:
        The stream's key.
    url:
        ``redis://host:port/db``.
    field:
        Entry field for the JSON payload.
    maxlen:
        Trim the stream to about this many entries (``MAXLEN ~``); ``None``: never trim.
    """

    snapshot_type: type | None = None
    guarantee: Guarantee = "at-least-once"

    def __init__(
        self,
        key: str,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        field: str = "data",
        maxlen: int | None = None,
        name: str | None = None,
    ) -> None:
        if not key:
            raise ValueError("RedisSink needs a stream key")
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen={maxlen}: use None or a positive number")
        self.key, self.url, self.field, self.maxlen = key, url, field, maxlen
        self.name = name if name is not None else "redis"

    def build(self, resume_state: None) -> RedisSinkLogic:
        return RedisSinkLogic(self)


class RedisSinkLogic:
    """Running writer of a :class:`RedisSink`: one pipelined round trip per batch."""

    def __init__(self, d: RedisSink) -> None:
        self._d = d
        self._r: Any = None

    async def write_batch(self, df: pl.DataFrame) -> None:
        """XADD every row (pipelined; done when this returns)."""
        if not df.height:
            return
        if self._r is None:
            self._r = aredis.from_url(self._d.url, decode_responses=False, protocol=2)
        d = self._d
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for payload in encode_rows(df):
                    pipe.xadd(d.key, {d.field: payload}, maxlen=d.maxlen, approximate=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ConnectorError(f"redis sink {d.name}: XADD to {d.key!r} failed: {exc}") from exc

    async def pre_commit(self, epoch: int) -> None:
        """Nothing buffered: every batch is written when ``write_batch`` returns."""

    async def commit(self, epoch: int) -> None:
        """Nothing to do: Redis streams have no transactions across batches."""

    def snapshot(self) -> None:
        return None

    async def close(self) -> None:
        if self._r is not None:
            await self._r.aclose()

"""A flow sink writing one stream into the agent's :class:`~tidegauge.edge.outbox.Outbox`, transactionally.

Guarantee: **exactly-once** into the outbox with a replayable source. ``write_batch`` numbers the records and
stores them at once (pending); the checkpoint's ``pre_commit`` makes them durable (fsync policy of the
outbox) and records the stream's last sequence number in the sink snapshot; ``commit`` makes them visible to
the uplink. A restart from a checkpoint deletes the records written after it (the flow writes them again,
under the same numbers), so the upstream sees each record once, in order.

Each record is stored as one JSON object (the user's columns; timestamps as RFC 3339 strings) with its
``edge_seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import logging
from collections.abc import Iterator, Mapping

import msgspec
import polars as pl

from tidegauge.connectors.base import Guarantee
from tidegauge.dataflow.base import drop_internal
from tidegauge.edge.outbox import Outbox, StreamPolicy
from tidegauge.errors import ConfigError

__all__ = ["OutboxSink", "OutboxSinkLogic", "OutboxSinkState", "agent_outbox", "encode_ndjson", "encode_records",
           "pipeline_outbox_sink"]

logger = logging.getLogger(__name__)


class OutboxSinkState(msgspec.Struct, frozen=True, tag="tidegauge.outbox-sink.v1"):
    """The stream and its last sequence number at the last pre-commit."""

    stream: str
    seq: int


def encode_ndjson(df: pl.DataFrame, first_seq: int) -> bytes:
    """``df``'s rows as NDJSON (each line ending in ``\\n``) with ``edge_seq`` from ``first_seq`` on."""
    if not df.height:
        return b""
    df = df.with_columns(pl.int_range(first_seq, first_seq + df.height, dtype=pl.Int64).alias("edge_seq"))
    # one polars call for the batch, written as bytes (a str result costs a decode and an encode)
    buf = io.BytesIO()
    df.write_ndjson(buf)
    out = buf.getvalue()
    return out if out.endswith(b"\n") else out + b"\n"


def encode_records(df: pl.DataFrame, first_seq: int) -> list[bytes]:
    """``df``'s rows as JSON objects (one ``bytes`` each) with ``edge_seq`` from ``first_seq`` on."""
    return encode_ndjson(df, first_seq).splitlines()


class OutboxSink:
    """Forward a stream: write it to ``outbox`` under the name ``stream``.

    Examples
    --------
    >>> import asyncio, tempfile, os
    >>> from tidegauge.edge.outbox import StreamPolicy
    >>> box = Outbox(os.path.join(tempfile.mkdtemp(), "o.db"), {"readings": StreamPolicy()})
    >>> async def run():
    ...     sink = OutboxSink(box, "readings").build(None)
    ...     await sink.write_batch(pl.DataFrame({"v": [1.5, 2.5]}))
    ...     await sink.pre_commit(1); await sink.commit(1)
    >>> asyncio.run(run())
    >>> [p for _, _, p in box.read("readings", after=0, limit=10)]
    [b'{"v":1.5,"edge_seq":1}', b'{"v":2.5,"edge_seq":2}']
    """

    snapshot_type: type | None = OutboxSinkState
    guarantee: Guarantee = "exactly-once"

    def __init__(self, outbox: Outbox, stream: str, *, name: str | None = None) -> None:
        if stream not in outbox.streams:
            raise ValueError(f"OutboxSink: the outbox has no stream {stream!r}; add it to the outbox's streams")
        self.outbox = outbox
        self.stream = stream
        self.name = name if name is not None else f"outbox_{stream}"

    def __repr__(self) -> str:
        return f"OutboxSink({self.stream!r})"

    def build(self, resume_state: OutboxSinkState | None) -> OutboxSinkLogic:
        if resume_state is not None and not isinstance(resume_state, OutboxSinkState):
            raise TypeError(f"resume_state must be an OutboxSinkState, got {type(resume_state).__name__}")
        self.outbox.recover(self.stream, None if resume_state is None else resume_state.seq)
        return OutboxSinkLogic(self)


class OutboxSinkLogic:
    """The running writer of an :class:`OutboxSink`."""

    def __init__(self, d: OutboxSink) -> None:
        self._d = d
        self._box = d.outbox
        self._seq = self._box.next_seq(d.stream) - 1
        self._precommitted: dict[int, int] = {}
        self.records = 0

    def _write(self, df: pl.DataFrame) -> None:
        first = self._box.next_seq(self._d.stream)
        # the NDJSON polars wrote is stored as it is (blocks of lines), never split into one object a record
        self._box.append_ndjson(self._d.stream, encode_ndjson(df, first), df.height, first_seq=first)
        self.records += df.height

    async def write_batch(self, df: pl.DataFrame) -> None:
        df = drop_internal(df)
        if df.height:
            await asyncio.to_thread(self._write, df)

    async def pre_commit(self, epoch: int) -> None:
        await asyncio.to_thread(self._box.make_durable)
        self._seq = self._box.next_seq(self._d.stream) - 1
        self._precommitted[epoch] = self._seq

    def snapshot(self) -> OutboxSinkState:
        return OutboxSinkState(self._d.stream, self._seq)

    async def commit(self, epoch: int) -> None:
        done = [e for e in self._precommitted if e <= epoch]
        if not done:
            return
        seq = max(self._precommitted.pop(e) for e in done)
        await asyncio.to_thread(self._box.commit_seq, self._d.stream, seq)

    async def close(self) -> None:
        """Nothing to release (the outbox is shared and closed by its owner)."""


_ACTIVE: contextvars.ContextVar[tuple[Outbox, Mapping[str, StreamPolicy]] | None] = contextvars.ContextVar(
    "tidegauge_agent_outbox", default=None)


@contextlib.contextmanager
def agent_outbox(outbox: Outbox, policies: Mapping[str, StreamPolicy] | None = None) -> Iterator[Outbox]:
    """While active, ``sink: {outbox: STREAM}`` in a pipeline file builds an :class:`OutboxSink` into ``outbox``
    (streams not open yet are added with ``policies[STREAM]`` or the default policy)."""
    token = _ACTIVE.set((outbox, policies or {}))
    try:
        yield outbox
    finally:
        _ACTIVE.reset(token)


def pipeline_outbox_sink(stream: str, *, name: str | None = None) -> OutboxSink:
    """The sink of a pipeline file's ``outbox:`` section (see :func:`agent_outbox`)."""
    active = _ACTIVE.get()
    if active is None:
        raise ConfigError(f"sink 'outbox: {stream}' forwards to an edge agent's upstream: run this pipeline with "
                          "`tidegauge agent --pipeline FILE`")
    box, policies = active
    box.add_stream(stream, policies.get(stream, StreamPolicy()))
    return OutboxSink(box, stream, name=name)

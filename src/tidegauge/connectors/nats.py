"""NATS JetStream source (durable pull consumer) and sink (de-duplicated publishes), with nats-py.

Guarantees
----------
:class:`NatsSource`: the checkpoint, not the consumer, is the resume point. Its position is the stream
sequence of the last message handed to the flow; on start the source deletes its durable consumer and
creates it again with ``deliver_policy=by_start_sequence`` at that sequence + 1 (``all`` when there is no
checkpoint yet: everything the stream still holds). A crash therefore replays, in order and at once, every
message after the last checkpoint, whether or not it had been fetched or acknowledged (waiting for
``ack_wait`` redeliveries would reorder them). Messages are acknowledged only in ``ack(position)``, after
the checkpoint covering them is written: acknowledgements are not the resume point, but with a work-queue
or interest retention stream they are what lets JetStream delete messages, so none is deleted before a
checkpoint covers it. Replayable source, so **exactly-once** with a transactional or idempotent sink
(:class:`NatsSink`, the upserting PostgreSQL sink: see ``tests/test_broker_crash.py``), at-least-once with
others. The consumer uses explicit acks, ``max_ack_pending`` unlimited by default (JetStream's default of
1,000 would stall intake between checkpoints) and an ``ack_wait`` that should exceed the checkpoint
interval (otherwise JetStream redelivers messages the flow already has while it runs: duplicates in
flight, dropped again at the next start). Backpressure: the source fetches only when the runner asks for
a batch, so a slow sink stops the fetching and messages wait in the stream (memory stays bounded).

:class:`NatsSink` publishes each row as JSON with a ``Nats-Msg-Id`` header derived from the row (a hash of
``id_columns``, e.g. key and event time, or of the whole row), and ``pre_commit`` waits for every publish
acknowledgement. A replay after a crash republishes the same ids, which JetStream drops as duplicates if they
arrive within the stream's ``duplicate_window`` (default 2 minutes): **exactly-once** within that window.

Streams
-------
Both make sure a stream stores their subject before the first fetch or publish (:func:`ensure_stream`), so
a fresh NATS server needs no setup. An existing stream is used as it is, never altered: the source's
``stream`` if it exists, else (source and sink) the stream whose subjects already cover the subject
(``sensors.>`` covers the source's ``sensors.>`` and the sink's ``sensors.{sensor_id}``, i.e.
``sensors.*``); the source logs a warning when it reads a stream of another name than its ``stream``. A
stream whose subjects overlap the subject without covering it is an error naming it (NATS lets no two
streams share a subject). Otherwise a stream is created with NATS's defaults (file storage, limits
retention, no age or size limit, 2-minute duplicate window): the source's on its subject, named ``stream``;
the sink's on the template's literal prefix (``sensors.>`` for ``sensors.{sensor_id}.telemetry``, so a
source on ``sensors.>`` finds it too; the exact ``sensors.*.telemetry`` if that overlaps another stream),
named after it (``SENSORS_ALL``, :func:`stream_name_for`). Set limits later with ``nats stream edit``.
``tidegauge simulate --to nats://...`` publishes as the sink does.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import polars as pl

from tidegauge._time import Duration, parse_duration
from tidegauge.connectors._json_batch import TopicTemplate, decode_payloads, encode_rows, row_ids
from tidegauge.connectors.base import Guarantee
from tidegauge.errors import ConnectorError, MissingDependencyError

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client as NatsClient
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("nats-py", "nats") from exc

__all__ = ["NatsConnection", "NatsSink", "NatsSource", "NatsSourceState", "ensure_publish_stream", "ensure_stream",
           "stream_name_for", "subjects_of"]

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5
"""Long-poll for a first message: a message arriving ends the wait at once, so this only bounds how long
an idle source takes to return an empty batch."""
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
"""Characters a derived stream name replaces with ``_``: NATS forbids ``.``, ``*``, ``>``, spaces and path
separators in stream names; keeping to these few also keeps the name a valid file name on any server."""


def subjects_of(template: str) -> str:
    """The subject filter covering every subject ``template`` gives: each level holding a field becomes ``*``.

    >>> subjects_of("sensors.{sensor_id}.telemetry")
    'sensors.*.telemetry'
    >>> subjects_of("windows.site-{site}")
    'windows.*'
    """
    levels = TopicTemplate(template, separator=".").template.split(".")  # the template checked first
    return ".".join("*" if "{" in level else level for level in levels)


async def ensure_publish_stream(js: Any, template: str) -> str:
    """:func:`ensure_stream` for publishing to the subjects of ``template`` (``sensors.{sensor_id}``): the
    stream storing ``sensors.*``, else a new one on ``sensors.>`` (or ``sensors.*`` if that overlaps another).
    """
    return await ensure_stream(js, subjects_of(template), create_on=_widest(template))


async def _or_close(nc: NatsClient, setup: Awaitable[str]) -> str:
    """``await setup``, closing ``nc`` if it fails (the run ends there: a connection left open would leak)."""
    try:
        return await setup
    except BaseException:
        await nc.close()
        raise


def _widest(template: str) -> str | None:
    """``prefix.>`` for a template whose first levels are literal, e.g. ``sensors.>`` for
    ``sensors.{sensor_id}.telemetry`` (``None`` for a literal subject or one starting with a field).

    >>> _widest("sensors.{sensor_id}.telemetry"), _widest("{site}.t"), _widest("a.b")
    ('sensors.>', None, None)
    """
    levels = template.split(".")
    fixed = next((i for i, level in enumerate(levels) if "{" in level), 0)
    return ".".join([*levels[:fixed], ">"]) if fixed else None


def stream_name_for(subject: str) -> str:
    """The name a stream created for ``subject`` (a filter) gets when nobody named one.

    >>> stream_name_for("sensors.*.telemetry")
    'SENSORS_ANY_TELEMETRY'
    >>> stream_name_for("windows.>")
    'WINDOWS_ALL'
    """
    words = ["ANY" if t == "*" else "ALL" if t == ">" else _NOT_IN_NAME.sub("_", t).upper() for t in subject.split(".")]
    return "_".join(words)


def _covers(pattern: str, subject: str) -> bool:
    """Whether every subject ``subject`` (a filter) matches also matches ``pattern``.

    >>> _covers("sensors.>", "sensors.*.t"), _covers("sensors.*", "sensors.>"), _covers("a.b", "a.*")
    (True, False, False)
    """
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or s[i] == ">" or token not in ("*", s[i]):
            return False
    return len(p) == len(s)


async def ensure_stream(js: Any, subject: str, *, name: str | None = None, create_on: str | None = None) -> str:
    """The name of the JetStream stream that stores ``subject`` (a filter), created if there is none.

    In order: the stream called ``name`` if it exists; the stream whose subjects cover ``subject``; a new
    stream with NATS's defaults called ``name`` (default: :func:`stream_name_for` its subject) on
    ``create_on`` (a wider filter, e.g. ``sensors.>`` for ``sensors.*``, so that a source on the wider one
    finds it too), or on ``subject`` when there is no ``create_on`` or another stream overlaps it. An
    existing stream is never altered. :class:`ConnectorError` if a stream overlaps ``subject`` without
    covering it, or if JetStream does not answer (a server started without ``-js``).

    ``js`` is nats-py's JetStream context (``nc.jetstream()``).
    """
    try:
        if name is not None:
            try:
                await js.stream_info(name)
                return name
            except nats.js.errors.NotFoundError:
                pass
        found = await _stream_covering(js, subject)
        if found is not None:
            if name is not None:
                logger.warning("nats: there is no stream %r; stream %r stores subject %r: using it", name, found,
                               subject)
            return found
        for on in dict.fromkeys((create_on or subject, subject)):  # each once
            new = name or stream_name_for(on)
            try:
                await js.add_stream(StreamConfig(name=new, subjects=[on]))
            except nats.js.errors.BadRequestError as exc:  # created meanwhile, a name taken, a wider overlap
                found = await _stream_covering(js, subject)
                if found is not None:
                    return found
                failed = exc
                continue
            logger.info("nats: created stream %r on subject %r", new, on)
            return new
        raise ConnectorError(f"nats: cannot create a stream for subject {subject!r}: {failed.description}; "
                             "create one with the nats CLI") from failed
    except nats.errors.Error as exc:
        raise ConnectorError(f"nats: cannot find or create a JetStream stream for subject {subject!r}: "
                             f"{exc or type(exc).__name__} (is JetStream enabled, nats-server -js?)") from exc


async def _stream_covering(js: Any, subject: str) -> str | None:
    """The stream whose subjects cover ``subject``, ``None`` if no stream's subjects overlap it."""
    try:
        name: str = await js.find_stream_name_by_subject(subject)  # a stream whose subjects overlap it
    except nats.js.errors.NotFoundError:
        return None
    try:
        subjects = (await js.stream_info(name)).config.subjects or []
    except nats.js.errors.NotFoundError:  # deleted meanwhile
        return None
    if not any(_covers(s, subject) for s in subjects):
        raise ConnectorError(f"nats: subject {subject!r} overlaps stream {name!r}, whose subjects {subjects} do not "
                             f"cover it: add {subject!r} to that stream's subjects or use another subject")
    return name


@dataclass(frozen=True)
class NatsConnection:
    """Server(s) and credentials.

    The first connection must succeed within ``connect_deadline`` seconds (one attempt per server every
    ``reconnect_wait`` seconds), else :class:`ConnectorError` says which servers and why: a wrong address
    fails the run instead of hanging it. Once connected, nats-py reconnects on its own, forever.
    """

    servers: str | Sequence[str] = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls: ssl.SSLContext | None = None
    name: str | None = None
    connect_deadline: float = 30.0
    reconnect_wait: float = 1.0

    async def connect(self) -> NatsClient:
        servers = [self.servers] if isinstance(self.servers, str) else list(self.servers)
        failures: list[BaseException] = []

        async def on_error(exc: Exception) -> None:  # nats-py logs a traceback per failed attempt otherwise
            failures.append(exc)
            logger.warning("nats %s: %s", servers, exc)

        try:
            return await asyncio.wait_for(nats.connect(
                servers, user=self.user, password=self.password, token=self.token, tls=self.tls,
                name=self.name, max_reconnect_attempts=-1, allow_reconnect=True,
                connect_timeout=min(5.0, self.connect_deadline), reconnect_time_wait=self.reconnect_wait,
                error_cb=on_error,
            ), self.connect_deadline)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            last = failures[-1] if failures else exc
            raise ConnectorError(
                f"cannot connect to NATS at {servers} within {self.connect_deadline:g} s: {last or type(last).__name__}"
            ) from exc


class NatsSourceState(msgspec.Struct, frozen=True, tag="tidegauge.nats-source.v1"):
    """Position: the stream sequence of the last message handed out, and how many were handed out."""

    stream: str
    consumer: str
    sequence: int
    delivered: int


class NatsSource:
    """Readings from a JetStream stream through a durable pull consumer.

    Parameters
    ----------
    stream:
        The stream's name. If there is no such stream, the one already storing ``subject`` is used, else it is
        created on ``subject`` (see *Streams* in the module docstring).
    subject:
        Subject filter of the consumer, e.g. ``"sensors.>"``.
    durable:
        The durable consumer's name (re-created at each start at the checkpointed sequence + 1).
    connection:
        Servers and credentials.
    template:
        Subject template whose fields become columns where the payload lacks them
        (``"sensors.{sensor_id}.telemetry"``; levels separated by ``.``).
    ack_wait:
        How long JetStream waits for an ack before redelivering; keep it above the checkpoint interval.
    max_ack_pending:
        Unacknowledged messages JetStream allows in flight (-1: unlimited).
    schema:
        Column types to decode into.
    """

    snapshot_type: type | None = NatsSourceState
    guarantee: Guarantee = "exactly-once"  # replayable from the checkpoint: see the module docstring

    def __init__(
        self,
        stream: str,
        subject: str,
        *,
        durable: str,
        connection: NatsConnection | None = None,
        template: str | None = None,
        ack_wait: Duration = "60s",
        max_ack_pending: int = -1,
        schema: Mapping[str, pl.DataType] | None = None,
        name: str | None = None,
    ) -> None:
        for label, value in (("stream", stream), ("subject", subject), ("durable", durable)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"NatsSource: {label}={value!r} must be a non-empty string")
        self.stream, self.subject, self.durable = stream, subject, durable
        self.connection = connection or NatsConnection()
        self.template = TopicTemplate(template, separator=".") if template else None
        self.ack_wait_s = parse_duration(ack_wait, name="ack_wait") / 1e6
        self.max_ack_pending = max_ack_pending
        self.schema = dict(schema) if schema else None
        self.name = name if name is not None else "nats"
        self.logic: NatsSourceLogic | None = None

    def build(self, resume_state: NatsSourceState | None) -> NatsSourceLogic:
        """Logic that connects on its first batch and resumes after ``resume_state``'s sequence."""
        self.logic = NatsSourceLogic(self, resume_state)
        return self.logic


class NatsSourceLogic:
    """Running state of a :class:`NatsSource`."""

    def __init__(self, d: NatsSource, state: NatsSourceState | None) -> None:
        self._d = d
        self._nc: NatsClient | None = None
        self._sub: Any = None
        self._stream = d.stream  # until _ensure finds the stream that stores the subject
        self._seq = state.sequence if state is not None else 0
        self._delivered = state.delivered if state is not None else 0
        self._restored_stream = state.stream if state is not None else None
        self._unacked: deque[tuple[int, str]] = deque()  # (delivered count, reply subject)
        self._fetch: asyncio.Task[list[Any]] | None = None
        self._pending: int | None = None

    async def _ensure(self) -> Any:
        if self._sub is None:
            d = self._d
            nc = await d.connection.connect()
            js = nc.jetstream()
            self._stream = await _or_close(nc, ensure_stream(js, d.subject, name=d.stream))
            if self._restored_stream is not None and self._restored_stream != self._stream:
                await nc.close()
                # a position is a sequence number of one stream: in another it points at other messages
                raise ConnectorError(
                    f"nats source {d.name}: the checkpoint holds a position in stream {self._restored_stream!r}, "
                    f"but {d.subject!r} is now stored by stream {self._stream!r}; restore with that stream, or "
                    "start from a new checkpoint directory")
            self._nc = nc
            # the checkpoint, not the consumer, is the resume point: messages a killed run fetched but never
            # acknowledged would otherwise come back only after ack_wait, out of order
            try:
                await js.delete_consumer(self._stream, d.durable)
            except nats.js.errors.NotFoundError:
                pass
            start = {"deliver_policy": DeliverPolicy.ALL} if self._seq == 0 else {
                "deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": self._seq + 1}
            config = ConsumerConfig(
                durable_name=d.durable, ack_policy=AckPolicy.EXPLICIT, **start,
                ack_wait=d.ack_wait_s, max_ack_pending=d.max_ack_pending, filter_subject=d.subject,
            )
            try:
                self._sub = await self._nc.jetstream().pull_subscribe(
                    d.subject, durable=d.durable, stream=self._stream, config=config
                )
            except nats.errors.Error as exc:
                raise ConnectorError(f"nats source {d.name}: cannot open consumer {d.durable!r}: {exc}") from exc
        return self._sub

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        """Up to ``max_rows`` messages' readings; empty if none came within ``max(max_delay_s, 0.5 s)``."""
        sub = await self._ensure()
        if self._fetch is None:
            self._fetch = asyncio.create_task(sub.fetch(max_rows, timeout=max(max_delay_s, _IDLE_WAIT_S)))
        # shielded: if the runner cancels us mid-fetch, the messages it brings are NAKed by close(), not
        # left pending at the server until ack_wait
        try:
            msgs = await asyncio.shield(self._fetch)
        except TimeoutError:  # nats-py raises both its own TimeoutError and asyncio's
            return pl.DataFrame()
        finally:
            if self._fetch.done():
                self._fetch = None
        if not msgs:
            return pl.DataFrame()
        for m in msgs:
            self._delivered += 1
            self._unacked.append((self._delivered, m.reply))
        self._seq = msgs[-1].metadata.sequence.stream
        self._pending = msgs[-1].metadata.num_pending
        return decode_payloads(
            [m.data for m in msgs], topics=[m.subject for m in msgs], template=self._d.template, schema=self._d.schema
        )

    def lag(self) -> int | None:
        """Messages in the stream after the last one handed out, as JetStream reported with it (None: no fetch yet).

        With a slow sink the runner stops asking for batches, fetching stops and this grows: the
        pressure is visible here, while the messages wait in the stream, not in memory.
        """
        return self._pending

    def snapshot(self) -> NatsSourceState:
        """Stream sequence of the last message handed out."""
        return NatsSourceState(self._stream, self._d.durable, self._seq, self._delivered)

    async def ack(self, position: NatsSourceState | None) -> None:
        """Acknowledge every message handed out up to ``position`` (they are in a durable checkpoint)."""
        if position is None or self._nc is None:
            return
        nc, last = self._nc, None
        while self._unacked and self._unacked[0][0] <= position.delivered:
            _n, reply = self._unacked.popleft()
            if last is not None:
                await nc.publish(last, b"+ACK")
            last = reply
        if last is not None:  # the last one synchronously: once it is confirmed, all before it were received
            try:
                await nc.request(last, b"+ACK", timeout=5)
            except nats.errors.Error as exc:
                logger.warning("nats source %s: ack not confirmed (%s); messages may be redelivered", self._d.name, exc)

    async def close(self) -> None:
        """NAK what was handed out but not acknowledged (redelivered at once to the next run) and disconnect."""
        if self._nc is None:
            return
        replies = [reply for _n, reply in self._unacked]
        self._unacked.clear()
        if self._fetch is not None:
            try:
                replies += [m.reply for m in await asyncio.wait_for(self._fetch, _IDLE_WAIT_S + 1)]
            except (nats.errors.Error, TimeoutError):
                pass
        try:
            for reply in replies:
                await self._nc.publish(reply, b"-NAK")
            await self._nc.flush(timeout=5)
            await self._nc.close()
        except nats.errors.Error as exc:
            logger.warning("nats source %s: close: %s", self._d.name, exc)


class NatsSink:
    """Publish each row as JSON to a JetStream subject, de-duplicated by a ``Nats-Msg-Id`` per row.

    Parameters
    ----------
    subject:
        Subject template, e.g. ``"windows.{sensor_id}"``. The stream storing ``windows.*`` is used, else one
        is created on ``windows.>`` (see *Streams* in the module docstring).
    connection:
        Servers and credentials.
    id_columns:
        Columns whose values identify a row (e.g. ``("sensor_id", "window_start")``); default: the whole row.
    """

    snapshot_type: type | None = None
    guarantee: Guarantee = "exactly-once"

    def __init__(
        self,
        subject: str,
        *,
        connection: NatsConnection | None = None,
        id_columns: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.template = TopicTemplate(subject, separator=".")
        self.connection = connection or NatsConnection()
        self.id_columns = list(id_columns) if id_columns else None
        self.name = name if name is not None else "nats"

    def build(self, resume_state: None) -> NatsSinkLogic:
        return NatsSinkLogic(self)


class NatsSinkLogic:
    """Running publisher of a :class:`NatsSink`."""

    def __init__(self, d: NatsSink) -> None:
        self._d = d
        self._nc: NatsClient | None = None
        self._js: Any = None
        self._futures: list[asyncio.Future[Any]] = []

    async def write_batch(self, df: pl.DataFrame) -> None:
        """Publish every row asynchronously (acknowledgements are collected in ``pre_commit``)."""
        if not df.height:
            return
        if self._js is None:
            nc = await self._d.connection.connect()
            js = nc.jetstream()
            await _or_close(nc, ensure_publish_stream(js, self._d.template.template))
            self._nc, self._js = nc, js
        subjects = self._d.template.format_column(df).to_list()
        payloads = encode_rows(df)
        ids = row_ids(payloads, df, self._d.id_columns)
        for subject, payload, msg_id in zip(subjects, payloads, ids, strict=True):
            self._futures.append(await self._js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id}))
        if len(self._futures) > 100_000:  # bound memory between checkpoints
            await self._settle()

    async def _settle(self) -> None:
        futures, self._futures = self._futures, []
        results = await asyncio.gather(*futures, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise ConnectorError(f"nats sink {self._d.name}: {len(errors)} publishes failed, first: {errors[0]!r}")

    async def pre_commit(self, epoch: int) -> None:
        """Wait for JetStream to acknowledge (store) every publish so far."""
        await self._settle()

    async def commit(self, epoch: int) -> None:
        """Nothing to do: de-duplication by message id makes replays harmless."""

    def snapshot(self) -> None:
        return None

    async def close(self) -> None:
        """Wait for outstanding acknowledgements and disconnect."""
        try:
            await self._settle()
        finally:
            if self._nc is not None:
                await self._nc.flush(timeout=5)
                await self._nc.close()

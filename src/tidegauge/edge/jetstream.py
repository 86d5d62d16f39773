"""The uplink over NATS JetStream: the agent publishes its batches to a stream, the upstream consumes them.

``tidegauge agent --upstream nats://host:4222`` picks this transport (the scheme decides); the upstream runs
``tidegauge serve PIPELINE --edge-db edge.db --edge-nats nats://host:4222``. The batches are the ones of
the HTTP uplink (:mod:`tidegauge.edge.wire`: NDJSON body, the same headers), one message each, on subject
``<subject>.<agent>.<stream>`` of a work-queue stream (default ``TIDEGAUGE_EDGE`` on ``tidegauge.edge.>``,
created by whichever side comes first).

Guarantees, end to end (every record once, in order per stream):

- **Agent** (:class:`JetStreamUplink`): each message carries ``Nats-Msg-Id: <agent>:<stream>:<first>-<last>``
  (the idempotency key), so JetStream drops a batch published twice within its duplicate window (a lost
  publish acknowledgement). A batch leaves the outbox only when JetStream acknowledged it **and** every
  earlier batch of its stream: the stream then holds a contiguous prefix of the agent's records. Otherwise
  the uplink rewinds to the last acknowledged record and publishes again (breaker and backoff as over HTTP).
- **Upstream** (:class:`JetStreamIntake`): one durable pull consumer, re-created at each start with
  ``deliver_policy=all`` (the work-queue stream holds only what was not acknowledged, so it starts at the
  oldest unapplied batch, in stream order). Messages are applied one at a time through
  :meth:`EdgeReceiver.accept <tidegauge.edge.receiver.EdgeReceiver.accept>` (the same de-duplication by
  sequence number and durable append to the intake log as over HTTP) and acknowledged after that append.
  A batch whose predecessor is missing (``409``: that predecessor was never stored, so the agent did not
  acknowledge this one either and will publish both again) is acknowledged and dropped; a full pipeline
  (``503``) is retried in place; a stream no source takes (``404``) waits in JetStream (negative
  acknowledgement with a delay) until the upstream is configured for it; a malformed batch (``400``,
  ``413``) is logged and terminated.

Heartbeats go over NATS too, as requests on ``<subject>-heartbeat.<agent>`` (outside the stream: they are
live state, not history; one subject prefix per upstream, like the batches'). The intake answers each (one
member of its queue group, if several upstream processes share the consumer) with the agent's assignment
from the upstream's coordinator: the same JSON as ``POST /api/v1/edge/heartbeat``, or ``404`` where the
pipeline has no coordinator, so the agent goes on without one. No answer at all (the upstream is down) is a
failed heartbeat, as over HTTP: a following agent keeps its sensors until its lease lapses, then drops them.
A heartbeat whose ``node_id`` is not its subject's agent is refused (403), as a batch is: grant each agent's
NATS user publish rights on ``<subject>.<agent>.>`` and ``<subject>-heartbeat.<agent>`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import msgspec

from tidegauge._time import parse_duration
from tidegauge.edge import wire
from tidegauge.edge.outbox import OutboxBatch
from tidegauge.edge.uplink import Uplink, _Batch, _Refused

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tidegauge.edge.coordinator import Coordinator
    from tidegauge.edge.receiver import EdgeReceiver

__all__ = ["JetStreamConfig", "JetStreamIntake", "JetStreamUplink", "heartbeat_subject_for", "is_nats_url",
           "subject_for"]

logger = logging.getLogger(__name__)

_HEADROOM = 4096
"""Bytes of a message kept for its headers below the server's ``max_payload``."""
_TOKEN = re.compile(r"[.*>\s]")


class JetStreamConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The stream both sides use, and the upstream's consumer."""

    stream: str = "TIDEGAUGE_EDGE"
    subject: str = "tidegauge.edge"
    """subject prefix: batches go to ``<subject>.<agent>.<stream>``"""
    duplicate_window: str = "2m"
    """how long JetStream remembers a message id (a batch published again within it is dropped)"""
    durable: str = "tidegauge-upstream"
    ack_wait: str = "60s"
    """how long a delivered batch may take to apply before JetStream delivers it again"""

    def __post_init__(self) -> None:
        if not self.stream or _TOKEN.search(self.stream):
            raise ValueError(f"jetstream stream={self.stream!r}: use a name without '.', '*', '>' or spaces")
        if not self.subject or self.subject.endswith(".") or "*" in self.subject or ">" in self.subject:
            raise ValueError(f"jetstream subject={self.subject!r}: use a plain prefix such as 'tidegauge.edge'")
        for name in ("duplicate_window", "ack_wait"):
            parse_duration(getattr(self, name), name=f"jetstream {name}")

    @property
    def heartbeat_subject(self) -> str:
        """Heartbeats are requests on ``<subject>-heartbeat.<agent>``: outside the stream (which would store
        them and answer for the upstream), and apart for each upstream with its own subject prefix."""
        return f"{self.subject}-heartbeat"


def is_nats_url(url: str) -> bool:
    """Whether ``url`` names NATS servers (``nats://``, ``tls://``; several comma-separated)."""
    return url.startswith(("nats://", "tls://"))


def subject_for(config: JetStreamConfig, node: str, stream: str) -> str:
    """``<subject>.<node>.<stream>``, characters NATS reserves in a token replaced by ``_``."""
    return f"{config.subject}.{_TOKEN.sub('_', node)}.{_TOKEN.sub('_', stream)}"


def heartbeat_subject_for(config: JetStreamConfig, node: str) -> str:
    """``<heartbeat_subject>.<node>`` (the node token as in :func:`subject_for`)."""
    return f"{config.heartbeat_subject}.{_TOKEN.sub('_', node)}"


STATUS = "Tidegauge-Status"
"""Header of a heartbeat's answer over NATS: the HTTP status the same answer would have (absent: 200)."""


class _Connection:
    """Connects to NATS once: an unreachable server is an error in about a second, not a retry loop.

    nats-py's own reconnection (forever, by default) would hide an outage from the uplink's breaker and
    from the link state the agent reports; here a lost connection closes the client after one quick
    reconnect attempt, and the caller connects again on its own schedule (backoff, breaker).
    """

    def __init__(self, url: str, token: str | None, name: str) -> None:
        try:
            import nats
        except ImportError as exc:
            from tidegauge.errors import MissingDependencyError

            raise MissingDependencyError("nats-py", "nats") from exc
        self._nats = nats
        self.servers = [u.strip() for u in url.split(",") if u.strip()]
        self.token = token
        self.name = name

    async def connect(self) -> Any:
        async def quiet(exc: Exception) -> None:  # nats-py prints a traceback per failed attempt otherwise
            logger.debug("nats %s: %s", self.servers, exc)

        return await self._nats.connect(
            self.servers, token=self.token, name=self.name, error_cb=quiet, connect_timeout=2,
            # one retry per server 0.2 s later, then NoServersError (initial connect) or a closed client
            max_reconnect_attempts=1, reconnect_time_wait=0.2)


def _connection(url: str, token: str | None, name: str) -> _Connection:
    return _Connection(url, token, name)


async def ensure_stream(js: Any, config: JetStreamConfig) -> None:
    """Create the work-queue stream if it does not exist (an existing one is used as it is)."""
    import nats.js.errors
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    try:
        await js.stream_info(config.stream)
        return
    except nats.js.errors.NotFoundError:
        pass
    try:
        await js.add_stream(StreamConfig(
            name=config.stream, subjects=[f"{config.subject}.>"], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, duplicate_window=parse_duration(config.duplicate_window) / 1e6))
        logger.info("jetstream: created stream %s on %s.>", config.stream, config.subject)
    except nats.js.errors.BadRequestError:
        await js.stream_info(config.stream)  # created meanwhile by the other side: fine if it exists now


class JetStreamUplink(Uplink):
    """:class:`~tidegauge.edge.uplink.Uplink` publishing to JetStream (see the module docstring).

    ``url`` is one or more NATS server URLs (comma-separated); ``token`` is the NATS server's auth token.
    """

    def __init__(self, outbox: Any, url: str, *, node_id: str, token: str | None = None,
                 config: Any = None, jetstream: JetStreamConfig | None = None, clock: Any = None,
                 seed: int | None = None) -> None:
        self.jetstream = jetstream or JetStreamConfig()
        super().__init__(outbox, url, node_id=node_id, token=token, config=config, clock=clock, seed=seed)

    def _open(self, token: str | None) -> None:
        import nats.errors

        self.client = None
        self._conn = _connection(self.url, token, f"tidegauge-agent-{self.node_id}")
        self._nats_errors: tuple[type[BaseException], ...] = (nats.errors.Error, TimeoutError, OSError)
        self._probe_errors: tuple[type[BaseException], ...] = (_Refused, *self._nats_errors)
        self._nc: Any = None
        self._js: Any = None
        self._connecting = asyncio.Lock()
        self._max_payload = 1 << 20  # NATS's default until the server says
        self._timeout_s = parse_duration(self.config.timeout) / 1e6
        self._chain: dict[str, asyncio.Future[bool]] = {}
        """per stream: whether the batch published last was acknowledged (the next one waits for it)"""

    async def _jetstream(self) -> Any:
        async with self._connecting:
            if self._nc is not None and self._nc.is_closed:
                self._nc = self._js = None  # lost: connect again (the breaker paces the attempts)
            if self._js is None:
                try:
                    nc = await self._conn.connect()
                except self._nats_errors as exc:
                    raise _Refused(f"network: {type(exc).__name__}") from exc
                js = nc.jetstream(timeout=self._timeout_s)
                try:
                    await ensure_stream(js, self.jetstream)
                except self._nats_errors as exc:
                    await nc.close()
                    raise _Refused(f"network: jetstream {type(exc).__name__}: {exc}") from exc
                self._nc, self._js, self._max_payload = nc, js, nc.max_payload
            return self._js

    def _read(self, stream: str, prev: int) -> tuple[OutboxBatch, bytes, int] | None:
        cfg = self.config
        limit, room = cfg.batch_records, self._max_payload - _HEADROOM
        while True:  # a batch is one message: it must fit the server's max_payload (1 MiB by default)
            batch = self.outbox.read_batch(stream, after=prev, limit=limit, max_bytes=min(cfg.batch_bytes, room),
                                           sending=True)
            if batch is None:
                return None
            body, n_replay = self._body(stream, batch)
            if len(body) <= room or batch.records == 1:
                return batch, body, n_replay
            limit = max(1, batch.records * room // len(body))

    async def _post(self, b: _Batch) -> None:
        # registered before any await: batches of a stream are acknowledged in the order they were made
        before = self._chain.get(b.stream)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._chain[b.stream] = done
        ok = False
        try:
            js = await self._jetstream()
            headers = {k: v for k, v in b.headers.items() if k != "Content-Type"}
            headers["Nats-Msg-Id"] = headers.pop("Idempotency-Key")
            t0 = time.perf_counter()
            try:
                ack = await js.publish(subject_for(self.jetstream, self.node_id, b.stream), b.body,
                                       timeout=self._timeout_s, headers=headers)
            except self._nats_errors as exc:
                # it may have been stored (the answer was lost): published again, JetStream drops the copy
                raise _Refused(f"network: {type(exc).__name__}") from exc
            self.last_rtt_s = time.perf_counter() - t0
            if before is not None and not await asyncio.shield(before):
                raise _Refused("order: an earlier batch of the stream was not stored")
            self.cursor[b.stream] = max(self.cursor[b.stream], b.last)
            await asyncio.to_thread(self.outbox.ack, b.stream, b.last, sent=(b.first, b.records, b.size))
            self.batches += 1
            if ack.duplicate:
                self.duplicates[b.stream] += b.records
            else:
                self.sent[b.stream] += b.records
                self.replayed[b.stream] += b.replayed
            ok = True
        finally:
            done.set_result(ok)
            if self._chain.get(b.stream) is done:
                del self._chain[b.stream]

    async def heartbeat(self, body: bytes) -> tuple[int, bytes]:
        import nats.errors

        try:
            await self._jetstream()
            msg = await self._nc.request(heartbeat_subject_for(self.jetstream, self.node_id), body,
                                         timeout=self._timeout_s)
        except nats.errors.NoRespondersError as exc:
            # the upstream is down (an upstream without a coordinator answers 404): a failed heartbeat
            raise _Refused("network: no upstream answers heartbeats") from exc
        return int((msg.headers or {}).get(STATUS, "200")), bytes(msg.data)

    async def _probe(self) -> None:
        try:
            await self._jetstream()
            await self._nc.flush(timeout=self._timeout_s)
        except self._probe_errors as exc:
            await self._sleep(self._link_failed(f"network: {type(exc).__name__}"))
            return
        self._link_ok()

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(*self._nats_errors):
                await self._nc.close()


class JetStreamIntake:
    """The upstream's consumer: agent batches from JetStream through ``receiver`` (see the module docstring).

    Parameters
    ----------
    receiver:
        The :class:`~tidegauge.edge.receiver.EdgeReceiver` that also serves HTTP agents.
    url, token:
        NATS server(s) and auth token.
    config:
        Stream, subject prefix and durable consumer name.
    fetch:
        Messages asked for at a time (applied one by one, in order).
    coordinator:
        The upstream's :class:`~tidegauge.edge.coordinator.Coordinator`, which answers the agents'
        heartbeats; ``None``: heartbeats go unanswered (agents go on without a coordinator).
    """

    def __init__(self, receiver: EdgeReceiver, url: str, *, token: str | None = None,
                 config: JetStreamConfig | None = None, fetch: int = 16,
                 coordinator: Coordinator | None = None) -> None:
        import nats.errors

        self.receiver = receiver
        self.coordinator = coordinator
        self.url = url
        self.config = config or JetStreamConfig()
        self.fetch = fetch
        self._conn = _connection(url, token, "tidegauge-upstream")
        self._errors: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, TimeoutError)
        self.counts: dict[str, int] = dict.fromkeys(("applied", "duplicates", "out_of_order", "waiting",
                                                     "rejected", "heartbeats", "heartbeats_refused"), 0)
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; connection failures are retried (never raised)."""
        backoff = 0.5
        while not stop.is_set():
            nc = None
            try:
                nc = await self._conn.connect()
                sub = await self._subscribe(nc)
                # a queue group: one upstream process answers, however many share the consumer
                await nc.subscribe(f"{self.config.heartbeat_subject}.*", queue=self.config.durable,
                                   cb=self._heartbeat_handler(nc))
                self.connected.set()
                backoff = 0.5
                await self._consume(sub, stop)
            except self._errors as exc:
                logger.warning("jetstream intake %s: %s; retrying in %.1f s", self.url, exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)  # reconnect storms are pointless: 10 s is a fine cadence
            finally:
                self.connected.clear()
                if nc is not None:
                    with contextlib.suppress(*self._errors):
                        await nc.close()

    def _heartbeat_handler(self, nc: Any) -> Callable[[Any], Awaitable[None]]:
        from tidegauge.server.edge import take_heartbeat

        coordinator = self.coordinator

        async def on(msg: Any) -> None:
            def refusal(node: str) -> str | None:
                if msg.subject == heartbeat_subject_for(self.config, node):
                    return None
                return f"heartbeat of node {node!r} on subject {msg.subject}: an agent sends only its own"

            if coordinator is None:
                status, answer = 404, b'{"error": "this upstream has no coordinator (no coordinator: section)"}'
            else:
                status, answer = take_heartbeat(coordinator, bytes(msg.data), refusal)
            self.counts["heartbeats" if status == 200 else "heartbeats_refused"] += 1
            if status not in (200, 404):
                logger.warning("jetstream intake: heartbeat on %s refused (%d): %s", msg.subject, status,
                               answer.decode(errors="replace")[:300])
            if msg.reply:
                with contextlib.suppress(*self._errors):
                    await nc.publish(msg.reply, answer, headers={STATUS: str(status)})
        return on

    async def _subscribe(self, nc: Any) -> Any:
        import nats.js.errors
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        cfg = self.config
        js = nc.jetstream()
        await ensure_stream(js, cfg)
        # re-created at the oldest message not acknowledged: the work queue holds exactly those, in order
        # (a consumer kept from the last run would deliver its unacknowledged ones only after ack_wait)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(cfg.stream, cfg.durable)
        consumer = ConsumerConfig(durable_name=cfg.durable, ack_policy=AckPolicy.EXPLICIT,
                                  deliver_policy=DeliverPolicy.ALL, ack_wait=parse_duration(cfg.ack_wait) / 1e6,
                                  max_ack_pending=-1, filter_subject=f"{cfg.subject}.>")
        return await js.pull_subscribe(f"{cfg.subject}.>", durable=cfg.durable, stream=cfg.stream, config=consumer)

    async def _consume(self, sub: Any, stop: asyncio.Event) -> None:
        import nats.errors

        while not stop.is_set():
            try:
                msgs = await sub.fetch(self.fetch, timeout=0.5)  # returns at once when messages wait
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for i, m in enumerate(msgs):
                if stop.is_set() or not await self._apply(m, stop):
                    for rest in msgs[i:]:  # redelivered in order at the next start
                        with contextlib.suppress(*self._errors):
                            await rest.nak()
                    return

    async def _apply(self, m: Any, stop: asyncio.Event) -> bool:
        """Apply one message; ``False`` if stopped before it was."""
        h = m.headers or {}
        try:
            node, stream = h[wire.NODE], h[wire.STREAM]
            first, last = int(h[wire.FIRST]), int(h[wire.LAST])
            prev = int(h.get(wire.PREV, first - 1))
        except (KeyError, ValueError):
            logger.error("jetstream intake: message on %s without the edge batch headers: dropped", m.subject)
            self.counts["rejected"] += 1
            await m.term()
            return True
        if m.subject != subject_for(self.config, node, stream):
            # the subject is what NATS permissions bind to an agent (publish only on <subject>.<its id>.>):
            # a header naming another node would let one agent write as another
            logger.error("jetstream intake: batch of node %r on subject %s (expected %s): dropped", node, m.subject,
                         subject_for(self.config, node, stream))
            self.counts["rejected"] += 1
            await m.term()
            return True
        wait = 0.1
        while True:
            status, answer = await self.receiver.accept(node, stream, first, last, prev, m.data,
                                                        replay=h.get(wire.REPLAY) == "1", order_timeout_s=0,
                                                        incarnation=h.get(wire.INCARNATION, ""))
            if status == 200:
                self.counts["applied" if answer["accepted"] else "duplicates"] += 1
                await m.ack()
                return True
            if status == 409:
                logger.info("jetstream intake: %s/%s %d-%d before %d-%d was stored: dropped, the agent sends both "
                            "again", node, stream, first, last, answer.get("acked", 0) + 1, prev)
                self.counts["out_of_order"] += 1
                await m.ack()
                return True
            if status == 404:
                logger.warning("jetstream intake: %s; the batch waits in JetStream", answer["error"])
                self.counts["waiting"] += 1
                await m.nak(delay=30)  # configuring the stream needs a restart: no hurry
                return True
            if status != 503:
                logger.error("jetstream intake: batch %s refused (%d: %s): dropped",
                             wire.idempotency_key(node, stream, first, last, h.get(wire.INCARNATION, "")), status,
                             answer["error"])
                self.counts["rejected"] += 1
                await m.term()
                return True
            await m.in_progress()  # the pipeline is behind: wait here, in order, without a redelivery
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return False
            wait = min(wait * 2, 2.0)

"""The uplink over MQTT v5: the agent publishes its batches to a broker, the upstream answers each one.

``tidegauge agent --upstream mqtt://host:1883`` picks this transport (``mqtts://host:8883`` with TLS); the
upstream runs ``tidegauge serve PIPELINE --edge-db edge.db --edge-mqtt mqtt://host:1883``. The batches are
the ones of the HTTP uplink (:mod:`tidegauge.edge.wire`: the same NDJSON body), one QoS 1 PUBLISH each.

Topics (``<prefix>`` is ``tidegauge/edge`` unless configured; ``/``, ``+``, ``#`` in an agent id or stream
name become ``_``):

- ``<prefix>/<agent>/<stream>`` (agent -> upstream, QoS 1): a batch, the wire headers as MQTT v5 user
  properties, a correlation id, response topic ``<prefix>-ack/<agent>``;
- ``<prefix>-heartbeat/<agent>`` (agent -> upstream, QoS 0): a heartbeat (JSON, as ``POST
  /api/v1/edge/heartbeat``) or an empty ping, with a response topic and a correlation id too;
- ``<prefix>-ack/<agent>`` (upstream -> agent, QoS 1): every answer, the receiver's JSON body with its HTTP
  status in the user property ``tidegauge-status`` and the request's correlation id.

Guarantees, end to end (every record once, in order per stream):

- **A broker's PUBACK is not an acknowledgement.** A broker without persistence loses what it queued when it
  restarts, and Mosquitto drops QoS 1 messages beyond ``max_queued_messages`` (1,000 by default) without a
  word. So a batch leaves the agent's outbox only when the **upstream's answer** for it arrives: ``200`` is
  an acknowledgement (of every record up to its ``acked``), ``409`` rewinds, ``404`` parks the stream,
  ``503`` and anything else is a failure, as over HTTP (:class:`~tidegauge.edge.uplink.Uplink`). No answer
  within the uplink's ``timeout`` is a link failure (backoff, breaker); the batch is published again from the
  outbox and the upstream drops what it has (de-duplication by sequence number per agent, incarnation and
  stream, :class:`~tidegauge.edge.receiver.EdgeReceiver`), so a lost answer costs a resend, never a record.
- **Order**: the upstream applies a stream's batches in order (each names the one before it); a batch whose
  predecessor was lost on the way is refused with ``409`` and the agent sends again from what was applied.
- **Agent** (:class:`MqttUplink`): a clean session (``tidegauge-agent-<agent>``); an answer published while
  it is disconnected is lost, which is a timeout, above. While the link is down (circuit breaker open) it
  probes the upstream with an empty QoS 0 request on its heartbeat topic before it publishes a batch again:
  a QoS 0 message is not queued for an absent upstream (Mosquitto's default, ``queue_qos0_messages
  false``), so an outage of the upstream leaves a few copies of a batch queued at the broker (about
  ``breaker_failures``, 5 by default), not one more per probe.
- **Upstream** (:class:`MqttIntake`): subscribes ``<prefix>/+/+`` at QoS 1 with a persistent session (MQTT v5
  ``clean_start=False``, ``session_expiry`` 1 day, client id ``durable``), so batches published while it is
  down wait at the broker and are applied when it comes back, in the order they came. Each goes through
  :meth:`EdgeReceiver.accept <tidegauge.edge.receiver.EdgeReceiver.accept>` (durable append to the intake
  log), then the answer is published, then the batch is acknowledged to the broker (a crash in between
  applies it again: a duplicate, dropped). A batch whose topic names another agent than its
  ``x-edge-node`` property is refused (``403``): grant each agent's MQTT user publish rights on
  ``<prefix>/<its id>/#`` and ``<prefix>-heartbeat/<its id>`` and read rights on ``<prefix>-ack/<its id>``
  only (Mosquitto: ``pattern write tidegauge/edge/%u/#`` ... with the agent id as user name, the default).
  The upstream answers on ``<prefix>-ack/<agent>`` whatever response topic a request names, so an agent
  cannot make it publish elsewhere. One upstream process per ``durable`` name: a second one with the same
  client id takes the session over.

Heartbeats are requests on ``<prefix>-heartbeat/<agent>`` at QoS 0 (live state, not history: not queued for
an absent upstream). The upstream answers each with the agent's assignment from its coordinator (the same
JSON as over HTTP), or ``404`` where the pipeline has no coordinator, so the agent goes on without one. No
answer (the upstream is down) is a failed heartbeat, as over HTTP and NATS. A heartbeat naming another
``node_id`` than its topic's agent is refused (``403``).

Credentials: the user name is the URL's (``mqtt://NAME@host``), else the agent's id (the upstream's: its
``durable`` name); the password is the agent's token (``--token``; ``--edge-mqtt-token`` upstream). A password
in the URL is refused: URLs are logged. ``mqtts://`` checks the broker's certificate against the system's CAs
or ``ca_file``.

Broker settings (Mosquitto, ``mosquitto.conf``):

- ``persistence true`` (and a ``persistence_location``): the upstream's session and the batches queued for
  it survive a broker restart. Without it nothing is lost (the agents publish again what was not answered),
  but what was queued for a stopped upstream is sent again only after the agents' timeouts.
- ``max_queued_messages 0`` (or a bound above the batches of every agent that may queue while the upstream
  is away): the default of 1,000 drops the rest silently; those batches time out and are published again,
  so nothing is lost, but a backlog then drains at one timeout per 1,000 batches.
- ``message_size_limit`` (0 by default: MQTT's 256 MB) above the agents' ``batch_bytes`` (4 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import msgspec

from tidegauge._time import parse_duration
from tidegauge.edge import wire
from tidegauge.edge.uplink import Uplink, _Batch, _Refused

if TYPE_CHECKING:
    from tidegauge.connectors.mqtt import MqttConnection
    from tidegauge.edge.coordinator import Coordinator
    from tidegauge.edge.receiver import EdgeReceiver

__all__ = ["STATUS", "MqttEdgeConfig", "MqttIntake", "MqttUplink", "answer_topic_for", "heartbeat_topic_for",
           "is_mqtt_url", "parse_mqtt_url", "topic_for"]

logger = logging.getLogger(__name__)

STATUS = "tidegauge-status"
"""User property of an answer: the HTTP status the receiver (or the coordinator) gave."""
_LEVEL = re.compile(r"[/+#\x00]")
_QUEUED = 16
"""Batches the upstream holds in memory before it stops reading the broker (each up to 4 MiB by default)."""


class MqttEdgeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Topics both sides use, and the upstream's session."""

    prefix: str = "tidegauge/edge"
    """batches go to ``<prefix>/<agent>/<stream>``, answers to ``<prefix>-ack/<agent>``"""
    durable: str = "tidegauge-upstream"
    """the upstream's client id (its session at the broker) and default user name"""
    session_expiry: str = "1d"
    """how long the broker keeps the upstream's session (and queues batches for it) while it is away"""
    ca_file: str | None = None
    """CA bundle for ``mqtts://`` (default: the system's)"""

    def __post_init__(self) -> None:
        if not self.prefix or self.prefix.startswith("$") or self.prefix.endswith("/") or "+" in self.prefix \
                or "#" in self.prefix:
            raise ValueError(f"mqtt prefix={self.prefix!r}: use a plain topic prefix such as 'tidegauge/edge'")
        if not self.durable:
            raise ValueError("mqtt durable is empty: name the upstream's session (e.g. 'tidegauge-upstream')")
        parse_duration(self.session_expiry, name="session_expiry")


def is_mqtt_url(url: str) -> bool:
    """Whether ``url`` names an MQTT broker (``mqtt://``, ``mqtts://`` with TLS)."""
    return url.startswith(("mqtt://", "mqtts://"))


def _level(name: str) -> str:
    return _LEVEL.sub("_", name) or "_"


def topic_for(config: MqttEdgeConfig, node: str, stream: str) -> str:
    """``<prefix>/<node>/<stream>``, characters MQTT reserves in a topic level replaced by ``_``."""
    return f"{config.prefix}/{_level(node)}/{_level(stream)}"


def heartbeat_topic_for(config: MqttEdgeConfig, node: str) -> str:
    """``<prefix>-heartbeat/<node>``."""
    return f"{config.prefix}-heartbeat/{_level(node)}"


def answer_topic_for(config: MqttEdgeConfig, node: str) -> str:
    """``<prefix>-ack/<node>``: where the upstream answers the agent's batches and heartbeats."""
    return f"{config.prefix}-ack/{_level(node)}"


def parse_mqtt_url(url: str) -> tuple[bool, str, int, str | None]:
    """``(tls, host, port, user name)`` of ``mqtt(s)://[NAME@]host[:port]``; ``ValueError`` names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r}: use mqtt://host:1883 or mqtts://host:8883 (one broker)")
    if parts.password is not None:
        raise ValueError(f"{parts.scheme}://{parts.username}:***@{parts.hostname}: give the password as the "
                         "token (agent --token, serve --edge-mqtt-token), not in the URL (URLs are logged)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number") from None
    tls = parts.scheme == "mqtts"
    return tls, parts.hostname, port or (8883 if tls else 1883), parts.username


def connection_for(url: str, *, client_id: str, username: str, password: str | None, ca_file: str | None,
                   reconnect_min: float, reconnect_max: float) -> MqttConnection:
    """The :class:`~tidegauge.connectors.mqtt.MqttConnection` of an ``mqtt(s)://[NAME@]host[:port]`` URL
    (user name ``NAME``, else ``username``)."""
    from tidegauge.connectors.mqtt import MqttConnection, MqttTls

    tls, host, port, user = parse_mqtt_url(url)
    return MqttConnection(host=host, port=port, client_id=client_id, username=user or username,
                          password=password, tls=MqttTls(ca_file=ca_file) if tls else None,
                          reconnect_min=reconnect_min, reconnect_max=reconnect_max)


def _properties(packet: Literal["connect", "publish"], **values: Any) -> Any:
    """MQTT v5 properties of a CONNECT or PUBLISH packet (paho's names: ``CorrelationData=b"..."``, ...)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT if packet == "connect" else PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


class _Client:
    """One MQTT v5 client on the running event loop (:class:`~tidegauge.connectors._mqtt_loop.AsyncioPaho`,
    reconnecting with backoff); ``connected`` is set once its subscriptions are granted."""

    def __init__(self, conn: MqttConnection, *, clean_start: bool, session_expiry_s: int,
                 subscriptions: list[tuple[str, int]], on_message: Callable[[Any], None],
                 on_lost: Callable[[], None] | None = None, manual_ack: bool = False) -> None:
        from tidegauge.connectors._mqtt_loop import AsyncioPaho, BufferedClient

        self.name = conn.client_id
        self.subscriptions = subscriptions
        self.connected = asyncio.Event()
        self.generation = 0
        """counts connections: a message id is only valid on the connection that delivered it"""
        self._on_lost = on_lost
        c = conn.client(clean_session=clean_start, factory=BufferedClient, protocol="5")
        c.on_connect, c.on_disconnect, c.on_subscribe = self._on_connect, self._on_disconnect, self._on_subscribe
        c.on_message = lambda _c, _u, msg: on_message(msg)
        c.manual_ack_set(manual_ack)
        c.max_inflight_messages_set(0)  # the uplink's window bounds what is in flight, not paho's 20
        props = _properties("connect", SessionExpiryInterval=session_expiry_s) if session_expiry_s else None
        c.connect_async(conn.host, conn.port, keepalive=conn.keepalive, clean_start=clean_start, properties=props)
        self.paho = c
        self.io = AsyncioPaho(c, reconnect_min=conn.reconnect_min, reconnect_max=conn.reconnect_max,
                              name=self.name)
        self.io.start()

    def _on_connect(self, client: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            logger.warning("mqtt %s: connection refused: %s", self.name, rc)
            return
        self.io.connack_ok()
        self.generation += 1
        logger.info("mqtt %s: connected (session present: %s)", self.name, flags.session_present)
        client.subscribe(self.subscriptions)  # again even with a session: a broker without persistence forgot it

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        bad = [c for c in codes if c.is_failure]
        if bad:
            logger.error("mqtt %s: subscription to %s refused: %s (the broker's ACL?)", self.name,
                         [t for t, _ in self.subscriptions], bad)
        else:
            self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected.clear()
        if not self.io.closing:
            logger.info("mqtt %s: disconnected (%s); reconnecting", self.name, rc)
            if self._on_lost is not None:
                self._on_lost()

    def publish(self, topic: str, payload: bytes, qos: int, props: Any) -> None:
        """Publish now, or raise :class:`_Refused` (never queued in paho while disconnected)."""
        from paho.mqtt.client import MQTT_ERR_SUCCESS

        if not self.connected.is_set() or not self.paho.is_connected():
            raise _Refused("network: not connected to the broker")
        info = self.paho.publish(topic, payload, qos=qos, properties=props)
        if info.rc != MQTT_ERR_SUCCESS:
            raise _Refused(f"network: publish failed ({info.rc})")

    async def close(self) -> None:
        await self.io.close()


class MqttUplink(Uplink):
    """:class:`~tidegauge.edge.uplink.Uplink` over an MQTT v5 broker (see the module docstring).

    ``url`` is ``mqtt://[NAME@]host[:port]`` or ``mqtts://...``; ``token`` is the MQTT password (the user name
    is ``NAME``, else ``node_id``).
    """

    def __init__(self, outbox: Any, url: str, *, node_id: str, token: str | None = None, config: Any = None,
                 mqtt: MqttEdgeConfig | None = None, clock: Any = None, seed: int | None = None) -> None:
        self.mqtt = mqtt or MqttEdgeConfig()
        super().__init__(outbox, url, node_id=node_id, token=token, config=config, clock=clock, seed=seed)

    def _open(self, token: str | None) -> None:
        self.client = None
        cfg = self.config
        # paho reconnects on its own between the uplink's attempts, never slower than the breaker's probes
        self._conn = connection_for(self.url, client_id=f"tidegauge-agent-{self.node_id}", username=self.node_id,
                                    password=token, ca_file=self.mqtt.ca_file,
                                    reconnect_min=parse_duration(cfg.backoff_initial) / 1e6,
                                    reconnect_max=parse_duration(cfg.breaker_open) / 1e6)
        self._timeout_s = parse_duration(cfg.timeout) / 1e6
        self._mq: _Client | None = None
        self._answers: dict[bytes, asyncio.Future[tuple[int, bytes]]] = {}
        """correlation id -> the answer awaited"""
        self._ids = itertools.count(1)
        self._run_id = os.urandom(4).hex()  # a restarted agent never takes an answer meant for the one before
        self._answer_topic = answer_topic_for(self.mqtt, self.node_id)

    async def _connected(self) -> _Client:
        if self._mq is None:
            self._mq = _Client(self._conn, clean_start=True, session_expiry_s=0,
                               subscriptions=[(self._answer_topic, 1)], on_message=self._on_answer,
                               on_lost=self._lost)
        if not self._mq.connected.is_set():
            try:
                await asyncio.wait_for(self._mq.connected.wait(), self._timeout_s)
            except TimeoutError:
                raise _Refused(f"network: no connection to the broker {self._conn.host}:{self._conn.port} "
                               f"within {self._timeout_s:g} s") from None
        return self._mq

    def _on_answer(self, msg: Any) -> None:
        props = msg.properties
        corr = bytes(getattr(props, "CorrelationData", b""))
        waiter = self._answers.pop(corr, None)
        if waiter is None or waiter.done():
            logger.debug("uplink: answer %r without a request waiting for it (timed out): ignored", corr)
            return
        status = dict(getattr(props, "UserProperty", [])).get(STATUS, "")
        waiter.set_result((int(status) if status.isdigit() else 502, bytes(msg.payload)))

    def _lost(self) -> None:
        for waiter in self._answers.values():
            if not waiter.done():
                waiter.set_exception(_Refused("network: connection to the broker lost"))
        self._answers.clear()

    async def _request(self, topic: str, payload: bytes, *, qos: int,
                       headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """Publish a request and wait for its answer: ``(status, body)``; raises :class:`_Refused` without one."""
        mq = await self._connected()
        corr = f"{self._run_id}-{next(self._ids)}".encode()
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._answers[corr] = waiter
        try:
            props = _properties("publish", ResponseTopic=self._answer_topic, CorrelationData=corr)
            if headers:
                props.UserProperty = list(headers.items())
            mq.publish(topic, payload, qos, props)
            try:
                return await asyncio.wait_for(waiter, self._timeout_s)
            except TimeoutError:
                raise _Refused(f"timeout: no answer from the upstream within {self._timeout_s:g} s") from None
        finally:
            self._answers.pop(corr, None)

    async def _ping(self) -> None:
        await self._request(heartbeat_topic_for(self.mqtt, self.node_id), b"", qos=0)

    async def _post(self, b: _Batch) -> None:
        if self.breaker == "half_open":
            await self._ping()  # the upstream first: a batch published now would wait at the broker for it
        headers = {k: v for k, v in b.headers.items() if k != "Content-Type"}
        t0 = time.perf_counter()
        status, content = await self._request(topic_for(self.mqtt, self.node_id, b.stream), b.body, qos=1,
                                              headers=headers)
        self.last_rtt_s = time.perf_counter() - t0
        await self._settle(b, status, content)

    async def heartbeat(self, body: bytes) -> tuple[int, bytes]:
        return await self._request(heartbeat_topic_for(self.mqtt, self.node_id), body, qos=0)

    async def _probe(self) -> None:
        try:
            await self._ping()
        except _Refused as exc:
            await self._sleep(self._link_failed(str(exc)))
            return
        self._link_ok()

    async def close(self) -> None:
        self._lost()
        if self._mq is not None:
            await self._mq.close()


class MqttIntake:
    """The upstream's end: agent batches from the broker through ``receiver`` (see the module docstring).

    Parameters
    ----------
    receiver:
        The :class:`~tidegauge.edge.receiver.EdgeReceiver` that also serves HTTP agents.
    url, token:
        The broker (``mqtt(s)://[NAME@]host[:port]``) and the MQTT password.
    config:
        Topic prefix, session (client id) and its expiry.
    coordinator:
        The upstream's :class:`~tidegauge.edge.coordinator.Coordinator`, which answers the agents'
        heartbeats; ``None``: they are answered ``404`` (agents go on without a coordinator).
    """

    def __init__(self, receiver: EdgeReceiver, url: str, *, token: str | None = None,
                 config: MqttEdgeConfig | None = None, coordinator: Coordinator | None = None) -> None:
        self.receiver = receiver
        self.coordinator = coordinator
        self.url = url
        self.config = config or MqttEdgeConfig()
        # reconnecting: promptly after a broker restart, and every 10 s at most (a storm is pointless)
        self._conn = connection_for(url, client_id=self.config.durable, username=self.config.durable,
                                    password=token, ca_file=self.config.ca_file, reconnect_min=0.5,
                                    reconnect_max=10.0)
        self.counts: dict[str, int] = dict.fromkeys(("applied", "duplicates", "out_of_order", "not_taken",
                                                     "behind", "rejected", "heartbeats", "heartbeats_refused"), 0)
        self.connected = asyncio.Event()
        self._queue: asyncio.Queue[tuple[Any, int]] = asyncio.Queue()
        self._mq: _Client | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Take batches until ``stop`` is set; the connection is retried with backoff (never raises)."""
        cfg = self.config
        self._mq = mq = _Client(self._conn, clean_start=False,
                                session_expiry_s=int(parse_duration(cfg.session_expiry) / 1e6),
                                subscriptions=[(f"{cfg.prefix}/+/+", 1), (f"{cfg.prefix}-heartbeat/+", 0)],
                                on_message=self._on_message, on_lost=self.connected.clear, manual_ack=True)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if mq.connected.is_set():
                    self.connected.set()
                got = asyncio.ensure_future(self._queue.get())
                await asyncio.wait({got, stopping}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    continue
                msg, generation = got.result()
                await self._apply(msg, generation)
                if self._queue.qsize() < _QUEUED // 2:
                    mq.io.resume()
        finally:
            stopping.cancel()
            self.connected.clear()
            await mq.close()  # what was not acknowledged is delivered again to the next start

    def _on_message(self, msg: Any) -> None:
        mq = self._mq
        if mq is None:
            return
        if msg.topic.startswith(f"{self.config.prefix}-heartbeat/"):
            self._heartbeat(mq, msg)
            return
        self._queue.put_nowait((msg, mq.generation))
        if self._queue.qsize() >= _QUEUED:
            mq.io.pause()  # backpressure: the broker queues the rest

    def _answer(self, mq: _Client, node: str, msg: Any, status: int, answer: bytes, qos: int) -> bool:
        props = _properties("publish", UserProperty=[(STATUS, str(status))],
                            CorrelationData=bytes(getattr(msg.properties, "CorrelationData", b"")))
        try:
            mq.publish(answer_topic_for(self.config, node), answer, qos, props)
        except _Refused:
            return False  # not connected: the agent's request times out and is sent again
        return True

    def _heartbeat(self, mq: _Client, msg: Any) -> None:
        from tidegauge.server.edge import take_heartbeat

        node = msg.topic[len(self.config.prefix) + len("-heartbeat/"):]
        body = bytes(msg.payload)
        if not body:  # a ping: the agent checks that the upstream is there before it publishes again
            self._answer(mq, node, msg, 200, b"{}", 0)
            return

        def refusal(claimed: str) -> str | None:
            if msg.topic == heartbeat_topic_for(self.config, claimed):
                return None
            return f"heartbeat of node {claimed!r} on topic {msg.topic}: an agent sends only its own"

        if self.coordinator is None:
            status, answer = 404, b'{"error": "this upstream has no coordinator (no coordinator: section)"}'
        else:
            status, answer = take_heartbeat(self.coordinator, body, refusal)
        self.counts["heartbeats" if status == 200 else "heartbeats_refused"] += 1
        if status not in (200, 404):
            logger.warning("mqtt intake: heartbeat on %s refused (%d): %s", msg.topic, status,
                           answer.decode(errors="replace")[:300])
        self._answer(mq, node, msg, status, answer, 0)

    async def _apply(self, msg: Any, generation: int) -> None:
        """Apply one batch, answer the agent, then acknowledge it to the broker."""
        mq = self._mq
        if mq is None:
            return
        node_level = msg.topic[len(self.config.prefix) + 1:].split("/")[0]  # <prefix>/<agent>/<stream>
        h = dict(getattr(msg.properties, "UserProperty", []))
        try:
            node, stream = h[wire.NODE], h[wire.STREAM]
            first, last = int(h[wire.FIRST]), int(h[wire.LAST])
            prev = int(h.get(wire.PREV, first - 1))
        except (KeyError, ValueError):
            status, answer = 400, {"error": f"a batch needs the user properties {wire.NODE}, {wire.STREAM}, "
                                            f"{wire.FIRST}, {wire.LAST} (integers for the sequence numbers)"}
        else:
            if msg.topic != topic_for(self.config, node, stream):
                # the topic is what the broker's ACL binds to an agent (it may publish on <prefix>/<its id>/#
                # only): a property naming another node would let one agent write as another
                status, answer = 403, {"error": f"batch of node {node!r} on topic {msg.topic}: an agent sends "
                                                "only its own"}
            else:
                status, answer = await self.receiver.accept(
                    node, stream, first, last, prev, bytes(msg.payload), replay=h.get(wire.REPLAY) == "1",
                    # batches come in order on one connection: one whose predecessor is missing waits for nothing
                    order_timeout_s=0, incarnation=h.get(wire.INCARNATION, ""))
        if status == 200:
            self.counts["applied" if answer["accepted"] else "duplicates"] += 1
        elif status == 409:
            self.counts["out_of_order"] += 1
        elif status == 404:
            self.counts["not_taken"] += 1
        elif status == 503:
            self.counts["behind"] += 1
        else:
            self.counts["rejected"] += 1
            logger.error("mqtt intake: batch on %s refused (%d): %s", msg.topic, status, answer.get("error"))
        if self._answer(mq, node_level, msg, status, msgspec.json.encode(answer), 1) \
                and generation == mq.generation:
            with contextlib.suppress(Exception):  # the connection may have gone meanwhile: delivered again
                mq.paho.ack(msg.mid, msg.qos)

"""MQTT source and sink (paho-mqtt, bridged into asyncio).

Guarantees
----------
MQTT cannot replay: what the broker handed over and the client acknowledged is gone from the broker.
:class:`MqttSource` offers two acknowledgement modes:

``ack="receipt"`` (default)
    paho acknowledges each QoS 1 message (PUBACK) as soon as it is received. Fast; a crash loses the messages
    received but not yet checkpointed: **at-most-once**.
``ack="checkpoint"``
    PUBACKs are deferred until ``ack(position)``, i.e. until a checkpoint covers the message. With QoS 1 and
    ``session="persistent"`` (clean_session off + a fixed client id), messages unacknowledged at a crash are
    redelivered by the broker when the same client id reconnects: **at-least-once** (the redelivered
    messages are processed again; the broker gives no way to tell which were already checkpointed).
    Mosquitto sends at most ``max_inflight_messages`` unacknowledged messages per client (default 20) and
    then waits, so this mode needs ``max_inflight_messages 0`` (or large) in ``mosquitto.conf``, or intake
    stalls until the next checkpoint.

Broker setting every user needs: Mosquitto keeps at most ``max_queued_messages`` (default 1,000) messages
queued per client and **silently drops the rest**, QoS 1 included, as soon as a subscriber falls behind (a
burst, a checkpoint pause, a slow step). Set ``max_queued_messages 0`` (or a bound sized for your bursts) and,
for offline persistent sessions, ``persistence true``. For latency, ``set_tcp_nodelay true``: Mosquitto
leaves Nagle's algorithm on by default, and a message to a subscriber then waits up to 40 ms for the
subscriber's delayed ACK (tidegauge's own sockets have it off: :func:`._mqtt_loop.no_delay`).

The source's client runs on the flow's event loop (no network thread) and QoS 0 messages are read past
paho's per-message machinery (see :mod:`tidegauge.connectors._mqtt_loop`). Backpressure: messages go into
a bounded buffer (``buffer`` messages). When it is full the client stops reading its socket, so the broker
queues (see above) instead of tidegauge dropping. A stall longer than 1.5 x ``keepalive`` makes the broker
drop the connection; the source reconnects with exponential backoff (``reconnect_min`` .. ``reconnect_max``).

:class:`MqttSink` publishes each row as one JSON object to a topic built from a template: QoS 1 is
**at-least-once** (``pre_commit`` waits for every PUBACK; a replay after a crash publishes again), QoS 0 is
at-most-once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import polars as pl

from tidegauge.connectors._json_batch import TopicTemplate, decode_payloads, encode_rows
from tidegauge.connectors.base import Guarantee
from tidegauge.errors import ConnectorError, MissingDependencyError

try:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("paho-mqtt", "mqtt") from exc

from tidegauge.connectors._mqtt_loop import AsyncioPaho, BufferedClient, NoDelayClient  # needs paho, checked above

__all__ = ["MqttConnection", "MqttSink", "MqttSource", "MqttSourceState", "MqttTls"]

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.1
"""Longest wait for a first message before returning an empty batch: short enough that stop() is prompt,
long enough that an idle source costs nothing (a message arriving wakes the wait at once)."""
_PUBLISH_WINDOW = 10_000
"""Unacknowledged QoS 1 publishes in flight in the sink: paho's message ids are 16-bit (65,535 max)."""
_CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class MqttTls:
    """TLS settings: CA bundle, optional client certificate, and hostname checking."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True


@dataclass(frozen=True)
class MqttConnection:
    """Where and how to connect (shared by :class:`MqttSource` and :class:`MqttSink`)."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls: MqttTls | None = None
    keepalive: int = 60
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0

    def client(self, *, clean_session: bool, factory: type[paho.Client] = NoDelayClient,
               protocol: Literal["3.1.1", "5"] = "3.1.1") -> paho.Client:
        """A configured, not yet connected paho client (of class ``factory``).

        With ``protocol="5"`` (MQTT v5) ``clean_session`` is not a property of the client: pass it as
        ``clean_start`` (and a session expiry) to ``connect_async``.
        """
        if protocol not in ("3.1.1", "5"):
            raise ValueError(f"protocol={protocol!r}: use '3.1.1' or '5'")
        v5 = protocol == "5"
        c = factory(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else clean_session,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        )
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        if self.tls is not None:
            c.tls_set(ca_certs=self.tls.ca_file, certfile=self.tls.cert_file, keyfile=self.tls.key_file)
            c.tls_insecure_set(not self.tls.check_hostname)
        c.reconnect_delay_set(max(1, round(self.reconnect_min)), max(1, round(self.reconnect_max)))
        return c


class MqttSourceState(msgspec.Struct, frozen=True, tag="tidegauge.mqtt-source.v1"):
    """Messages handed out so far (MQTT has no position to resume from; this orders acknowledgements)."""

    received: int


class MqttSource:
    """Readings from MQTT topics (wildcards allowed), one JSON object or array of objects per message.

    Parameters
    ----------
    topics:
        Subscription filter(s), e.g. ``"sensors/+/telemetry"``.
    connection:
        Broker address, credentials, TLS, client id (required for ``session="persistent"``).
    qos:
        0 or 1.
    session:
        ``"clean"`` or ``"persistent"`` (the broker keeps subscriptions and queued QoS 1 messages while
        the client is away).
    ack:
        ``"receipt"`` or ``"checkpoint"``; see the module docstring for what each guarantees.
    template:
        Topic template whose fields become columns where the payload lacks them,
        e.g. ``"sensors/{sensor_id}/telemetry"``.
    buffer:
        Messages buffered between the broker connection and the flow (the backpressure bound).
    schema:
        Column types to decode into (others are inferred per batch).
    """

    snapshot_type: type | None = MqttSourceState

    def __init__(
        self,
        topics: str | Sequence[str],
        *,
        connection: MqttConnection | None = None,
        qos: Literal[0, 1] = 1,
        session: Literal["clean", "persistent"] = "clean",
        ack: Literal["receipt", "checkpoint"] = "receipt",
        template: str | None = None,
        buffer: int = 100_000,
        schema: Mapping[str, pl.DataType] | None = None,
        name: str | None = None,
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ValueError("MqttSource needs at least one topic filter")
        if qos not in (0, 1):
            raise ValueError(f"qos={qos!r}: use 0 or 1")
        if session not in ("clean", "persistent") or ack not in ("receipt", "checkpoint"):
            raise ValueError(f"session={session!r}, ack={ack!r}: use 'clean'/'persistent' and 'receipt'/'checkpoint'")
        self.connection = connection or MqttConnection()
        if session == "persistent" and not self.connection.client_id:
            raise ValueError("session='persistent' needs MqttConnection(client_id=...) so the broker can find it")
        if buffer < 1:
            raise ValueError(f"buffer={buffer}: must be >= 1")
        self.qos, self.session, self.ack, self.buffer = qos, session, ack, buffer
        self.template = TopicTemplate(template) if template else None
        self.schema = dict(schema) if schema else None
        self.name = name if name is not None else "mqtt"
        self.logic: MqttSourceLogic | None = None

    @property
    def guarantee(self) -> Guarantee:
        durable = self.qos == 1 and self.session == "persistent" and self.ack == "checkpoint"
        return "at-least-once" if durable else "at-most-once"

    def build(self, resume_state: MqttSourceState | None) -> MqttSourceLogic:
        """Connect (in the background, retrying) and subscribe; the logic is kept as ``self.logic``."""
        self.logic = MqttSourceLogic(self, 0 if resume_state is None else resume_state.received)
        return self.logic


class MqttSourceLogic:
    """Running state of an :class:`MqttSource`: a paho client, driven by the flow's event loop, filling a buffer.

    The client's socket is read by the event loop the flow runs on (:mod:`tidegauge.connectors._mqtt_loop`):
    no network thread. Built outside a running event loop (a test, a script), it connects at the first
    :meth:`next_batch` or :meth:`start`.
    """

    def __init__(self, d: MqttSource, received: int) -> None:
        self._d = d
        self._received = received
        self._buf: deque[tuple[str, bytes, int, int, int]] = deque()
        self._gen = 0  # connection generation: message ids are only valid on the connection that sent them
        self._waiter: asyncio.Event | None = None
        self._want = 1  # messages that complete the batch next_batch is filling (wakes it early)
        self._unacked: deque[tuple[int, int, int]] = deque()  # (seq, mid, gen) handed out, PUBACK deferred
        self.subscribed = threading.Event()
        self.paused = False
        """whether intake is holding off the broker (the buffer is full: the flow is behind)"""
        c = d.connection.client(clean_session=d.session == "clean", factory=BufferedClient)
        c.on_connect, c.on_disconnect = self._on_connect, self._on_disconnect
        c.on_subscribe, c.on_message = self._on_subscribe, self._on_message
        if d.ack == "checkpoint":
            c.manual_ack_set(True)
        self._client = c
        c.connect_async(d.connection.host, d.connection.port, keepalive=d.connection.keepalive)
        self._io = AsyncioPaho(c, reconnect_min=d.connection.reconnect_min,
                               reconnect_max=d.connection.reconnect_max, name=d.name)
        self._io.fast = self._on_qos0
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: start() at the first next_batch
        self._io.start()

    def start(self) -> None:
        """Connect (in the background) on the running event loop; :meth:`next_batch` does it if needed."""
        self._io.start()

    # -- paho callbacks (on the event loop) ------------------------------------------------------
    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            logger.warning("mqtt source %s: connection refused: %s", self._d.name, rc)
            return
        self._io.connack_ok()
        self._gen += 1
        logger.info("mqtt source %s: connected (session present: %s)", self._d.name, flags.session_present)
        client.subscribe([(t, int(self._d.qos)) for t in self._d.topics])

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        bad = [c for c in codes if c.is_failure]
        if bad:
            logger.error("mqtt source %s: subscription refused: %s", self._d.name, bad)
        else:
            self.subscribed.set()

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not self._io.closing:
            logger.warning("mqtt source %s: disconnected (%s); reconnecting with backoff", self._d.name, rc)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self._add(msg.topic, bytes(msg.payload), msg.mid, msg.qos)

    def _on_qos0(self, topic: str, payload: bytes) -> bool:
        """A QoS 0 message read past paho (see :mod:`tidegauge.connectors._mqtt_loop`)."""
        return self._add(topic, payload, 0, 0)

    def _add(self, topic: str, payload: bytes, mid: int, qos: int) -> bool:
        buf = self._buf
        buf.append((topic, payload, mid, qos, self._gen))
        if len(buf) >= self._d.buffer:
            # backpressure: stop reading the socket (paho hands over one packet per read, so the buffer
            # never passes its bound); the broker queues until next_batch takes messages out
            self.paused = True
            self._io.pause()
        if len(buf) >= self._want and self._waiter is not None:
            self._waiter.set()
            self._waiter = None
        return not self.paused

    # -- the flow's side -------------------------------------------------------------------------
    async def _wait(self, want: int, timeout: float) -> None:
        if len(self._buf) >= want or timeout <= 0:
            return
        event = asyncio.Event()
        self._want, self._waiter = want, event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiter = None

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        """Up to ``max_rows`` messages' readings; empty if none came within ``max(max_delay_s, 0.1 s)``.

        A batch is handed over ``max_delay_s`` after its first message arrived, or as soon as it is full:
        the time budget bounds the latency at low rates, the size bounds memory at high ones.
        """
        self._io.start()
        await self._wait(1, max(max_delay_s, _IDLE_WAIT_S))
        if not self._buf:
            return pl.DataFrame()
        await self._wait(max_rows, max_delay_s)
        buf, n = self._buf, min(max_rows, len(self._buf))
        items = [buf.popleft() for _ in range(n)]
        if self.paused:
            self.paused = False
            self._io.resume()
        if self._d.ack == "checkpoint":
            seq = self._received
            for i, (_t, _p, mid, qos, gen) in enumerate(items):
                if qos > 0:
                    self._unacked.append((seq + i + 1, mid, gen))
        self._received += n
        return decode_payloads(
            [it[1] for it in items], topics=[it[0] for it in items], template=self._d.template, schema=self._d.schema
        )

    def lag(self) -> int:
        """Messages received from the broker and not yet handed to the flow (at most ``buffer``)."""
        return len(self._buf)

    def snapshot(self) -> MqttSourceState:
        """Messages handed out so far."""
        return MqttSourceState(self._received)

    async def ack(self, position: MqttSourceState | None) -> None:
        """With ``ack="checkpoint"``, PUBACK every message up to ``position``; otherwise nothing to do."""
        if position is None:
            return
        gen = self._gen
        while self._unacked and self._unacked[0][0] <= position.received:
            _seq, mid, mgen = self._unacked.popleft()
            if mgen == gen and self._client.is_connected():
                # older connections' messages will be redelivered by the broker anyway
                self._client.ack(mid, 1)

    async def close(self) -> None:
        """Disconnect (a persistent session keeps unacknowledged messages at the broker)."""
        await self._io.close()


class MqttSink:
    """Publish each row as a JSON object to ``topic`` (a template such as ``"alerts/{sensor_id}"``).

    Parameters
    ----------
    topic:
        Topic template; ``{column}`` is replaced by the row's value.
    connection:
        Broker address, credentials, TLS.
    qos:
        0 (at-most-once) or 1 (at-least-once: ``pre_commit`` waits for the broker's PUBACKs).
    retain:
        Publish retained messages (the broker keeps the last one per topic for new subscribers).
    """

    snapshot_type: type | None = None

    def __init__(
        self,
        topic: str,
        *,
        connection: MqttConnection | None = None,
        qos: Literal[0, 1] = 1,
        retain: bool = False,
        name: str | None = None,
    ) -> None:
        if qos not in (0, 1):
            raise ValueError(f"qos={qos!r}: use 0 or 1")
        self.template = TopicTemplate(topic)
        self.connection = connection or MqttConnection()
        self.qos, self.retain = qos, retain
        self.name = name if name is not None else "mqtt"
        self.logic: MqttSourceLogic | None = None

    @property
    def guarantee(self) -> Guarantee:
        return "at-least-once" if self.qos == 1 else "at-most-once"

    def build(self, resume_state: None) -> MqttSinkLogic:
        return MqttSinkLogic(self)


class MqttSinkLogic:
    """Running publisher of an :class:`MqttSink`."""

    def __init__(self, d: MqttSink) -> None:
        self._d = d
        self._connected = threading.Event()
        self._infos: deque[paho.MQTTMessageInfo] = deque()
        c = d.connection.client(clean_session=True)
        c.on_connect = lambda _c, _u, _f, rc, _p: None if rc.is_failure else self._connected.set()
        c.max_queued_messages_set(0)
        c.connect_async(d.connection.host, d.connection.port, keepalive=d.connection.keepalive)
        c.loop_start()
        self._client = c

    def _drain(self, keep: int) -> None:
        while len(self._infos) > keep:
            info = self._infos.popleft()
            info.wait_for_publish(timeout=_CONNECT_TIMEOUT_S)
            if info.rc != paho.MQTT_ERR_SUCCESS or (self._d.qos and not info.is_published()):
                raise ConnectorError(f"mqtt sink {self._d.name}: publish failed ({paho.error_string(info.rc)})")

    async def write_batch(self, df: pl.DataFrame) -> None:
        """Publish every row (QoS 1: waits only when more than 10,000 are unacknowledged)."""
        if not df.height:
            return
        if not self._connected.is_set() and not await asyncio.to_thread(self._connected.wait, _CONNECT_TIMEOUT_S):
            raise ConnectorError(f"mqtt sink {self._d.name}: cannot connect to {self._d.connection.host}")
        topics = self._d.template.format_column(df).to_list()
        publish, qos, retain = self._client.publish, self._d.qos, self._d.retain
        for topic, payload in zip(topics, encode_rows(df), strict=True):
            self._infos.append(publish(topic, payload, qos=qos, retain=retain))
            if len(self._infos) >= _PUBLISH_WINDOW:
                await asyncio.to_thread(self._drain, _PUBLISH_WINDOW // 2)

    async def pre_commit(self, epoch: int) -> None:
        """Wait until the broker has acknowledged every publish so far."""
        await asyncio.to_thread(self._drain, 0)

    async def commit(self, epoch: int) -> None:
        """Nothing to do: MQTT has no transactions."""

    def snapshot(self) -> None:
        return None

    async def close(self) -> None:
        """Wait for outstanding publishes, then disconnect."""
        try:
            await asyncio.to_thread(self._drain, 0)
        finally:
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)

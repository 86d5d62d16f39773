"""Publishing simulated readings to a broker or a tidegauge server (``tidegauge simulate --to URL``).

A target is a URL; its scheme picks the transport:

=====================================  ==============================================================
``mqtt://host:port/topic-template``    one MQTT message (QoS 1) per batch and topic; the template's
                                       ``{column}`` fields are filled from each reading
                                       (``sensors/{sensor_id}/telemetry``)
``nats://host:port/subject``           one JetStream publish per batch and subject (``{column}`` allowed),
                                       into the stream storing the subject (created if there is none:
                                       :func:`tidegauge.connectors.nats.ensure_publish_stream`)
``redis://host:port/stream-key``       one ``XADD`` entry (field ``data``) per batch
``http(s)://host:port/api/v1/ingest``  one NDJSON ``POST`` per batch, with ``Authorization: Bearer``
=====================================  ==============================================================

Every message holds a JSON array of readings (timestamps as ISO 8601), which all tidegauge sources accept.
Ground-truth columns (``truth_*``) are never sent: a real device does not know them. Publishing is paced
to ``rate`` readings per second of wall time (``None``: as fast as the target takes them).

Each transport's client library is imported only when a URL of its scheme is used.

Failures are one :class:`~tidegauge.errors.ConnectorError` naming the server, the ``--to`` URL and the
reason: ``cannot reach mqtt://127.0.0.1:1 (--to mqtt://127.0.0.1:1/t): connection refused`` before any
reading went through (MQTT, NATS and Redis connect before the first batch is made; HTTP on its first POST),
``lost mqtt://... after 1,500 readings (...): ...`` when the target goes away mid-run (MQTT and NATS give up
on a lost connection instead of queueing readings for a server that may not come back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec
import polars as pl

from tidegauge.errors import ConnectorError, MissingDependencyError
from tidegauge.simulate.config import FleetConfig
from tidegauge.simulate.fleet import FleetSimulator

__all__ = ["PublishSummary", "PublishTarget", "parse_target", "publish_readings"]

logger = logging.getLogger(__name__)

SCHEMES = ("mqtt", "nats", "redis", "http", "https")
_DEFAULT_PORTS = {"mqtt": 1883, "nats": 4222, "redis": 6379, "http": 80, "https": 443}
_HTTP_TIMEOUT_S = 30.0
"""One POST may wait for an fsync'd append and a busy flow: generous, it only bounds a hung server."""
_CONNECT_TIMEOUT_S = 5.0
"""A first connection (TCP and the protocol's handshake) that takes longer is a wrong address or a hung server."""
_ACK_TIMEOUT_S = 30.0
"""How long a broker may take to acknowledge a publish (MQTT PUBACK, JetStream ack) before the run fails:
generous, a broker writing to a slow disk still makes it; it only bounds a broker that stopped answering."""
_REASON_CHARS = 200
"""A reason is cut here: a server of another protocol on the port answers with a banner nobody needs whole."""


@dataclass(frozen=True)
class PublishTarget:
    """A parsed ``--to`` URL: scheme, host, port and the path (topic template, subject, stream key or URL path)."""

    scheme: str
    host: str
    port: int
    path: str
    url: str


class PublishSummary(msgspec.Struct, frozen=True):
    """What was published: readings, messages (batches x topics) and wall seconds."""

    target: str
    readings: int
    messages: int
    seconds: float

    def line(self) -> str:
        rate = self.readings / self.seconds if self.seconds > 0 else 0.0
        return (f"published {self.readings:,} readings in {self.messages:,} messages to {self.target} "
                f"in {self.seconds:.2f}s ({rate:,.0f}/s)")


def parse_target(url: str) -> PublishTarget:
    """Parse and check a ``--to`` URL; ``ValueError`` says what a valid one looks like.

    >>> parse_target("nats://127.0.0.1:4222/sensors.{sensor_id}").path
    'sensors.{sensor_id}'
    >>> parse_target("redis://localhost/readings").port
    6379
    """
    examples = ("mqtt://host:1883/sensors/{sensor_id}/telemetry, nats://host:4222/sensors.{sensor_id}, "
                "redis://host:6379/readings or http://host:8080/api/v1/ingest")
    try:
        parts = urlsplit(url)
        given = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", a port that is not a number
        raise ValueError(f"--to {url!r}: {exc}; write it like {examples}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"--to {url!r}: unknown scheme {parts.scheme!r}; use one of {examples}")
    if given == 0:  # urlsplit accepts it, no server listens there
        raise ValueError(f"--to {url!r}: port 0 is not a server port; use one from 1 to 65535")
    port = given or _DEFAULT_PORTS[scheme]
    path = parts.path if scheme in ("http", "https") else parts.path.lstrip("/")
    if not parts.hostname or not path:
        raise ValueError(f"--to {url!r}: give a host and a {_path_name(scheme)}, e.g. {examples}")
    return PublishTarget(scheme, parts.hostname, port, path, url)


def _path_name(scheme: str) -> str:
    return {"mqtt": "topic", "nats": "subject", "redis": "stream key"}.get(scheme, "path (/api/v1/ingest)")


def _batches(config: FleetConfig, rows: int, batch: int) -> Iterator[pl.DataFrame]:
    sim = FleetSimulator(config)
    done = 0
    while done < rows:
        df = sim.next_batch(min(batch, rows - done))
        done += df.height
        yield df.drop([c for c in df.columns if c.startswith("truth_")])


def _groups(df: pl.DataFrame, template: str, separator: str) -> list[tuple[str, bytes]]:
    """``(topic, JSON array payload)`` per distinct topic the template gives the batch's rows."""
    from tidegauge.connectors._json_batch import TopicTemplate

    t = TopicTemplate(template, separator=separator)
    if not t.fields:
        return [(template, _json_array(df))]
    missing = [f for f in t.fields if f not in df.columns]
    if missing:
        raise ValueError(f"topic template {template!r} names {missing}, which readings do not have; "
                         f"use columns of {df.columns}")
    out = []
    for values, part in df.group_by(list(t.fields), maintain_order=True):
        topic = template
        for field, value in zip(t.fields, values, strict=True):
            topic = topic.replace("{" + field + "}", str(value))
        out.append((topic, _json_array(part)))
    return out


def _json_array(df: pl.DataFrame) -> bytes:
    return df.write_json().encode()


Sender = Callable[[pl.DataFrame], Awaitable[int]]


def publish_readings(url: str, config: FleetConfig, *, rows: int, rate: float | None = None, batch: int = 500,
                     token: str | None = None) -> PublishSummary:
    """Publish ``rows`` simulated readings of ``config`` to ``url`` in batches of ``batch``, paced to ``rate``/s."""
    target = parse_target(url)
    if batch < 1:
        raise ValueError(f"batch={batch}: must be >= 1")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate={rate}: must be > 0 (or None: as fast as possible)")
    return asyncio.run(_publish(target, _batches(config, rows, batch), rate=rate, token=token))


async def _publish(target: PublishTarget, frames: Iterator[pl.DataFrame], *, rate: float | None,
                   token: str | None) -> PublishSummary:
    opener = {"mqtt": _mqtt, "nats": _nats, "redis": _redis, "http": _http, "https": _http}[target.scheme]
    connection = opener(target, token)
    readings = messages = 0
    try:
        await connection.open()
        start = time.monotonic()
        for df in frames:
            messages += await connection.send(df)
            readings += df.height
            if rate is not None:
                # pace on the total so far: a slow send is caught up on, not added to every later batch
                ahead = start + readings / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
    except connection.errors as exc:
        with contextlib.suppress(*connection.errors):  # the connection is broken already: report why it broke
            await connection.close()
        raise ConnectorError(_failure(target, exc, readings)) from exc
    except BaseException:
        with contextlib.suppress(*connection.errors):
            await connection.close()
        raise
    try:
        await connection.close()
    except connection.errors as exc:
        raise ConnectorError(_failure(target, exc, readings)) from exc
    return PublishSummary(target.url, readings, messages, time.monotonic() - start)


def _failure(target: PublishTarget, exc: BaseException, readings: int) -> str:
    """One line: the server, the ``--to`` URL and the reason (``readings``: how many went through before)."""
    server = f"{target.scheme}://{target.host}:{target.port}"
    what = f"cannot reach {server}" if readings == 0 else f"lost {server} after {readings:,} readings"
    return f"{what} (--to {target.url}): {_reason(exc, target.host)}"


def _reason(exc: BaseException, host: str) -> str:
    """The most telling words for ``exc``: the operating system's error underneath the client library's, if any.

    >>> _reason(ConnectionRefusedError(111, "Connect call failed"), "h")
    'connection refused'
    """
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:  # clients wrap the socket's error in their own
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return f"cannot resolve host {host!r} ({e.strerror or e})"
        if isinstance(e, TimeoutError):
            return str(e) if str(e) else "timed out"
        if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return f"the server closed the connection ({e.strerror or type(e).__name__})"
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror[:1].lower() + e.strerror[1:]
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS] + "..."


class _Connection:
    """One transport's ``open``, ``send(batch) -> messages`` and ``close``, and the exceptions (``errors``) by
    which its client library says that talking to the target failed."""

    def __init__(self, open: Callable[[], Awaitable[None]], send: Sender, close: Callable[[], Awaitable[None]],
                 errors: tuple[type[BaseException], ...]) -> None:
        self.open, self.send, self.close, self.errors = open, send, close, errors


def _mqtt(target: PublishTarget, token: str | None) -> _Connection:
    try:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from tidegauge.connectors._mqtt_loop import NoDelayClient
    except ImportError as exc:
        raise MissingDependencyError("paho-mqtt", "mqtt") from exc
    # without Nagle's delay, as tidegauge's other MQTT clients (a publish would wait for a delayed ACK)
    client = NoDelayClient(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    # paho's default of 20 messages in flight would throttle a batch; 0 lifts the limit
    client.max_inflight_messages_set(0)
    connack: asyncio.Future[str | None] | None = None
    lost: list[str] = []  # why the broker went away: paho would reconnect, and queue, forever
    loop = asyncio.get_running_loop()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if connack is not None and not connack.done():
            loop.call_soon_threadsafe(connack.set_result, str(reason) if reason.is_failure else None)

    def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        lost.append("the connection to the broker closed")  # paho's reason is "Unspecified error"

    client.on_connect, client.on_disconnect = on_connect, on_disconnect

    async def open() -> None:
        nonlocal connack
        connack = loop.create_future()
        client.connect(target.host, target.port)
        client.loop_start()
        try:
            refused = await asyncio.wait_for(connack, _CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise TimeoutError(f"no CONNACK within {_CONNECT_TIMEOUT_S:g} s") from None
        if refused is not None:
            raise ConnectionError(f"the broker refused the connection: {refused}")

    async def puback(info: Any) -> None:
        deadline = time.monotonic() + _ACK_TIMEOUT_S
        while not info.is_published():
            if lost:
                raise ConnectionError(lost[0])
            if time.monotonic() > deadline:
                raise TimeoutError(f"no PUBACK within {_ACK_TIMEOUT_S:g} s")
            await asyncio.to_thread(info.wait_for_publish, 0.2)  # short: a lost connection is noticed soon

    async def send(df: pl.DataFrame) -> int:
        if lost:
            raise ConnectionError(lost[0])
        infos = [client.publish(topic, payload, qos=1) for topic, payload in _groups(df, target.path, "/")]
        for info in infos:  # wait for the PUBACKs: the batch is at the broker when send returns
            try:
                await puback(info)
            except RuntimeError as exc:  # paho: "Message publish failed: The client is not currently connected."
                raise ConnectionError(lost[0] if lost else str(exc)) from exc
        return len(infos)

    async def close() -> None:
        client.disconnect()
        client.loop_stop()

    return _Connection(open, send, close, (OSError,))


def _nats(target: PublishTarget, token: str | None) -> _Connection:
    try:
        import nats
        import nats.errors
    except ImportError as exc:
        raise MissingDependencyError("nats-py", "nats") from exc
    state: dict[str, Any] = {}
    failures: list[Exception] = []
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:  # nats-py logs a traceback per failed attempt otherwise
        failures.append(exc)
        logger.debug("nats %s: %s", target.url, exc)

    async def on_closed() -> None:  # nats-py leaves publishes waiting for their acks until they time out
        if not closed.done():
            closed.set_result(None)

    async def open() -> None:
        try:
            # one retry 0.2 s later, then NoServersError; after a disconnection mid-run, the same, then a
            # closed client: the run fails instead of waiting for a server that may not come back
            state["nc"] = await nats.connect(
                f"nats://{target.host}:{target.port}", token=token, name="tidegauge-simulate", error_cb=on_error,
                connect_timeout=_CONNECT_TIMEOUT_S, max_reconnect_attempts=1, reconnect_time_wait=0.2,
                closed_cb=on_closed)
        except nats.errors.NoServersError as exc:
            raise (failures[-1] if failures else exc) from exc
        state["js"] = state["nc"].jetstream(timeout=_ACK_TIMEOUT_S)
        from tidegauge.connectors.nats import ensure_publish_stream

        try:  # a fresh server has no stream: publishes would find no one to store them
            await ensure_publish_stream(state["js"], target.path)
        except ConnectorError as exc:
            raise ConnectorError(f"--to {target.url}: {exc}") from exc

    async def send(df: pl.DataFrame) -> int:
        groups = _groups(df, target.path, ".")
        for subject, payload in groups:
            ack = asyncio.ensure_future(state["js"].publish(subject, payload))
            await asyncio.wait((ack, closed), return_when=asyncio.FIRST_COMPLETED)
            if not ack.done():
                ack.cancel()
                last = failures[-1] if failures else None
                raise ConnectionError("the connection to the server closed" + (f" ({last})" if last else ""))
            ack.result()
        return len(groups)

    async def close() -> None:
        if "nc" in state:
            await state["nc"].close()

    return _Connection(open, send, close, (OSError, nats.errors.Error))


def _redis(target: PublishTarget, token: str | None) -> _Connection:
    try:
        import redis.asyncio as aredis
        import redis.exceptions
    except ImportError as exc:
        raise MissingDependencyError("redis", "redis") from exc
    client = aredis.Redis(host=target.host, port=target.port, password=token,
                          socket_connect_timeout=_CONNECT_TIMEOUT_S, socket_timeout=_ACK_TIMEOUT_S)

    async def open() -> None:
        await client.ping()

    async def send(df: pl.DataFrame) -> int:
        await client.xadd(target.path, {"data": _json_array(df)})
        return 1

    async def close() -> None:
        await client.aclose()

    return _Connection(open, send, close, (OSError, redis.exceptions.RedisError))


def _http(target: PublishTarget, token: str | None) -> _Connection:
    try:
        import httpx
    except ImportError as exc:
        raise MissingDependencyError("httpx", "dev") from exc
    headers = {"content-type": "application/x-ndjson"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    client = httpx.AsyncClient(timeout=httpx.Timeout(_HTTP_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S), verify=True)

    async def open() -> None:
        pass  # httpx connects on the first POST: a probe request would show in the server's access log

    async def send(df: pl.DataFrame) -> int:
        while True:
            response = await client.post(target.url, content=df.write_ndjson().encode(), headers=headers)
            if response.status_code in (429, 503):  # backpressure: wait as told, then send the batch again
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            if response.status_code >= 300:
                raise ConnectorError(f"POST {target.url}: {response.status_code} {response.text[:200]}")
            return 1

    async def close() -> None:
        await client.aclose()

    return _Connection(open, send, close, (OSError, httpx.TransportError))

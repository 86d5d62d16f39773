"""Publishing simulated readings to a broker or a tidegauge server (``tidegauge simulate --to URL``).

A target is a URL; its scheme picks the transport:

=====================================  ==============================================================
``mqtt://host:port/topic-template``    one MQTT message (QoS 1) per batch and topic; the template's
                                       ``{column}`` fields are filled from each reading
                                       (``sensors/{sensor_id}/telemetry``)
``nats://host:port/subject``           one JetStream publish per batch and subject (``{column}`` allowed)
``redis://host:port/stream-key``       one ``XADD`` entry (field ``data``) per batch
``http(s)://host:port/api/v1/ingest``  one NDJSON ``POST`` per batch, with ``Authorization: Bearer``
=====================================  ==============================================================

Every message holds a JSON array of readings (timestamps as ISO 8601), which all tidegauge sources accept.
Ground-truth columns (``truth_*``) are never sent: a real device does not know them. Publishing is paced
to ``rate`` readings per second of wall time (``None``: as fast as the target takes them).

Each transport's client library is imported only when a URL of its scheme is used.
"""

from __future__ import annotations

import asyncio
import logging
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
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    examples = ("mqtt://host:1883/sensors/{sensor_id}/telemetry, nats://host:4222/sensors.{sensor_id}, "
                "redis://host:6379/readings or http://host:8080/api/v1/ingest")
    if scheme not in SCHEMES:
        raise ValueError(f"--to {url!r}: unknown scheme {parts.scheme!r}; use one of {examples}")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"--to {url!r}: the port is not a number") from None
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
    start = time.monotonic()
    readings = messages = 0
    async with opener(target, token) as send:
        for df in frames:
            messages += await send(df)
            readings += df.height
            if rate is not None:
                # pace on the total so far: a slow send is caught up on, not added to every later batch
                ahead = start + readings / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
    return PublishSummary(target.url, readings, messages, time.monotonic() - start)


class _Connection:
    """An async context manager giving a ``send(batch) -> messages`` callable."""

    def __init__(self, send: Sender, close: Callable[[], Awaitable[None]]) -> None:
        self._send, self._close = send, close

    async def __aenter__(self) -> Sender:
        return self._send

    async def __aexit__(self, *exc: object) -> None:
        await self._close()


def _mqtt(target: PublishTarget, token: str | None) -> _Connection:
    try:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError as exc:
        raise MissingDependencyError("paho-mqtt", "mqtt") from exc
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    # paho's default of 20 messages in flight would throttle a batch; 0 lifts the limit
    client.max_inflight_messages_set(0)
    try:
        client.connect(target.host, target.port)
    except OSError as exc:
        raise ConnectorError(f"cannot connect to MQTT at {target.host}:{target.port}: {exc}") from exc
    client.loop_start()

    async def send(df: pl.DataFrame) -> int:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in _groups(df, target.path, "/")]
        for info in infos:  # wait for the PUBACKs: the batch is at the broker when send returns
            await asyncio.to_thread(info.wait_for_publish)
        return len(infos)

    async def close() -> None:
        client.disconnect()
        client.loop_stop()

    return _Connection(send, close)


def _nats(target: PublishTarget, token: str | None) -> _Connection:
    try:
        import nats
        import nats.errors
    except ImportError as exc:
        raise MissingDependencyError("nats-py", "nats") from exc
    state: dict[str, Any] = {}

    async def send(df: pl.DataFrame) -> int:
        if "nc" not in state:
            try:
                state["nc"] = await nats.connect(f"nats://{target.host}:{target.port}", token=token)
            except (OSError, nats.errors.Error) as exc:
                raise ConnectorError(f"cannot connect to NATS at {target.host}:{target.port}: {exc}") from exc
        js = state["nc"].jetstream()
        groups = _groups(df, target.path, ".")
        acks = [await js.publish(subject, payload) for subject, payload in groups]
        return len(acks)

    async def close() -> None:
        if "nc" in state:
            await state["nc"].close()

    return _Connection(send, close)


def _redis(target: PublishTarget, token: str | None) -> _Connection:
    try:
        import redis.asyncio as aredis
    except ImportError as exc:
        raise MissingDependencyError("redis", "redis") from exc
    client = aredis.Redis(host=target.host, port=target.port, password=token)

    async def send(df: pl.DataFrame) -> int:
        await client.xadd(target.path, {"data": _json_array(df)})
        return 1

    async def close() -> None:
        await client.aclose()

    return _Connection(send, close)


def _http(target: PublishTarget, token: str | None) -> _Connection:
    try:
        import httpx
    except ImportError as exc:
        raise MissingDependencyError("httpx", "dev") from exc
    headers = {"content-type": "application/x-ndjson"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    client = httpx.AsyncClient(timeout=_HTTP_TIMEOUT_S, verify=True)

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

    return _Connection(send, close)

"""The MQTT source's own socket handling: framing a byte stream into packets, QoS 0 past paho, pausing.

The framing tests need no broker: a fake socket hands over a recorded stream in pieces of every size, and
the reader is driven as :class:`~tidegauge.connectors._mqtt_loop.AsyncioPaho` drives it (QoS 0 PUBLISH
packets taken directly, every other packet read the way paho reads one: command byte, length bytes one by
one, then the body). The broker tests run against Mosquitto: QoS 0 and QoS 1 interleaved on one
subscription (both paths in one stream), backpressure on the QoS 0 path, and reconnecting (with backoff,
subscribing again) to a broker that was not there at first and is then restarted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import polars as pl
import pytest

from tests.connectors.servers import paho_publisher, private_mosquitto, require, rows_in, unique
from tests.net import free_port, until
from tidegauge.connectors._mqtt_loop import _FramedSocket
from tidegauge.connectors.mqtt import MqttConnection, MqttSource
from tidegauge.dataflow import Flow
from tidegauge.testing import MemorySink


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: str, payload: bytes, *, qos: int = 0, retain: bool = False, mid: int = 1) -> bytes:
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode() + (mid.to_bytes(2, "big") if qos else b"")
    body += payload
    return bytes([0x30 | qos << 1 | int(retain)]) + _varint(len(body)) + body


PINGRESP = b"\xd0\x00"
SUBACK = b"\x90\x03\x00\x01\x01"


class FakeSocket:
    """Serves the bytes that have 'arrived'; BlockingIOError when there are none, b'' once closed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def recv(self, n: int) -> bytes:
        if not self.data:
            if self.closed:
                return b""
            raise BlockingIOError
        out = bytes(self.data[:n])
        del self.data[:n]
        return out


def drive(sock: _FramedSocket, events: list[tuple[str, object, object]], *, stop_after: int | None = None) -> None:
    """What AsyncioPaho._on_readable does, with paho's way of reading a packet written out."""

    def deliver(topic: str, payload: bytes) -> bool:
        events.append(("fast", topic, payload))
        return stop_after is None or len(events) < stop_after

    while True:
        sock.take_fast(deliver)
        if stop_after is not None and len(events) >= stop_after:
            return
        if sock.has_packet():
            first = sock.recv(1)
            if not first:
                events.append(("eof", None, None))
                return
            header, length, mult = first, 0, 1
            while True:
                b = sock.recv(1)
                header += b
                length += (b[0] & 0x7F) * mult
                mult *= 128
                if not b[0] & 0x80:
                    break
            body = sock.recv(length) if length else b""
            assert len(body) == length, "paho would have been served part of a packet"
            events.append(("paho", header + body, None))
        elif not sock.fill():
            if sock.has_packet():
                continue
            return


STREAM = [
    SUBACK,
    publish("sensors/a/telemetry", b'{"v": 1}'),
    publish("sensors/b/telemetry", b"x" * 200),  # two length bytes
    publish("sensors/c/telemetry", b"y" * 20_000),  # three length bytes
    publish("sensors/d/telemetry", b'{"v": 2}', qos=1, mid=7),  # needs a PUBACK: paho's
    PINGRESP,
    publish("sensors/\u00e9/telemetry", b'{"v": 3}', retain=True),
    publish("sensors/f/telemetry", b""),
]


def expected() -> list[tuple[str, object, object]]:
    out: list[tuple[str, object, object]] = []
    for p in STREAM:
        if p[0] & 0xF6 == 0x30:
            tlen = 0
            i = 1
            while p[i] & 0x80:
                i += 1
            i += 1
            tlen = int.from_bytes(p[i:i + 2], "big")
            out.append(("fast", p[i + 2:i + 2 + tlen].decode(), p[i + 2 + tlen:]))
        else:
            out.append(("paho", p, None))
    return out


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 100, 4096, 1 << 20])
def test_a_stream_cut_anywhere_gives_the_same_packets_in_order(piece: int) -> None:
    raw = b"".join(STREAM)
    fake = FakeSocket()
    sock = _FramedSocket(fake)
    events: list[tuple[str, object, object]] = []
    for i in range(0, len(raw), piece):
        fake.data += raw[i:i + piece]  # arrives
        drive(sock, events)
    fake.closed = True
    drive(sock, events)
    assert events == [*expected(), ("eof", None, None)]


def test_a_stop_leaves_the_rest_buffered_in_order() -> None:
    fake = FakeSocket()
    sock = _FramedSocket(fake)
    fake.data += b"".join(STREAM)
    events: list[tuple[str, object, object]] = []
    drive(sock, events, stop_after=3)  # the consumer is full after the third message (backpressure)
    assert len(events) == 3 and not fake.data  # read from the socket, but not handed over
    drive(sock, events)
    assert events == expected()


def _reading(seq: int) -> bytes:
    return msgspec.json.encode({"timestamp": f"2026-01-01T00:00:{seq // 1000 % 60:02d}.{seq % 1000:03d}Z",
                                "seq": seq})


@pytest.mark.server
def test_qos0_and_qos1_messages_on_one_subscription_all_arrive_once(tmp_path: Path) -> None:
    require("mosquitto")
    n = 4_000
    with private_mosquitto(tmp_path) as port:
        topic = unique("mix")
        source = MqttSource(f"{topic}/+", connection=MqttConnection(port=port), qos=1,
                            template=f"{topic}/{{sensor_id}}")
        sink = MemorySink()
        flow = Flow("mqtt-mixed")
        flow.source(source).sink(sink)

        async def main() -> None:
            runner = flow.runner(max_delay="1ms")
            task = asyncio.create_task(runner.run_async())
            await until(lambda: source.logic is not None and source.logic.subscribed.is_set())
            with paho_publisher(port) as pub:
                infos = [pub.publish(f"{topic}/s{i % 3}", _reading(i), qos=i % 2) for i in range(n)]
                await asyncio.to_thread(lambda: [i.wait_for_publish(30) for i in infos])
                await until(lambda: rows_in(sink) >= n)
                await asyncio.sleep(0.2)  # a duplicate would show up here
            runner.stop()
            await task

        asyncio.run(main())
    out = sink.to_frame()
    assert sorted(out["seq"].to_list()) == list(range(n))
    assert out.filter(pl.col("seq") == 4)["sensor_id"].item() == "s1"


@pytest.mark.server
def test_qos0_intake_pauses_at_the_buffer_bound_and_loses_nothing(tmp_path: Path) -> None:
    require("mosquitto")
    n, buffer = 3_000, 150
    with private_mosquitto(tmp_path) as port:
        topic = unique("bp0")
        source = MqttSource(f"{topic}/+", connection=MqttConnection(port=port), qos=0, buffer=buffer,
                            template=f"{topic}/{{sensor_id}}")
        sink = MemorySink()
        flow = Flow("bp-mqtt-qos0")
        flow.source(source).sink(sink)
        seen = {"max_buf": 0, "paused": False}

        async def main() -> None:
            runner = flow.runner(max_batch=50, max_delay="1ms", queue_batches=1)
            task = asyncio.create_task(runner.run_async())
            await until(lambda: source.logic is not None and source.logic.subscribed.is_set())
            logic = source.logic
            assert logic is not None
            original = logic.next_batch

            async def slow_next_batch(max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
                seen["max_buf"] = max(seen["max_buf"], logic.lag())
                seen["paused"] = seen["paused"] or logic.paused
                if rows_in(sink) < n // 2:
                    await asyncio.sleep(0.02)  # the flow is behind for the first half
                return await original(max_rows, max_delay_s)

            logic.next_batch = slow_next_batch  # type: ignore[method-assign]
            with paho_publisher(port) as pub:
                infos = [pub.publish(f"{topic}/s{i % 5}", _reading(i), qos=0) for i in range(n)]
                await asyncio.to_thread(lambda: [i.wait_for_publish(30) for i in infos])
                await until(lambda: rows_in(sink) >= n)
                await asyncio.sleep(0.2)
            runner.stop()
            await task

        asyncio.run(main())
    assert seen["paused"] is True
    assert seen["max_buf"] <= buffer
    assert sorted(sink.to_frame()["seq"].to_list()) == list(range(n))


def _publish_all(port: int, topic: str, seqs: range) -> None:
    with paho_publisher(port) as pub:
        infos = [pub.publish(f"{topic}/s{i % 3}", _reading(i), qos=1) for i in seqs]
        for info in infos:
            info.wait_for_publish(30)


@pytest.mark.server
def test_the_source_reconnects_with_backoff_and_subscribes_again(tmp_path: Path) -> None:
    require("mosquitto")
    port = free_port()
    topic = unique("re")
    # no broker yet: the first attempts are refused and retried (0.1 s, 0.2 s, 0.4 s, ...)
    source = MqttSource(f"{topic}/+", connection=MqttConnection(port=port, reconnect_min=0.1, reconnect_max=0.5),
                        qos=1, template=f"{topic}/{{sensor_id}}")
    sink = MemorySink()
    flow = Flow("mqtt-reconnect")
    flow.source(source).sink(sink)

    async def main() -> None:
        runner = flow.runner(max_delay="1ms")
        task = asyncio.create_task(runner.run_async())
        await asyncio.sleep(0.5)
        assert source.logic is not None and not source.logic.subscribed.is_set()
        with private_mosquitto(tmp_path, port=port):
            await until(source.logic.subscribed.is_set, timeout=15)
            await asyncio.to_thread(_publish_all, port, topic, range(0, 500))
            await until(lambda: rows_in(sink) >= 500, timeout=15)
        source.logic.subscribed.clear()  # the broker is gone; a new one must get a new subscription
        await asyncio.sleep(0.5)
        with private_mosquitto(tmp_path, port=port):
            await until(source.logic.subscribed.is_set, timeout=15)
            await asyncio.to_thread(_publish_all, port, topic, range(500, 1000))
            await until(lambda: rows_in(sink) >= 1000, timeout=15)
            runner.stop()
            await task

    asyncio.run(main())
    assert sorted(sink.to_frame()["seq"].to_list()) == list(range(1000))

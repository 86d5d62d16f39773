"""MQTT source and sink against the real Mosquitto on 127.0.0.1:1883."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
import polars as pl
import pytest

from tests.connectors.servers import require, rows_in, run_until, unique
from tests.net import until
from tidegauge.dataflow import Flow
from tidegauge.dataflow.runner import CheckpointConfig
from tidegauge.testing import MemorySink, MemorySource

pytestmark = pytest.mark.server

from tidegauge.connectors.mqtt import MqttConnection, MqttSink, MqttSource  # noqa: E402


@pytest.fixture(autouse=True)
def _mosquitto() -> None:
    require("mosquitto")


def reading(seq: int) -> bytes:
    stamp = f"2026-01-01T00:{seq // 60000 % 60:02d}:{seq // 1000 % 60:02d}.{seq % 1000:03d}Z"
    return msgspec.json.encode({"timestamp": stamp, "seq": seq, "temperature": 20.0 + seq % 7})


class Publisher:
    """A plain paho publisher (QoS 1) for the tests."""

    def __init__(self) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        assert connected.wait(10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_flow(source: MqttSource) -> tuple[Flow, MemorySink, MemorySink]:
    flow = Flow("mqtt-test")
    sink, dead = MemorySink(), MemorySink()
    flow.source(source).sink(sink)
    flow.dead_letters().sink(dead)
    return flow, sink, dead


def test_every_message_arrives_with_key_from_topic_and_bad_payloads_dead_lettered() -> None:
    base = unique("tg")
    n, chunk = 3_000, 500
    flow, sink, dead = make_flow(MqttSource(f"{base}/+/telemetry", template=f"{base}/{{sensor_id}}/telemetry"))
    pub = Publisher()

    async def feed() -> None:
        # probe until the subscription is live (messages before SUBACK are not delivered to a clean session)
        while rows_in(dead) == 0:
            pub.publish(f"{base}/probe/telemetry", b"not json")
            await asyncio.sleep(0.1)
        # chunks: Mosquitto's default queue (1,000 per client) drops for a lagging subscriber; here any
        # missing message is a tidegauge loss, not the broker's
        for start in range(0, n, chunk):
            for seq in range(start, start + chunk):
                pub.client.publish(f"{base}/s{seq % 10}/telemetry", reading(seq), qos=1)
            while rows_in(sink) < start + chunk:
                await asyncio.sleep(0.02)
        pub.publish(f"{base}/s1/telemetry", b'[{"timestamp": "2026-01-01T01:00:00Z", "seq": -1}, 5]')

    async def main() -> None:
        feeder = asyncio.create_task(feed())
        await run_until(flow, sink, n, timeout=60)
        await asyncio.wait_for(feeder, 10)
        await asyncio.sleep(0.3)

    try:
        asyncio.run(main())
    finally:
        pub.close()
    out = sink.to_frame()
    seqs = out["seq"].to_list()
    assert sorted(seqs) == list(range(n)), f"lost {n - len(set(seqs))} of {n} messages"
    assert out.filter(pl.col("seq") == 7)["sensor_id"].item() == "s7"
    reasons = dead.to_frame()["reason"].to_list()
    assert all("JSON" in r for r in reasons)
    assert any("not an object" in r for r in reasons)


def test_checkpoint_ack_redelivers_after_stop_without_checkpoint(tmp_path: Path) -> None:
    base, client_id = unique("tg"), unique("tg-sub")
    source = MqttSource(
        f"{base}/#", template=f"{base}/{{sensor_id}}", connection=MqttConnection(client_id=client_id),
        session="persistent", ack="checkpoint",
    )
    assert source.guarantee == "at-least-once"
    # create the persistent session, then publish while it is offline: the broker queues for it
    pre = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    subscribed = threading.Event()
    pre.on_subscribe = lambda *a: subscribed.set()
    pre.connect("127.0.0.1", 1883)
    pre.subscribe(f"{base}/#", qos=1)
    pre.loop_start()
    assert subscribed.wait(10)
    pre.disconnect()
    pre.loop_stop()
    pub = Publisher()
    for seq in range(10):
        pub.publish(f"{base}/s{seq}", reading(seq))
    pub.close()

    def run(checkpoint: CheckpointConfig | None, expect: int) -> list[int]:
        flow, sink, _ = make_flow(source)
        asyncio.run(run_until(flow, sink, expect, timeout=3 if expect == 0 else 20, checkpoint=checkpoint))
        return sorted(sink.to_frame()["seq"].to_list()) if rows_in(sink) else []

    assert run(None, 10) == list(range(10))  # no checkpoint: nothing acknowledged
    assert run(None, 10) == list(range(10))  # so the broker redelivers
    cp = CheckpointConfig(dir=tmp_path / "cp", interval="1h")
    assert run(cp, 10) == list(range(10))  # stop takes a final checkpoint, which acknowledges
    assert run(cp, 0) == []


def test_sink_publishes_rows_to_templated_topics() -> None:
    base = unique("tg")
    got: list[tuple[str, dict[str, object]]] = []
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda _c, _u, m: got.append((m.topic, msgspec.json.decode(m.payload)))
    sub.connect("127.0.0.1", 1883)
    sub.subscribe(f"{base}/#", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        flow = Flow("mqtt-sink")
        df = pl.DataFrame({"sensor_id": ["a", "b", "a"], "timestamp": [f"2026-01-01T00:00:0{i}Z" for i in range(3)],
                           "v": [1.5, 2.5, None]})
        flow.source(MemorySource(df)).sink(MqttSink(f"{base}/{{sensor_id}}/out"))
        result = flow.run()
        assert result.records_in == 3
        for _ in range(200):
            if len(got) == 3:
                break
            threading.Event().wait(0.02)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert sorted(((t, m["v"]) for t, m in got), key=str) == sorted(
        [(f"{base}/a/out", 1.5), (f"{base}/b/out", 2.5), (f"{base}/a/out", None)], key=str
    )


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="client_id"):
        MqttSource("a/#", session="persistent")
    with pytest.raises(ValueError, match="qos"):
        MqttSource("a/#", qos=2)  # type: ignore[arg-type]


@pytest.mark.server
def test_source_and_sink_sockets_send_without_nagle_delay() -> None:
    """paho leaves Nagle's algorithm on: a PUBACK or a small PUBLISH then waits up to 40 ms for the broker's
    delayed ACK (the whole of the publish-to-output tail measured at 10,000 readings/s)."""
    import socket

    require("mosquitto")
    base = unique("nodelay")
    source = MqttSource(f"{base}/+", qos=1, template=f"{base}/{{sensor_id}}")
    sink = MqttSink(f"{base}/{{sensor_id}}/out")

    async def main() -> tuple[int, int]:
        logic = source.build(None)
        await until(logic.subscribed.is_set, timeout=10)
        out = sink.build(None)
        await asyncio.to_thread(out._connected.wait, 10)
        flags = (logic._client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                 out._client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        await out.close()
        await logic.close()
        return flags

    source_flag, sink_flag = asyncio.run(main())
    assert source_flag and sink_flag

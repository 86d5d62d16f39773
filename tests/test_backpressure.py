"""Backpressure end to end: a slow sink slows intake, memory stays bounded, metrics show where, nothing is lost.

- HTTP (a real uvicorn server): the intake log's unread bytes pass ``max_lag_bytes`` and the server answers
  503 with ``Retry-After`` instead of buffering; ``/readyz`` says overloaded; once the sink is fast again,
  every record that got a 2xx reaches it exactly once.
- MQTT (a Mosquitto of the test's own with ``max_queued_messages 0``, the documented setting): the client
  buffer fills to its bound and the network thread stops reading (``tidegauge_source_paused`` 1), the
  broker queues; then every message arrives, once.
- NATS JetStream (the shared server): the runner stops asking for batches, fetching stops, the messages
  wait in the stream (``tidegauge_source_lag_messages`` shows them); then every message arrives, once.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import httpx
import msgspec
import nats
import polars as pl
import pytest
from nats.js.api import StreamConfig
from prometheus_client.parser import text_string_to_metric_families

from tests.connectors.servers import paho_publisher, private_mosquitto, require, rows_in, unique
from tests.net import until
from tests.server.helpers import TOKENS, server_config
from tidegauge.connectors.http import HttpIngestSource
from tidegauge.connectors.mqtt import MqttConnection, MqttSource
from tidegauge.connectors.nats import NatsSource
from tidegauge.dataflow import CheckpointConfig, Flow, Runner
from tidegauge.server import serve
from tidegauge.server.metrics import source_pressure
from tidegauge.testing import MemorySink

pytestmark = pytest.mark.server


class SlowSink(MemorySink):
    """A sink that takes ``delay`` seconds per batch while ``slow`` is set."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.slow = threading.Event()
        self.slow.set()

    async def write_batch(self, df: pl.DataFrame) -> None:
        if self.slow.is_set():
            await asyncio.sleep(self.delay)
        await super().write_batch(df)


def _body(start: int, n: int) -> bytes:
    return b"".join(msgspec.json.encode({"sensor_id": f"S{i % 7}", "timestamp": f"2026-01-01T00:00:{i % 60:02d}Z",
                                         "seq": i}) + b"\n" for i in range(start, start + n))


def _metric(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_http_answers_503_with_retry_after_while_the_sink_is_slow(tmp_path: Path) -> None:
    limit = 64 * 1024
    source = HttpIngestSource(tmp_path / "intake", schema={"sensor_id": "str", "timestamp": "timestamp",
                                                           "seq": "int"}, durability="os", max_lag_bytes=limit)
    sink = SlowSink(delay=0.3)
    flow = Flow("bp-http")
    flow.source(source).sink(sink)
    runner = Runner(flow, checkpoint=CheckpointConfig(tmp_path / "cp", interval="200ms"), max_batch=100,
                    max_delay="1ms", tick="20ms")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = server_config(port=port, open_metrics=True, retry_after_s=2)
    hdrs = {"authorization": f"Bearer {TOKENS['ingest']}", "content-type": "application/x-ndjson"}

    async def main() -> dict[str, object]:
        started = asyncio.Event()
        task = asyncio.create_task(serve(runner, config, environ={"TG_TEST_ADMIN": TOKENS["admin"]},
                                         started=started, handle_signals=False))
        await asyncio.wait_for(started.wait(), 30)
        seen: dict[str, object] = {"accepted": [], "max_lag": 0}
        accepted: list[int] = seen["accepted"]  # type: ignore[assignment]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                seq = 0
                refused = None
                for _ in range(400):
                    body = _body(seq, 100)
                    r = await client.post("/api/v1/ingest", content=body, headers=hdrs)
                    seen["max_lag"] = max(int(seen["max_lag"]), source.lag_bytes())  # type: ignore[call-overload]
                    if r.status_code == 503:
                        refused = r
                        break
                    assert r.status_code == 200
                    accepted.extend(range(seq, seq + 100))
                    seq += 100
                assert refused is not None, "the server kept accepting while the sink was slow"
                seen["retry_after"] = refused.headers.get("retry-after")
                seen["error"] = refused.json()["error"]
                seen["readyz"] = (await client.get("/readyz", headers=hdrs)).json()
                seen["lag_metric"] = _metric((await client.get("/metrics")).text, "tidegauge_intake_lag_bytes")
                seen["refused_metric"] = _metric((await client.get("/metrics")).text,
                                                 "tidegauge_ingest_refused_requests_total")
                sink.slow.clear()  # the sink catches up: intake opens again
                await until(lambda: source.lag_bytes() == 0)
                r = await client.post("/api/v1/ingest", content=_body(10**6, 10), headers=hdrs)
                assert r.status_code == 200
                accepted.extend(range(10**6, 10**6 + 10))
                await until(lambda: rows_in(sink) >= len(accepted))
        finally:
            runner.stop()
            await task
        return seen

    seen = asyncio.run(main())
    assert seen["retry_after"] == "2"
    assert "behind" in str(seen["error"])
    ready = seen["readyz"]
    assert ready["ready"] is False and any("overloaded" in r for r in ready["reasons"])  # type: ignore[index]
    assert max(seen["lag_metric"].values()) > limit  # type: ignore[attr-defined]
    assert seen["refused_metric"][(("cause", "overloaded"),)] >= 1  # type: ignore[index]
    # bounded: the log never ran more than one request past the limit before refusing
    assert int(seen["max_lag"]) <= limit + len(_body(0, 100)) + 64  # type: ignore[call-overload]
    got = sorted(sink.to_frame()["seq"].to_list())
    assert got == sorted(seen["accepted"])  # type: ignore[type-var]  # every 2xx record, once; no refused one


def test_mqtt_intake_pauses_at_the_buffer_bound_and_loses_nothing(tmp_path: Path) -> None:
    n, buffer = 3000, 200
    with private_mosquitto(tmp_path) as port:
        topic = unique("bp")
        source = MqttSource(f"{topic}/+", connection=MqttConnection(port=port), qos=1, buffer=buffer,
                            template=f"{topic}/{{sensor_id}}")
        sink = SlowSink(delay=0.05)
        flow = Flow("bp-mqtt")
        flow.source(source).sink(sink)
        runner = flow.runner(max_batch=50, max_delay="1ms", queue_batches=2)

        async def main() -> dict[str, object]:
            task = asyncio.create_task(runner.run_async())
            await until(lambda: source.logic is not None and source.logic.subscribed.is_set())
            with paho_publisher(port) as pub:
                infos = [pub.publish(f"{topic}/s{i % 5}", msgspec.json.encode(
                    {"timestamp": f"2026-01-01T00:00:{i % 60:02d}Z", "seq": i}), qos=1) for i in range(n)]
                seen: dict[str, object] = {"max_buf": 0, "paused": False}
                logic = source.logic
                assert logic is not None
                for _ in range(500):  # while the sink is slow
                    seen["max_buf"] = max(int(seen["max_buf"]), logic.lag())  # type: ignore[call-overload]
                    if logic.paused:
                        seen["paused"] = True
                        fams = {f.name: f for f in source_pressure(runner)}
                        seen["paused_metric"] = fams["tidegauge_source_paused"].samples[0].value
                        seen["lag_metric"] = fams["tidegauge_source_lag_messages"].samples[0].value
                        seen["behind"] = n - rows_in(sink)
                        break
                    await asyncio.sleep(0.01)
                sink.slow.clear()
                await asyncio.to_thread(lambda: [i.wait_for_publish(30) for i in infos])
                for _ in range(3000):
                    seen["max_buf"] = max(int(seen["max_buf"]), logic.lag())  # type: ignore[call-overload]
                    if rows_in(sink) >= n:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # anything beyond n (a duplicate) would show up here
            runner.stop()
            await task
            return seen

        seen = asyncio.run(main())
    assert seen["paused"] is True and seen["paused_metric"] == 1.0
    assert seen["lag_metric"] == buffer
    assert int(seen["behind"]) > buffer  # type: ignore[call-overload]  # the rest waited at the broker
    assert int(seen["max_buf"]) <= buffer  # type: ignore[call-overload]
    assert sorted(sink.to_frame()["seq"].to_list()) == list(range(n))


def test_nats_fetching_stops_while_the_sink_is_slow_and_resumes(tmp_path: Path) -> None:
    require("nats")
    n, max_batch, queue_batches = 3000, 100, 2
    stream = unique("BP").upper()

    async def setup() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
        acks = [await js.publish(f"{stream}.s{i % 5}", msgspec.json.encode(
            {"timestamp": f"2026-01-01T00:00:{i % 60:02d}Z", "seq": i})) for i in range(n)]
        assert len(acks) == n
        await nc.close()

    async def teardown() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(setup())
    try:
        source = NatsSource(stream, f"{stream}.>", durable="bp", template=f"{stream}.{{sensor_id}}")
        sink = SlowSink(delay=0.2)
        flow = Flow("bp-nats")
        flow.source(source).sink(sink)
        runner = flow.runner(max_batch=max_batch, max_delay="1ms", queue_batches=queue_batches)

        async def main() -> dict[str, int]:
            task = asyncio.create_task(runner.run_async())
            while rows_in(sink) < 3 * max_batch:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # the slow sink has been the bottleneck for a while
            logic = source.logic
            assert logic is not None
            fams = {f.name: f for f in source_pressure(runner)}
            seen = {"fetched": logic.snapshot().delivered, "written": rows_in(sink),
                    "lag_metric": int(fams["tidegauge_source_lag_messages"].samples[0].value)}
            sink.slow.clear()
            await until(lambda: rows_in(sink) >= n)
            await asyncio.sleep(0.2)
            runner.stop()
            await task
            return seen

        seen = asyncio.run(main())
    finally:
        asyncio.run(teardown())
    # in memory at most: the batch in the graph, the queue, the one a reader holds
    assert seen["fetched"] - seen["written"] <= (queue_batches + 2) * max_batch
    assert seen["lag_metric"] >= n - seen["fetched"] > 0  # the rest waits in the stream, and it shows
    assert sorted(sink.to_frame()["seq"].to_list()) == list(range(n))

"""MQTT over TLS: a private Mosquitto with a TLS listener and a certificate made in the test.

The shared Mosquitto on 1883 has no TLS listener, so this test starts its own broker (the same
``mosquitto`` binary) on a free port with the certificate, then runs the sink and the source through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from tests.connectors.servers import private_mosquitto, rows_in, run_until, unique
from tests.server.test_tls_and_logs import make_cert
from tidegauge.connectors.mqtt import MqttConnection, MqttSink, MqttSource, MqttTls
from tidegauge.dataflow import Flow
from tidegauge.testing import MemorySink, MemorySource

pytestmark = pytest.mark.server


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    cert, key = make_cert(tmp_path)
    with private_mosquitto(tmp_path, cert=cert, key=key) as port:
        yield port, cert


def test_sink_and_source_over_tls(tls_broker: tuple[int, Path]) -> None:
    port, cert = tls_broker
    base = unique("tls")
    conn = MqttConnection(port=port, tls=MqttTls(ca_file=str(cert)))
    source = MqttSource(f"{base}/+/telemetry", connection=conn, template=f"{base}/{{sensor_id}}/telemetry")
    flow = Flow("mqtt-tls")
    got = MemorySink()
    flow.source(source).sink(got)
    n = 200
    readings = pl.DataFrame({"sensor_id": [f"s{i % 5}" for i in range(n)],
                             "timestamp": [f"2026-01-01T00:00:{i // 10:02d}.{i % 10}00Z" for i in range(n)],
                             "seq": list(range(n))})

    async def main() -> None:
        reader = asyncio.create_task(run_until(flow, got, n, timeout=60))
        await asyncio.to_thread(source_subscribed, source)
        out = Flow("mqtt-tls-out")
        out.source(MemorySource(readings)).sink(MqttSink(f"{base}/{{sensor_id}}/telemetry", connection=conn))
        await out.runner().run_async()
        await reader

    asyncio.run(main())
    assert rows_in(got) == n
    frame = pl.concat(got.frames, how="diagonal_relaxed")
    assert sorted(frame["seq"].to_list()) == list(range(n))
    assert set(frame["sensor_id"]) == {f"s{i}" for i in range(5)}


def source_subscribed(source: MqttSource, timeout: float = 30.0) -> None:
    """Wait until the MQTT source holds its subscription (a clean session misses earlier messages)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if source.logic is not None and source.logic.subscribed.wait(0.05):
            return
        time.sleep(0.02)
    raise AssertionError("the MQTT source did not subscribe over TLS")


# paho leaves the socket of a failed TLS handshake to the garbage collector (it retries with a new one)
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_without_the_ca_is_refused(tls_broker: tuple[int, Path]) -> None:
    port, _cert = tls_broker
    source = MqttSource("x/#", connection=MqttConnection(port=port, tls=MqttTls()))
    logic = source.build(None)
    try:
        assert not logic.subscribed.wait(2)  # the handshake fails: the system CAs do not know this certificate
    finally:
        asyncio.run(logic.close())


@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_without_the_ca_is_refused_and_retried_on_the_event_loop(
    tls_broker: tuple[int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Built in a running loop the source really connects: the handshake fails, and is retried with backoff."""
    port, _cert = tls_broker
    conn = MqttConnection(port=port, tls=MqttTls(), reconnect_min=0.2, reconnect_max=0.4)
    source = MqttSource("x/#", connection=conn)

    async def main() -> None:
        logic = source.build(None)
        try:
            await asyncio.sleep(2)
            assert not logic.subscribed.is_set()
        finally:
            await logic.close()

    with caplog.at_level("WARNING", logger="tidegauge.connectors._mqtt_loop"):
        asyncio.run(main())
    refused = [r for r in caplog.records if "cannot connect" in r.getMessage() and "CERTIFICATE" in r.getMessage()]
    assert len(refused) >= 3  # the first attempt and retries every 0.2-0.4 s

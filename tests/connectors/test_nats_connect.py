"""The first NATS connection fails with a clear error instead of hanging (no server needed)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tidegauge.connectors.nats import NatsConnection, NatsSource
from tidegauge.errors import ConnectorError


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_server_fails_the_first_connect_within_the_deadline() -> None:
    url = f"nats://127.0.0.1:{closed_port()}"
    connection = NatsConnection(servers=url, connect_deadline=1.5, reconnect_wait=0.2)
    started = time.monotonic()
    with pytest.raises(ConnectorError, match=r"cannot connect to NATS at \['nats://127\.0\.0\.1:\d+'\] within 1\.5 s"):
        asyncio.run(connection.connect())
    assert time.monotonic() - started < 30  # bounded by the deadline, not nats-py's endless retries


def test_a_source_on_an_unreachable_server_raises_instead_of_blocking_the_flow() -> None:
    source = NatsSource("S", "s.>", durable="tg", connection=NatsConnection(
        servers=f"nats://127.0.0.1:{closed_port()}", connect_deadline=1.0, reconnect_wait=0.2))
    with pytest.raises(ConnectorError, match="cannot connect to NATS"):
        asyncio.run(source.build(None).next_batch(100, 0.1))

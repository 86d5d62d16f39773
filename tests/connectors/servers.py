"""Reachability checks for the real servers the broker-connector tests use.

A test calls e.g. ``require("mosquitto")``: if the server does not answer, the test is skipped, or fails
when ``TIDEGAUGE_REQUIRE_SERVERS=1`` is set (CI sets it, so a missing server is never a silent pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.net import free_port, wait_port

SERVERS: dict[str, tuple[str, str, int]] = {
    "mosquitto": ("Mosquitto", "127.0.0.1", 1883),
    "nats": ("NATS", "127.0.0.1", 4222),
    "redis": ("Redis", "127.0.0.1", 6379),
    "postgres": ("PostgreSQL", "127.0.0.1", 5432),
}

POSTGRES_CONNINFO = "postgresql://postgres@127.0.0.1:5432/test"


def require(server: str) -> None:
    """Skip (or fail, under ``TIDEGAUGE_REQUIRE_SERVERS=1``) unless ``server`` accepts TCP connections."""
    label, host, port = SERVERS[server]
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return
    except OSError as exc:
        message = f"{label} not reachable at {host}:{port}: {exc}"
    if os.environ.get("TIDEGAUGE_REQUIRE_SERVERS") == "1":
        pytest.fail(message + " (TIDEGAUGE_REQUIRE_SERVERS=1)")
    pytest.skip(message)


def require_promtool() -> str:
    """Path of ``promtool`` (Debian's prometheus package); skip, or fail under ``TIDEGAUGE_REQUIRE_SERVERS=1``."""
    import shutil

    promtool = shutil.which("promtool")
    if promtool is not None:
        return promtool
    if os.environ.get("TIDEGAUGE_REQUIRE_SERVERS") == "1":
        pytest.fail("promtool is required (TIDEGAUGE_REQUIRE_SERVERS=1): apt-get install -y prometheus")
    pytest.skip("promtool not found (Debian: apt-get install -y prometheus)")


def unique(prefix: str) -> str:
    """A name no other test run uses (topics, streams, tables)."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def rows_in(sink: object) -> int:
    """Rows a :class:`~tidegauge.testing.MemorySink` has received so far."""
    return sum(f.height for f in getattr(sink, "frames", []))


async def run_until(flow: object, sink: object, rows: int, *, timeout: float = 30.0, **options: object) -> object:
    """Run ``flow`` (with an endless broker source) until ``sink`` has ``rows`` rows, then stop it.

    ``timeout`` only bounds a broken run (it is not an assertion on speed): the caller checks the rows.
    """
    runner = flow.runner(max_delay="5ms", **options)  # type: ignore[attr-defined]
    task = asyncio.create_task(runner.run_async())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while rows_in(sink) < rows and loop.time() < deadline and not task.done():
        await asyncio.sleep(0.02)
    runner.stop()
    return await task


@contextlib.contextmanager
def private_mosquitto(tmp: Path, *, cert: Path | None = None, key: Path | None = None,
                      port: int | None = None) -> Iterator[int]:
    """A Mosquitto of the test's own on ``port`` or a free one (TLS with ``cert``/``key``); yields the port.

    For what the shared broker on 1883 cannot give: a TLS listener, ``max_queued_messages 0`` (the
    setting the docs tell users to make; the shared broker keeps the default of 1,000, which drops), and
    a broker that a test stops and starts again on the same port.
    """
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed (the broker tests need it: apt-get install -y mosquitto)")
    port = free_port() if port is None else port
    tls = f"certfile {cert}\nkeyfile {key}\n" if cert is not None else ""
    conf = tmp / f"mosquitto-{port}.conf"
    # user root: mosquitto started as root would switch to its own user, who cannot read pytest's tmp dir
    conf.write_text(f"user root\npersistence false\nlistener {port} 127.0.0.1\n{tls}allow_anonymous true\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\n")
    log = tmp / f"mosquitto-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=10, proc=proc, log=log, what="mosquitto")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def paho_publisher(port: int) -> Iterator[Any]:
    """A paho client connected to the broker on 127.0.0.1:``port``, its network loop running; disconnected
    at the end."""
    import paho.mqtt.client as paho

    pub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        yield pub
    finally:
        pub.disconnect()
        pub.loop_stop()

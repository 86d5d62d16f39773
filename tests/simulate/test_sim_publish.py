"""`tidegauge simulate --to URL`: every scheme, counting what arrives at the real servers."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tidegauge.cli as cli
from tests.connectors.servers import require, unique
from tidegauge.simulate.publish import parse_target

ROWS = 1_000
ARGS = ["simulate", "--rows", str(ROWS), "--sensors", "5", "--rate", "20000", "--batch", "100",
        "--start", "2026-01-01T00:00:00Z"]


@pytest.fixture(scope="module", autouse=True)
def _commands() -> None:
    cli._register()


def simulate(to: str, *extra: str) -> str:
    result = CliRunner().invoke(cli.app, [*ARGS, "--to", to, *extra])
    assert result.exit_code == 0, result.output
    assert f"published {ROWS:,} readings" in result.output
    return result.output


def test_bad_urls_are_refused_with_examples() -> None:
    with pytest.raises(ValueError, match=r"unknown scheme 'kafka'.*mqtt://"):
        parse_target("kafka://h/t")
    with pytest.raises(ValueError, match="give a host and a stream key"):
        parse_target("redis://127.0.0.1:6379")


def test_token_flag_shows_its_environment_variable() -> None:
    result = CliRunner().invoke(cli.app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert "TIDEGAUGE_SIM_TOKEN" in result.output and "TIDEGAUGE_SIM_TO" in result.output


@pytest.mark.server
def test_redis() -> None:
    require("redis")
    import redis
    key = unique("tg_sim")
    simulate(f"redis://127.0.0.1:6379/{key}")
    client = redis.Redis()
    try:
        entries = client.xrange(key)
        readings = [r for _id, fields in entries for r in json.loads(fields[b"data"])]
    finally:
        client.delete(key)
        client.close()
    assert len(entries) == ROWS // 100 and len(readings) == ROWS
    assert not any(k.startswith("truth_") for k in readings[0])


@pytest.mark.server
def test_nats() -> None:
    require("nats")
    import nats
    from nats.js.api import StreamConfig

    stream = unique("tgsim")

    async def admin(create: bool) -> int:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        try:
            if create:
                await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
                return 0
            sub = await js.pull_subscribe(f"{stream}.>", stream=stream)
            n = 0
            while True:
                try:
                    msgs = await sub.fetch(100, timeout=1)
                except TimeoutError:
                    return n
                n += sum(len(json.loads(m.data)) for m in msgs)
        finally:
            if not create:
                await js.delete_stream(stream)
            await nc.close()

    asyncio.run(admin(True))
    simulate(f"nats://127.0.0.1:4222/{stream}.{{sensor_id}}")
    assert asyncio.run(admin(False)) == ROWS


@pytest.mark.server
def test_mqtt() -> None:
    require("mosquitto")
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    base = unique("tgsim")
    got: list[int] = []
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: got.append(len(json.loads(msg.payload)))
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", 1883)
    client.subscribe(f"{base}/+/telemetry", qos=1)
    client.loop_start()
    try:
        assert subscribed.wait(10), "no SUBACK from Mosquitto"
        simulate(f"mqtt://127.0.0.1:1883/{base}/{{sensor_id}}/telemetry")
        for _ in range(200):  # bounds a hang only
            if sum(got) >= ROWS:
                break
            threading.Event().wait(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    assert sum(got) == ROWS


def test_http(tmp_path: Path) -> None:
    import socket

    from tidegauge.cli.serve import build_served_pipeline
    from tidegauge.server import hash_token
    from tidegauge.server import serve as serve_

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""
source: {{http: {{log_dir: intake, durability: os}}}}
sink: {{file: out.parquet}}
checkpoint: {{dir: cp, interval: 100ms}}
server: {{port: {port}, tokens: [{{name: sim, hash: "{hash_token('s3cret')}", scopes: [ingest]}}]}}
""")
    runner, config = build_served_pipeline(path)
    started = asyncio.Event()

    async def main() -> None:
        task = asyncio.create_task(serve_(runner, config, started=started, handle_signals=False))
        await started.wait()
        out = await asyncio.to_thread(simulate, f"http://127.0.0.1:{port}/api/v1/ingest", "--token", "s3cret")
        assert "1,000 readings" in out
        for _ in range(400):  # until the flow has read all of it (bounds a hang only)
            if runner.metrics.records_in["http"] >= ROWS:
                break
            await asyncio.sleep(0.05)
        runner.stop()
        await task

    asyncio.run(main())
    assert runner.metrics.records_in["http"] == ROWS

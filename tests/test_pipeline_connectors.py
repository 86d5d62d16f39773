"""Pipeline files with broker sources and sinks, end to end against the real servers."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.connectors.servers import POSTGRES_CONNINFO, require, unique
from tidegauge.dataflow import Runner
from tidegauge.errors import ConfigError
from tidegauge.pipeline import BuiltPipeline, build_pipeline, load_pipeline

READINGS = 200


def rows(n: int = READINGS) -> list[dict[str, Any]]:
    return [{"sensor_id": f"s{i % 4}", "timestamp": f"2026-01-01T00:00:{i // 4:02d}Z", "temperature": float(i)}
            for i in range(n)]


def build(tmp_path: Path, text: str) -> BuiltPipeline:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return build_pipeline(load_pipeline(path), base_dir=tmp_path)


async def run_until(built: BuiltPipeline, done: Any, *, timeout: float = 60.0) -> None:
    """Run the flow until ``done()`` (an endless broker source never ends by itself); ``timeout`` bounds a hang."""
    runner = Runner(built.flow, checkpoint=built.checkpoint, max_delay="5ms")
    task = asyncio.create_task(runner.run_async())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await done() and loop.time() < deadline and not task.done():
        await asyncio.sleep(0.05)
    runner.stop()
    await task


def test_unknown_connector_key_lists_the_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("source: {redis: {key: k, group: g, consumer: c, gruop: x}}\n"
                    "sink: {postgres: {table: t, key: [sensor_id]}}\n")
    with pytest.raises(ConfigError, match=r"unknown field `gruop` - at `\$.source.redis`; valid keys here: key, group"):
        load_pipeline(path)
    path.write_text("source: {file: a.csv, http: {}}\nsink: {file: b.parquet}\n")
    with pytest.raises(ConfigError, match=r"at \$.source: give exactly one of file, simulator, mqtt, nats, redis"):
        load_pipeline(path)


@pytest.mark.server
def test_redis_stream_to_redis_stream(tmp_path: Path) -> None:
    require("redis")
    import redis.asyncio as redis
    src, out = unique("tg_in"), unique("tg_out")
    built = build(tmp_path, f"""
source: {{redis: {{key: {src}, group: g, consumer: c1}}}}
steps: [{{filter: "temperature >= 50"}}]
sink: {{redis: {{key: {out}}}}}
checkpoint: {{dir: state, interval: 200ms}}
""")

    async def main() -> list[float]:
        client = redis.Redis()
        try:
            await client.xadd(src, {"data": json.dumps(rows())})

            async def done() -> bool:
                return bool(await client.xlen(out) >= READINGS - 50)

            await run_until(built, done)
            entries = await client.xrange(out)
            return sorted(json.loads(fields[b"data"])["temperature"] for _id, fields in entries)
        finally:
            await client.delete(src, out)
            await client.aclose()

    assert asyncio.run(main()) == [float(i) for i in range(50, READINGS)]


@pytest.mark.server
def test_nats_stream_to_postgres_upsert(tmp_path: Path) -> None:
    require("nats")
    require("postgres")
    import nats
    import psycopg
    from nats.js.api import StreamConfig

    stream = unique("tgpipe")
    table = f"{stream}_w"
    built = build(tmp_path, f"""
source: {{nats: {{stream: {stream}, subject: "{stream}.>", durable: pipe}}}}
steps:
  - window: {{type: tumbling, size: 10s, aggregate: {{temperature: [count, max]}}}}
sink: {{postgres: {{table: {table}, key: [sensor_id, window_start], conninfo: "{POSTGRES_CONNINFO}", create: true}}}}
checkpoint: {{dir: state, interval: 200ms}}
""")
    closing = {"sensor_id": "s0", "timestamp": "2026-01-01T00:05:00Z", "temperature": 0.0}  # closes every window

    def count() -> int:
        with psycopg.connect(POSTGRES_CONNINFO) as conn:
            if conn.execute("select to_regclass(%s)", (table,)).fetchone() == (None,):
                return 0
            row = conn.execute(f'select coalesce(sum("temperature_count"), 0) from "{table}"').fetchone()
            return int(row[0]) if row else 0

    async def main() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
        try:
            await js.publish(f"{stream}.r", json.dumps([*rows(), closing]).encode())

            async def done() -> bool:
                return await asyncio.to_thread(count) >= READINGS

            await run_until(built, done)
        finally:
            await js.delete_stream(stream)
            await nc.close()

    try:
        asyncio.run(main())
        assert count() == READINGS
    finally:
        with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
            conn.execute(f'drop table if exists "{table}"')
            conn.execute(f'drop table if exists "{table}__tg_pending"')


@pytest.mark.server
def test_file_to_mqtt_topic_template(tmp_path: Path) -> None:
    require("mosquitto")
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    base = unique("tg")
    pl.DataFrame(rows()).write_ndjson(tmp_path / "readings.jsonl")
    built = build(tmp_path, f"""
source: {{file: readings.jsonl}}
sink: {{mqtt: {{topic: "{base}/{{sensor_id}}/out", qos: 1}}}}
""")
    got: list[str] = []
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: got.append(msg.topic)
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", 1883)
    client.subscribe(f"{base}/+/out", qos=1)
    client.loop_start()
    try:
        assert subscribed.wait(10), "no SUBACK from Mosquitto"
        asyncio.run(Runner(built.flow, max_delay="5ms").run_async())  # a file source ends by itself

        async def arrived() -> None:
            for _ in range(600):  # bounds a hang only
                if len(got) >= READINGS:
                    return
                await asyncio.sleep(0.05)

        asyncio.run(arrived())
    finally:
        client.loop_stop()
        client.disconnect()
    assert len(got) == READINGS
    assert {t.split("/")[1] for t in got} == {"s0", "s1", "s2", "s3"}

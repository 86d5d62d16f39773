"""Redis Streams source and sink against the real server on 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import polars as pl
import pytest
import redis.asyncio as aredis

from tests.connectors.servers import require, rows_in, run_until, unique
from tidegauge.dataflow import Flow
from tidegauge.dataflow.runner import CheckpointConfig
from tidegauge.testing import MemorySink, MemorySource

pytestmark = pytest.mark.server

from tidegauge.connectors.redis import RedisSink, RedisSource  # noqa: E402

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def _redis() -> None:
    require("redis")


async def redis_call(method: str, *args: object) -> object:
    r = aredis.from_url(URL)
    try:
        return await getattr(r, method)(*args)
    finally:
        await r.aclose()


def test_pending_list_until_checkpoint(tmp_path: Path) -> None:
    key = unique("tg:stream")
    n = 300
    payloads = [msgspec.json.encode({"sensor_id": f"s{i % 5}", "timestamp": "2026-01-01T00:00:00Z", "seq": i})
                for i in range(n)]

    async def fill() -> None:
        r = aredis.from_url(URL)
        for p in payloads:
            await r.xadd(key, {"data": p})
        await r.xadd(key, {"other": "x"})  # no payload field: dead-lettered
        await r.aclose()

    asyncio.run(fill())
    source = RedisSource(key, group="g", consumer="c1")

    def run(checkpoint: CheckpointConfig | None, expect: int) -> tuple[list[int], int]:
        flow = Flow("redis-test")
        sink, dead = MemorySink(), MemorySink()
        flow.source(source).sink(sink)
        flow.dead_letters().sink(dead)
        asyncio.run(run_until(flow, sink, expect, timeout=2 if expect == 0 else 30, checkpoint=checkpoint))
        return (sorted(sink.to_frame()["seq"].to_list()) if rows_in(sink) else []), rows_in(dead)

    def pending() -> int:
        info = asyncio.run(redis_call("xpending", key, "g"))
        return int(info["pending"])  # type: ignore[index]

    try:
        assert run(None, n) == (list(range(n)), 1)
        assert pending() == n + 1  # nothing acknowledged without a checkpoint
        assert run(None, n)[0] == list(range(n))  # re-read from the pending list
        cp = CheckpointConfig(dir=tmp_path / "cp", interval="1h")
        assert run(cp, n)[0] == list(range(n))
        assert pending() == 0  # the final checkpoint XACKed everything
        assert run(cp, 0) == ([], 0)
    finally:
        asyncio.run(redis_call("delete", key))


def test_sink_round_trip_through_a_stream() -> None:
    key = unique("tg:out")
    df = pl.DataFrame({"sensor_id": ["a", "b"], "timestamp": ["2026-01-01T00:00:00Z"] * 2, "v": [1.0, 2.0]})
    try:
        flow = Flow("redis-sink")
        flow.source(MemorySource(df)).sink(RedisSink(key))
        flow.run()
        back = Flow("redis-back")
        sink = MemorySink()
        back.source(RedisSource(key, group="g", consumer="c")).sink(sink)
        asyncio.run(run_until(back, sink, 2))
        assert sorted(sink.to_frame()["v"].to_list()) == [1.0, 2.0]
    finally:
        asyncio.run(redis_call("delete", key))

"""NATS JetStream source and sink against the real server on 127.0.0.1:4222."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import nats
import polars as pl
import pytest
from nats.js.api import StreamConfig

from tests.connectors.servers import require, rows_in, run_until, unique
from tidegauge.connectors.nats import NatsSink, NatsSource
from tidegauge.dataflow import Flow
from tidegauge.dataflow.runner import CheckpointConfig
from tidegauge.testing import MemorySink, MemorySource

pytestmark = pytest.mark.server



@pytest.fixture(autouse=True)
def _nats() -> None:
    require("nats")


async def with_stream(name: str, subjects: list[str]) -> None:
    nc = await nats.connect("nats://127.0.0.1:4222")
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=subjects))
    await nc.close()


async def drop_stream(name: str) -> None:
    nc = await nats.connect("nats://127.0.0.1:4222")
    await nc.jetstream().delete_stream(name)
    await nc.close()


async def publish(subject_of: str, payloads: list[bytes]) -> None:
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    for i, p in enumerate(payloads):
        await js.publish(subject_of.format(i=i), p)
    await nc.close()


def reading(seq: int) -> bytes:
    return msgspec.json.encode({"timestamp": f"2026-01-01T00:00:{seq % 60:02d}Z", "seq": seq})


def test_ack_after_checkpoint_redelivers_only_unchecpointed(tmp_path: Path) -> None:
    stream = unique("TG").upper()
    n = 200
    asyncio.run(with_stream(stream, [f"{stream}.>"]))
    try:
        asyncio.run(publish(f"{stream}.s{{i}}.t", [reading(i) for i in range(n)] + [b"{broken"]))
        source = NatsSource(stream, f"{stream}.>", durable="tg", template=f"{stream}.{{sensor_id}}.t")

        def run(checkpoint: CheckpointConfig | None, expect: int) -> tuple[list[int], int]:
            flow = Flow("nats-test")
            sink, dead = MemorySink(), MemorySink()
            flow.source(source).sink(sink)
            flow.dead_letters().sink(dead)
            asyncio.run(run_until(flow, sink, expect, timeout=2 if expect == 0 else 30, checkpoint=checkpoint))
            seqs = sorted(sink.to_frame()["seq"].to_list()) if rows_in(sink) else []
            return seqs, rows_in(dead)

        assert run(None, n) == (list(range(n)), 1)  # every message, the bad one dead-lettered
        assert run(None, n)[0] == list(range(n))  # no checkpoint: redelivered
        cp = CheckpointConfig(dir=tmp_path / "cp", interval="1h")
        assert run(cp, n)[0] == list(range(n))  # the final checkpoint acknowledges them
        assert run(cp, 0) == ([], 0)  # nothing comes back
        asyncio.run(publish(f"{stream}.s{{i}}.t", [reading(1000)]))
        assert run(cp, 1)[0] == [1000]  # and new messages still flow
    finally:
        asyncio.run(drop_stream(stream))


def test_sink_deduplicates_a_replay_by_message_id() -> None:
    stream = unique("TG").upper()
    asyncio.run(with_stream(stream, [f"{stream}.>"]))
    try:
        df = pl.DataFrame({"sensor_id": ["a", "b", "c"], "timestamp": ["2026-01-01T00:00:00Z"] * 3, "v": [1, 2, 3]})
        for _ in range(2):  # the second run is a replay of the same rows
            flow = Flow("nats-sink")
            out = NatsSink(f"{stream}.{{sensor_id}}", id_columns=["sensor_id", "timestamp"])
            flow.source(MemorySource(df)).sink(out)
            flow.run()

        async def count() -> int:
            nc = await nats.connect("nats://127.0.0.1:4222")
            info = await nc.jetstream().stream_info(stream)
            await nc.close()
            return int(info.state.messages)

        assert asyncio.run(count()) == 3
    finally:
        asyncio.run(drop_stream(stream))

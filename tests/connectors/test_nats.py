"""NATS JetStream source and sink against the real server on 127.0.0.1:4222."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import nats
import nats.js.errors
import polars as pl
import pytest
from nats.js.api import StreamConfig

from tests.connectors.servers import require, rows_in, run_until, unique
from tidegauge.connectors.nats import NatsSink, NatsSource
from tidegauge.dataflow import Flow
from tidegauge.dataflow.runner import CheckpointConfig
from tidegauge.errors import ConnectorError
from tidegauge.testing import MemorySink, MemorySource

pytestmark = pytest.mark.server



@pytest.fixture(autouse=True)
def _nats() -> None:
    require("nats")


async def with_stream(name: str, subjects: list[str], max_msgs: int = -1) -> None:
    nc = await nats.connect("nats://127.0.0.1:4222")
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=subjects, max_msgs=max_msgs))
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


async def streams_on(subject: str) -> list[tuple[str, list[str], int]]:
    """``(name, subjects, max_msgs)`` of the stream whose subjects overlap ``subject`` (none: ``[]``)."""
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    try:
        name = await js.find_stream_name_by_subject(subject)
    except nats.js.errors.NotFoundError:
        return []
    finally:
        await nc.close()
    nc = await nats.connect("nats://127.0.0.1:4222")
    config = (await nc.jetstream().stream_info(name)).config
    await nc.close()
    return [(name, list(config.subjects or []), int(config.max_msgs or -1))]


def test_source_and_sink_on_a_fresh_subject_make_the_stream_themselves() -> None:
    """A new user's first run: no stream is made beforehand; what the sink publishes, the source reads."""
    base = unique("tgnew")
    source = NatsSource(unique("TG").upper(), f"{base}.>", durable="tg", template=f"{base}.{{sensor_id}}")
    flow = Flow("nats-fresh")
    got = MemorySink()
    flow.source(source).sink(got)
    df = pl.DataFrame({"sensor_id": ["a", "b", "c"], "timestamp": ["2026-01-01T00:00:00Z"] * 3, "v": [1, 2, 3]})
    try:
        out = Flow("nats-fresh-sink")
        out.source(MemorySource(df)).sink(NatsSink(f"{base}.{{sensor_id}}"))
        out.run()  # the sink comes first: it makes a stream on <base>.>, which the source then finds
        assert [(n, s) for n, s, _ in asyncio.run(streams_on(f"{base}.>"))] == [(base.upper() + "_ALL", [f"{base}.>"])]
        asyncio.run(run_until(flow, got, 3))
    finally:
        for name, _s, _m in asyncio.run(streams_on(f"{base}.>")):
            asyncio.run(drop_stream(name))
    assert sorted(got.to_frame()["v"].to_list()) == [1, 2, 3]
    assert sorted(got.to_frame()["sensor_id"].to_list()) == ["a", "b", "c"]


def one(sensor: str) -> pl.DataFrame:
    return pl.DataFrame({"sensor_id": [sensor], "timestamp": ["2026-01-01T00:00:00Z"], "v": [1]})


def test_a_source_alone_makes_its_named_stream_and_an_existing_one_is_left_as_it_is() -> None:
    base, stream = unique("tgnew"), unique("TG").upper()
    source = NatsSource(stream, f"{base}.>", durable="tg")
    try:
        flow, nothing = Flow("nats-fresh"), MemorySink()
        flow.source(source).sink(nothing)
        asyncio.run(run_until(flow, nothing, 1, timeout=3))  # no message comes: it only starts the source
        assert asyncio.run(streams_on(f"{base}.>")) == [(stream, [f"{base}.>"], -1)]
    finally:
        asyncio.run(drop_stream(stream))
    other = unique("TG").upper()
    asyncio.run(with_stream(other, [f"{base}.>"], max_msgs=1000))  # the user's own, with a limit
    try:
        flow = Flow("nats-existing")
        flow.source(MemorySource(one("a"))).sink(NatsSink(f"{base}.{{sensor_id}}"))
        flow.run()
        assert asyncio.run(streams_on(f"{base}.>")) == [(other, [f"{base}.>"], 1000)]  # used, not changed
    finally:
        asyncio.run(drop_stream(other))


def test_a_stream_overlapping_without_covering_is_named_in_the_error() -> None:
    base = unique("tgnew")
    narrow = unique("TG").upper()
    asyncio.run(with_stream(narrow, [f"{base}.a"]))
    try:
        flow = Flow("nats-overlap")
        flow.source(MemorySource(one("b"))).sink(NatsSink(f"{base}.{{sensor_id}}"))
        with pytest.raises(ConnectorError, match=f"overlaps stream '{narrow}'"):
            flow.run()
        assert asyncio.run(streams_on(f"{base}.*")) == [(narrow, [f"{base}.a"], -1)]
    finally:
        asyncio.run(drop_stream(narrow))


def test_a_checkpointed_position_in_another_stream_is_refused_not_misread() -> None:
    """A position is a sequence number of one stream: restored against the stream that now stores the
    subject (the old one deleted, another made), it would skip or repeat other messages."""
    from tidegauge.connectors.nats import NatsSourceState

    base, now = unique("tgmoved"), unique("TG").upper()
    asyncio.run(with_stream(now, [f"{base}.>"]))
    try:
        source = NatsSource(now, f"{base}.>", durable="tg")

        async def resume(stream: str) -> None:
            logic = source.build(NatsSourceState(stream=stream, consumer="tg", sequence=7, delivered=7))
            try:
                await logic.next_batch(10, 0.1)
            finally:
                await logic.close()

        with pytest.raises(ConnectorError, match=f"position in stream 'GONE_{now}'.*now stored by stream '{now}'"):
            asyncio.run(resume(f"GONE_{now}"))
        asyncio.run(resume(now))  # the same stream: resumes
    finally:
        asyncio.run(drop_stream(now))

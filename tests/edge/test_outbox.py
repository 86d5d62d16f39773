"""The outbox on its own: numbering, visibility, acknowledgement, limits and overflow policies, restart."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import polars as pl
import pytest

from tidegauge._time import ManualClock
from tidegauge.dataflow import CheckpointConfig, Flow, Runner
from tidegauge.edge.outbox import Outbox, StreamPolicy
from tidegauge.edge.sink import OutboxSink, OutboxSinkState
from tidegauge.errors import ConfigError
from tidegauge.testing import MemorySource


def payloads(n: int, size: int = 100, start: int = 0) -> list[bytes]:
    return [b'{"i":%d,"pad":"%s"}' % (start + i, b"x" * (size - 20)) for i in range(n)]


def seqs(box: Outbox, stream: str = "s") -> list[int]:
    return [seq for seq, _, _ in box.read(stream, after=0, limit=10**9)]


def test_numbers_visibility_and_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy()})
    assert box.append("s", payloads(3)) == (1, 3)
    assert seqs(box) == [], "pending records are not sent before their checkpoint commits"
    box.commit_seq("s", 2)
    assert seqs(box) == [1, 2]
    box.ack("s", 1)
    assert seqs(box) == [2]
    st = box.stats("s")
    assert (st.depth, st.acked_seq, st.committed_seq, st.last_seq) == (2, 1, 2, 3)
    box.close()
    # reopened: the pending record 3 survives until a flow decides (recover)
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy()})
    assert box.next_seq("s") == 4
    box.recover("s", None)  # a fresh flow: what was never checkpointed goes
    assert box.next_seq("s") == 3 and box.stats("s").depth == 1


def test_recover_to_checkpoint_keeps_numbers(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy()})
    box.append("s", payloads(5))
    box.recover("s", 3)  # the checkpoint saw 3: 4, 5 are written again by the restarted flow
    assert seqs(box) == [1, 2, 3]
    assert box.next_seq("s") == 4
    box.ack("s", 3)
    box.recover("s", 3)
    assert box.next_seq("s") == 4, "numbers are never reused once acknowledged"


def test_drop_oldest_counts_and_keeps_contiguous(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy(max_bytes=1000, overflow="drop_oldest")})
    box.append("s", payloads(8))
    box.append("s", payloads(5, start=8))
    box.commit_seq("s", 13)
    kept = seqs(box)
    assert kept == list(range(4, 14))
    assert box.stats("s").bytes <= 1000
    assert box.stats("s").drops == {"overflow": 3}


def test_drop_oldest_batch_bigger_than_the_limit(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy(max_bytes=1024, overflow="drop_oldest")})
    first, last = box.append("s", payloads(25))
    assert (first, last) == (16, 25), "the newest that fit are kept, numbered after the dropped"
    assert box.stats("s").drops == {"overflow": 15}
    assert box.next_seq("s") == 26


def test_drop_oldest_spares_the_batch_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy(max_bytes=1000, overflow="drop_oldest")})
    box.append("s", payloads(10))
    box.commit_seq("s", 10)
    assert [s for s, _, _ in box.read("s", after=0, limit=3, sending=True)] == [1, 2, 3]
    box.append("s", payloads(3, start=10))
    box.commit_seq("s", 13)
    assert seqs(box) == [1, 2, 3], "a batch stops at a gap"
    assert box.stats("s").drops == {"overflow": 3}
    assert [s for s, _, _ in box.read("s", after=3, limit=100)] == list(range(7, 14))


def test_reject_new_refuses_from_the_newest_end(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy(max_bytes=1000, overflow="reject_new")})
    assert box.append("s", payloads(12)) == (1, 10)
    assert box.append("s", payloads(2)) == (11, 10), "nothing stored"
    assert box.stats("s").drops == {"rejected": 4}
    box.commit_seq("s", 10)
    box.ack("s", 5)
    assert box.append("s", payloads(2)) == (11, 12), "room again after an acknowledgement"


def test_age_limit(tmp_path: Path) -> None:
    clock = ManualClock(1_000_000_000)
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy(max_age="1m")}, clock=clock)
    box.append("s", payloads(2))
    clock.advance("45s")
    box.append("s", payloads(2))
    clock.advance("30s")
    assert box.expire() == 2
    box.commit_seq("s", 4)
    assert seqs(box) == [3, 4]
    assert box.stats("s").drops == {"expired": 2}


def test_bad_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="overflow"):
        StreamPolicy(overflow="drop_newest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="lowercase identifier"):
        Outbox(tmp_path / "o.db", {"Bad Name": StreamPolicy()})
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy()})
    with pytest.raises(ConfigError, match="no stream 'x'"):
        box.append("x", [])
    with pytest.raises(ValueError, match="no stream"):
        OutboxSink(box, "x")


def test_sink_in_a_flow_is_exactly_once_across_restarts(tmp_path: Path) -> None:
    """A flow checkpointed mid-way and restarted: the outbox holds each record once, numbered in order."""
    data = pl.DataFrame({"sensor_id": [f"s{i % 7}" for i in range(1000)],
                         "timestamp": pl.datetime_range(pl.datetime(2024, 1, 1, time_zone="UTC"),
                                                        pl.datetime(2024, 1, 1, 0, 16, 39, time_zone="UTC"), "1s",
                                                        eager=True),
                         "v": list(range(1000))})
    box = Outbox(tmp_path / "o.db", {"readings": StreamPolicy()})

    def run(limit_batches: int | None) -> None:
        flow = Flow("t")
        # the crashing run sees 500 rows and then a source that stays open: it cannot finish before the cancel
        # (checkpoints after batches 3 and 6 would otherwise race the cancel on a loaded machine)
        source = (MemorySource(data, batch_rows=100) if limit_batches is None
                  else MemorySource(data.head(100 * limit_batches), batch_rows=100, stay_open=True))
        flow.source(source).sink(OutboxSink(box, "readings"))
        runner = Runner(flow, checkpoint=CheckpointConfig(tmp_path / "cp", interval="1h", every_batches=3))
        if limit_batches is None:
            runner.run()
            return

        async def partial() -> None:
            task = asyncio.create_task(runner.run_async())
            while runner.metrics.checkpoints < 1 or sum(runner.metrics.records_in.values()) < 500:
                await asyncio.sleep(0.001)
            task.cancel()  # a crash: no final checkpoint, rows after the last one are pending
            with pytest.raises(asyncio.CancelledError):
                await task
        asyncio.run(partial())

    run(5)
    assert box.stats("readings").last_seq > box.stats("readings").committed_seq, "pending rows at the crash"
    run(None)
    rows = box.read("readings", after=0, limit=10**6)
    assert [s for s, _, _ in rows] == list(range(1, 1001))
    values = pl.read_ndjson(b"\n".join(p for _, _, p in rows))
    assert values["v"].to_list() == list(range(1000))
    assert values["edge_seq"].to_list() == list(range(1, 1001))
    assert isinstance(OutboxSink(box, "readings").build(OutboxSinkState("readings", 1000)), object)


def test_drops_are_logged_once_a_minute_per_stream_and_reason(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(1_000_000_000)
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy(max_bytes=1000, overflow="drop_oldest")}, clock=clock)
    caplog.set_level(logging.WARNING, logger="tidegauge.edge.outbox")
    for i in range(20):  # every append over the limit drops
        box.append("s", payloads(5, start=5 * i))
        box.commit_seq("s", 5 * (i + 1))
    drops = box.stats("s").drops["overflow"]
    assert drops > 20
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
    clock.advance("61s")
    box.append("s", payloads(5, start=100))
    assert len(caplog.records) == 2
    first = int(re.search(r"dropped (\d+)", caplog.records[0].getMessage()).group(1))  # type: ignore[union-attr]
    since = int(re.search(r"(\d+) more since", caplog.records[1].getMessage()).group(1))  # type: ignore[union-attr]
    now = int(re.search(r"dropped (\d+)", caplog.records[1].getMessage()).group(1))  # type: ignore[union-attr]
    assert first + since + now == box.stats("s").drops["overflow"]

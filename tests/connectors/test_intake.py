"""The intake log: appends durable in order, group commit, torn tails, segments, a reader in another thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import msgspec
import pytest

from tidegauge.connectors.intake import ACCEPTED, REJECTED, Entry, IntakeLog


def _line(i: int) -> bytes:
    return b'{"sensor_id":"s%d","timestamp":%d}\n' % (i, i)


def _read_all(log: IntakeLog, offset: int | None = None) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = log.start if offset is None else offset
    while pos < log.durable:
        frames, pos = log.read(pos, 1_000)
        out += frames
    return out


def test_concurrent_appends_are_kept_in_order_and_group_committed(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, durability="fsync")

    async def main() -> list[int]:
        return list(await asyncio.gather(*(log.append(_line(i), 1, []) for i in range(200))))

    ends = asyncio.run(main())
    assert ends == sorted(ends) and len(set(ends)) == 200
    assert log.durable == log.end == ends[-1]
    assert 1 <= log.syncs < 200  # appends waiting together share one fsync
    frames = _read_all(log)
    assert [p for _, p in frames] == [_line(i) for i in range(200)]
    log.close()
    reopened = IntakeLog(tmp_path)
    assert [p for _, p in _read_all(reopened)] == [_line(i) for i in range(200)]
    reopened.close()


def test_rejects_are_framed_apart_with_reason_and_payload(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, durability="os")
    asyncio.run(log.append(_line(1), 1, [("invalid: bad", "{x")]))
    (k1, p1), (k2, p2) = _read_all(log)
    assert (k1, p1) == (ACCEPTED, _line(1))
    assert k2 == REJECTED and msgspec.msgpack.decode(p2) == [["invalid: bad", "{x"]]
    log.close()


def test_a_torn_tail_is_cut_and_later_appends_follow_the_good_frames(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path)
    asyncio.run(log.append(_line(1), 1, []))
    end = log.end
    log.close()
    seg = next(tmp_path.glob("*.seg"))
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage")  # a frame header promising 64 bytes, then a crash
    log = IntakeLog(tmp_path)
    assert log.end == end
    asyncio.run(log.append(_line(2), 1, []))
    assert [p for _, p in _read_all(log)] == [_line(1), _line(2)]
    log.close()
    flipped = bytearray(seg.read_bytes())
    flipped[-3] ^= 0xFF  # a bad checksum in the last frame: cut too
    seg.write_bytes(bytes(flipped))
    log = IntakeLog(tmp_path)
    assert [p for _, p in _read_all(log)] == [_line(1)]
    log.close()


def test_segments_roll_over_and_truncation_frees_whole_segments(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, segment_bytes=1024)

    async def main() -> None:
        for i in range(100):
            await log.append(_line(i) * 10, 10, [])

    asyncio.run(main())
    assert len(list(tmp_path.glob("*.seg"))) > 5
    assert [p for _, p in _read_all(log)] == [_line(i) * 10 for i in range(100)]
    middle = log.end // 2
    log.truncate_before(middle)
    assert 0 < log.start <= middle
    frames, _ = log.read(log.start, 10_000)
    assert frames[-1][1] == _line(99) * 10
    log.close()


def test_a_reader_in_another_thread_sees_every_record_once(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, segment_bytes=4096)
    seen: list[bytes] = []
    done = threading.Event()

    def reader() -> None:
        pos = 0
        while not done.is_set() or pos < log.durable:
            frames, pos = log.read(pos, 50)
            seen.extend(p for _, p in frames)
            log.truncate_before(pos)

    t = threading.Thread(target=reader)
    t.start()

    async def main() -> None:
        await asyncio.gather(*(log.append(_line(i), 1, []) for i in range(500)))

    asyncio.run(main())
    done.set()
    t.join(30)
    assert seen == [_line(i) for i in range(500)]
    log.close()


def test_recent_frames_are_handed_out_from_memory_as_the_file_has_them(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, durability="fsync")

    async def main() -> None:
        for i in range(20):
            await log.append(_line(i), 1, [("invalid: x", "{")] if i % 5 == 0 else [], decoded=f"decoded {i}")

    asyncio.run(main())
    frames, end = log.read_frames(log.start, 10_000)
    assert end == log.durable and log.frames_from_memory == len(frames) == 24 and log.frames_from_file == 0
    accepted = [fr for fr in frames if fr.kind == ACCEPTED]
    assert [fr.decoded for fr in accepted] == [f"decoded {i}" for i in range(20)]
    assert all(fr.records == 1 for fr in frames)
    log.close()
    reopened = IntakeLog(tmp_path)
    from_file, end2 = reopened.read_frames(reopened.start, 10_000)
    assert end2 == end and reopened.frames_from_file == 24
    assert [(fr.kind, fr.payload) for fr in from_file] == [(fr.kind, fr.payload) for fr in frames]
    assert all(fr.decoded is None for fr in from_file)  # never written: a replay decodes the payload again
    reopened.close()


def test_the_memory_queue_is_bounded_and_a_reader_behind_it_reads_the_file(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, durability="os", cache_bytes=2_000)

    async def main() -> None:
        for i in range(200):
            await log.append(_line(i), 1, [], decoded=b"x" * 10)

    asyncio.run(main())
    assert log._recent_bytes <= 2_000  # what is kept in memory stays within its budget
    seen, pos = [], log.start
    while pos < log.durable:
        frames, pos = log.read_frames(pos, 7)
        seen += [fr.payload for fr in frames]
    assert seen == [_line(i) for i in range(200)]  # each exactly once, in order, whichever path served it
    assert log.frames_from_file > 0 and log.frames_from_memory > 0
    log.close()


def test_prepare_runs_in_the_writer_thread_and_its_error_writes_nothing(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, durability="fsync")
    seen: list[str] = []

    def prepare() -> tuple[Entry, str]:
        seen.append(threading.current_thread().name)
        return Entry(_line(1), 1, []), "extra"

    def broken() -> tuple[Entry, str]:
        raise ValueError("bad body")

    async def main() -> None:
        end, extra = await log.append_prepared(prepare)
        assert extra == "extra" and end == log.durable == log.end
        with pytest.raises(ValueError, match="bad body"):
            await log.append_prepared(broken)
        assert log.end == end  # nothing of the failed job was written
        await log.append(_line(2), 1, [])

    asyncio.run(main())
    assert seen and seen[0].startswith("intake-") and seen[0] != threading.current_thread().name
    assert [p for _, p in _read_all(log)] == [_line(1), _line(2)]
    log.close()


def test_appends_queued_before_close_are_written_and_later_ones_refused(tmp_path: Path) -> None:
    log = IntakeLog(tmp_path, durability="fsync")

    async def main() -> None:
        pending = [asyncio.ensure_future(log.append(_line(i), 1, [])) for i in range(50)]
        await asyncio.sleep(0)  # every append queued
        await asyncio.to_thread(log.close)
        ends = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(e, int) for e in ends)
        with pytest.raises(OSError, match="closed"):
            await log.append(_line(99), 1, [])

    asyncio.run(main())
    reopened = IntakeLog(tmp_path)
    assert [p for _, p in _read_all(reopened)] == [_line(i) for i in range(50)]
    reopened.close()

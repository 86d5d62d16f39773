"""FileSink: transactional parts, crash at every protocol step, final file equal to an uninterrupted run."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import polars as pl
import pytest

from tidegauge.connectors import files_sink
from tidegauge.connectors.files import FileSink, FileSinkState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
N_BATCHES = 7
EVERY = 2  # a checkpoint after every 2 batches, and a final one before close


def _batch(i: int) -> pl.DataFrame:
    n = 2 + i % 3
    return pl.DataFrame(
        {
            "sensor_id": [f"s{i}-{j}" for j in range(n)],
            "timestamp": [T0 + timedelta(seconds=10 * i + j) for j in range(n)],
            "temperature": [None if j == 1 else i + j / 8 for j in range(n)],
            "count": [i * 10 + j for j in range(n)],
        }
    )


BATCHES = [_batch(i) for i in range(N_BATCHES)]
Manifests = dict[int, tuple[FileSinkState, int]]


class Crash(Exception):
    pass


async def _run(sink: FileSink, manifests: Manifests, crash: tuple[str, int] | None) -> None:
    """A miniature runner: restore, write batches, checkpoint in protocol order, close; may 'die'."""
    epoch = max(manifests) if manifests else 0
    state, done = manifests[epoch] if manifests else (None, 0)
    logic = sink.build(state)

    async def checkpoint(done: int) -> None:
        nonlocal epoch
        epoch += 1
        await logic.pre_commit(epoch)
        if crash == ("pre_commit", epoch):
            raise Crash
        snap = msgspec.msgpack.decode(msgspec.msgpack.encode(logic.snapshot()), type=FileSinkState)
        manifests[epoch] = (snap, done)
        if crash == ("manifest", epoch):
            raise Crash
        await logic.commit(epoch)
        if crash == ("commit", epoch):
            raise Crash

    for i in range(done, N_BATCHES):
        await logic.write_batch(BATCHES[i])
        if crash == ("write", i):
            raise Crash
        if (i + 1) % EVERY == 0:
            await checkpoint(i + 1)
    await checkpoint(N_BATCHES)
    if crash == ("close", 0):
        # died while writing the final file: a half-written temp file is left behind
        assert sink.final is not None
        sink.final.with_name(f".{sink.final.name}.tg-tmp").write_bytes(b"partial")
        raise Crash
    await logic.close()


def _run_with_crash(sink: FileSink, crash: tuple[str, int] | None) -> None:
    manifests: Manifests = {}
    try:
        asyncio.run(_run(sink, manifests, crash))
    except Crash:
        asyncio.run(_run(sink, manifests, None))
    else:
        assert crash is None, "the crash point was never reached"


def _read(path: Path, fmt: str) -> pl.DataFrame:
    if fmt == "csv":
        return pl.read_csv(path, try_parse_dates=True)
    if fmt == "jsonl":
        return pl.read_ndjson(path)
    return pl.read_parquet(path)


CRASHES = (
    [("write", i) for i in range(N_BATCHES)]
    + [(p, e) for p in ("pre_commit", "manifest", "commit") for e in (1, 2, 3, 4)]
    + [("close", 0)]
)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_crash_at_every_step_gives_the_uninterrupted_output(tmp_path: Path, fmt: str) -> None:
    ref_path = tmp_path / "ref" / f"out.{fmt}"
    ref_path.parent.mkdir()
    _run_with_crash(FileSink(ref_path), None)
    ref_bytes = ref_path.read_bytes()
    expected = pl.concat(BATCHES)
    got = _read(ref_path, fmt)
    if fmt == "jsonl":
        got = got.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC"))
    assert got.drop("timestamp").equals(expected.drop("timestamp"))
    assert got["timestamp"].dt.epoch("us").to_list() == expected["timestamp"].dt.epoch("us").to_list()

    for k, crash in enumerate(CRASHES):
        out = tmp_path / f"c{k}" / f"out.{fmt}"
        out.parent.mkdir()
        _run_with_crash(FileSink(out), crash)
        assert out.read_bytes() == ref_bytes or _read(out, fmt).equals(_read(ref_path, fmt)), crash
        pending = out.with_name(out.name + ".parts") / ".pending"
        assert list(pending.iterdir()) == [], crash
        assert not out.with_name(f".{out.name}.tg-tmp").exists()


def test_crashes_with_spilled_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small spill threshold: several pending parts per epoch, some written before pre_commit."""
    monkeypatch.setattr(files_sink, "_SPILL_ROWS", 3)
    ref = tmp_path / "ref.jsonl"
    _run_with_crash(FileSink(ref), None)
    parts = sorted(p.name for p in (tmp_path / "ref.jsonl.parts").iterdir() if p.is_file())
    assert len(parts) > 4 and parts[0] == "part-0000000001-00000.jsonl"
    for k, crash in enumerate(CRASHES):
        out = tmp_path / f"out{k}.jsonl"
        _run_with_crash(FileSink(out), crash)
        assert out.read_bytes() == ref.read_bytes(), crash


def test_parts_visible_after_commit_only(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "out.parquet")

    async def run() -> None:
        logic = sink.build(None)
        await logic.write_batch(BATCHES[0])
        await logic.pre_commit(1)
        assert list(sink.parts_dir.glob("*.parquet")) == []
        assert logic.snapshot().pending == ["part-0000000001-00000.parquet"]
        await logic.commit(1)
        assert logic.snapshot().pending == []
        assert pl.scan_parquet(sink.parts_dir / "*.parquet").collect().equals(BATCHES[0])
        await logic.write_batch(BATCHES[1])
        await logic.close()  # un-checkpointed rows are flushed as one more part
        assert pl.read_parquet(tmp_path / "out.parquet").equals(pl.concat(BATCHES[:2]))

    asyncio.run(run())


def test_directory_sink_writes_parts_only(tmp_path: Path) -> None:
    d = tmp_path / "parts"
    sink = FileSink(f"{d}/", format="parquet")

    async def run() -> None:
        logic = sink.build(None)
        for e, b in enumerate(BATCHES[:3], start=1):
            await logic.write_batch(b)
            await logic.pre_commit(e)
            await logic.commit(e)
        await logic.close()

    asyncio.run(run())
    assert pl.scan_parquet(d / "*.parquet").collect().equals(pl.concat(BATCHES[:3]))
    assert sorted(p.name for p in d.iterdir()) == [".pending"] + [f"part-{e:010d}-00000.parquet" for e in (1, 2, 3)]


def test_fresh_start_replaces_earlier_output(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    _run_with_crash(FileSink(out), None)
    first = out.read_bytes()
    _run_with_crash(FileSink(out), None)
    assert out.read_bytes() == first


def test_empty_output(tmp_path: Path) -> None:
    async def run(path: Path) -> None:
        logic = FileSink(path).build(None)
        await logic.pre_commit(1)
        await logic.commit(1)
        await logic.close()

    for fmt in ("csv", "jsonl", "parquet"):
        asyncio.run(run(tmp_path / f"e.{fmt}"))
        assert (tmp_path / f"e.{fmt}").exists()
    assert pl.read_parquet(tmp_path / "e.parquet").height == 0


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass format="):
        FileSink(f"{tmp_path}/dir/")
    with pytest.raises(ValueError, match="csv, jsonl, parquet"):
        FileSink(tmp_path / "out.xlsx")
    logic = FileSink(tmp_path / "o.csv").build(None)
    asyncio.run(logic.pre_commit(2))
    with pytest.raises(ValueError, match="epochs must increase"):
        asyncio.run(logic.pre_commit(2))
    with pytest.raises(TypeError, match="FileSinkState"):
        FileSink(tmp_path / "o.csv").build({"epoch": 1})  # type: ignore[arg-type]

"""FileSource: replay from any position, deterministic batches, bad rows flagged, pacing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import polars as pl
import pytest

from tidegauge._time import ManualClock
from tidegauge.connectors.files import FileSource, FileSourceState
from tidegauge.dataflow.base import ERROR, RAW

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sensor_id": [f"s{i % 7}" for i in range(n)],
            "timestamp": [T0 + timedelta(seconds=i) for i in range(n)],
            "temperature": [20.0 + i / 4 for i in range(n)],
            "count": list(range(n)),
        }
    )


def _write(df: pl.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.write_csv(path)
    elif path.suffix == ".jsonl":
        df.write_ndjson(path)
    else:
        df.write_parquet(path, row_group_size=7)
    return path


async def _drain(src: FileSource, state: FileSourceState | None, max_rows: int) -> list[pl.DataFrame]:
    logic = src.build(state)
    out = []
    while (df := await logic.next_batch(max_rows, 0.0)) is not None:
        out.append(df)
    await logic.close()
    return out


def _user(df: pl.DataFrame) -> pl.DataFrame:
    return df.drop([c for c in (ERROR, RAW) if c in df.columns])


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_replay_from_every_position_equals_tail(tmp_path: Path, ext: str) -> None:
    path = _write(_frame(23), tmp_path / f"r.{ext}")
    src = FileSource(path)

    async def run() -> None:
        logic = src.build(None)
        states = [logic.snapshot()]
        full = []
        while (df := await logic.next_batch(1, 0.0)) is not None:
            full.append(df)
            states.append(logic.snapshot())
        await logic.close()
        whole = pl.concat(full)
        assert whole.height == 23 and states[-1].rows == 23
        for i, st in enumerate(states):
            # the snapshot goes through msgpack as in a real checkpoint
            st2 = msgspec.msgpack.decode(msgspec.msgpack.encode(st), type=FileSourceState)
            tail = await _drain(src, st2, 5)
            rest = pl.concat(tail) if tail else whole.clear()
            assert rest.equals(whole.slice(i)), f"resume at {i}"

    asyncio.run(run())


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_batches_are_cut_deterministically(tmp_path: Path, ext: str) -> None:
    df = _frame(50)
    path = _write(df, tmp_path / f"r.{ext}")
    a = asyncio.run(_drain(FileSource(path), None, 8))
    b = asyncio.run(_drain(FileSource(path), None, 8))
    assert [x.height for x in a] == [8] * 6 + [2]
    assert all(x.equals(y) for x, y in zip(a, b, strict=True))
    got = _user(pl.concat(a))
    assert got["count"].to_list() == list(range(50)) and got["temperature"].dtype == pl.Float64


def test_csv_malformed_rows_flagged_good_rows_typed(tmp_path: Path) -> None:
    lines = ["sensor_id,temperature,count"] + [f"s{i},{20 + i}.5,{i}" for i in range(20)]
    lines[3] = "s2,hot,2"  # bad float
    lines[5] = "s4,24.5"  # too few fields
    lines[7] = 's6,"26.5,6'  # unclosed quote
    lines[9] = "s8,28.5,8,extra"  # too many fields
    path = tmp_path / "r.csv"
    path.write_text("\n".join(lines) + "\n\n")
    (df,) = asyncio.run(_drain(FileSource(path), None, 100))
    assert df.schema["temperature"] == pl.Float64 and df.schema["count"] == pl.Int64
    assert df.height == 20
    bad = df.filter(pl.col(ERROR).is_not_null())
    reasons = dict(zip(bad[RAW].to_list(), bad[ERROR].to_list(), strict=True))
    assert reasons["s2,hot,2"] == "column 'temperature': cannot parse 'hot' as Float64"
    assert reasons["s4,24.5"] == "expected 3 fields, got 2"
    assert reasons["s8,28.5,8,extra"] == "expected 3 fields, got 4"
    assert reasons['s6,"26.5,6'].startswith("malformed CSV")
    good = df.filter(pl.col(ERROR).is_null())
    assert good.height == 16 and good[RAW].null_count() == 16
    assert good["count"].to_list() == [i for i in range(20) if i not in (2, 4, 6, 8)]


def test_csv_given_schema_and_schema_kept_in_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("id,v\n1,2\n2,x\n3,4\n")
    src = FileSource(path, schema={"id": pl.String, "v": pl.Int32})

    async def run() -> None:
        logic = src.build(None)
        first = await logic.next_batch(1, 0.0)
        assert first is not None and first.schema["v"] == pl.Int32 and first.schema["id"] == pl.String
        st = logic.snapshot()
        await logic.close()
        # resumed without the schema argument: the snapshot's schema wins, so parsing is identical
        rest = await _drain(FileSource(path), st, 10)
        assert rest[0].schema["v"] == pl.Int32
        assert rest[0][ERROR].to_list() == ["column 'v': cannot parse 'x' as Int32", None]

    asyncio.run(run())


def test_jsonl_bad_lines_flagged(tmp_path: Path) -> None:
    lines = [f'{{"sensor_id": "s{i}", "temperature": {20 + i}.5, "ok": true}}' for i in range(30)]
    lines[2] = '{"sensor_id": "s2", "temperature": "hot", "ok": true}'
    lines[4] = "{not json"
    lines[6] = "[1, 2]"
    lines[8] = '{"sensor_id": "s8", "temperature": 1.5, "ok": "yes", "extra": 1}'
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    (df,) = asyncio.run(_drain(FileSource(path), None, 100))
    assert df.schema["temperature"] == pl.Float64 and df.schema["ok"] == pl.Boolean
    errs = df[ERROR].to_list()
    assert errs[2] == "column 'temperature': expected Float64, got 'hot'"
    assert errs[4] is not None and errs[4].startswith("invalid JSON")
    assert errs[6] == "expected a JSON object, got list"
    assert errs[8] == "column 'ok': expected Boolean, got 'yes'"
    assert df[RAW][4] == "{not json"
    good = df.filter(pl.col(ERROR).is_null())
    expected = [20 + i + 0.5 for i in range(30) if i not in (2, 4, 6, 8)]
    assert good.height == 26 and good["temperature"].to_list() == expected


def test_bounded_memory_reads_in_chunks(tmp_path: Path) -> None:
    """A largish file comes out in max_rows batches; the source never holds more than one chunk."""
    n = 200_000
    path = tmp_path / "big.csv"
    _frame(n).write_csv(path)

    async def run() -> None:
        logic = FileSource(path).build(None)
        sizes = []
        while (df := await logic.next_batch(10_000, 0.0)) is not None:
            sizes.append(df.height)
            assert logic._pending is not None and logic._pending.height == 0
        await logic.close()
        assert sizes == [10_000] * 20

    asyncio.run(run())


def test_pacing_with_manual_clock(tmp_path: Path) -> None:
    path = _write(_frame(10), tmp_path / "r.parquet")  # one reading per event-time second
    clock = ManualClock(0)
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)
        clock.advance(s)

    src = FileSource(path, speed=2.0, time_column="timestamp", clock=clock, sleep=fake_sleep)

    async def run() -> list[list[int]]:
        logic = src.build(None)
        out = []
        while (df := await logic.next_batch(100, 10.0)) is not None:
            out.append(df["count"].to_list())
            clock.advance("1s")  # two event-time seconds at speed 2
        await logic.close()
        return out

    batches = asyncio.run(run())
    assert batches == [[0], [1, 2], [3, 4], [5, 6], [7, 8], [9]]
    assert sleeps == []

    # Nothing due within max_delay: an empty frame after sleeping max_delay, then the row.
    clock2 = ManualClock(0)
    slept: list[float] = []

    async def sleep2(s: float) -> None:
        slept.append(s)
        clock2.advance(s)

    src2 = FileSource(path, speed=1.0, time_column="timestamp", clock=clock2, sleep=sleep2)

    async def run2() -> None:
        logic = src2.build(None)
        first = await logic.next_batch(100, 0.25)
        assert first is not None and first["count"].to_list() == [0]
        empty = await logic.next_batch(100, 0.25)
        assert empty is not None and empty.height == 0 and "count" in empty.columns
        nxt = await logic.next_batch(100, 5.0)
        assert nxt is not None and nxt["count"].to_list() == [1]
        await logic.close()

    asyncio.run(run2())
    assert slept == [0.25, 0.75]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        FileSource(tmp_path / "nope.csv")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(ValueError, match="csv, jsonl, parquet"):
        FileSource(tmp_path / "r.txt")
    path = _write(_frame(3), tmp_path / "r.csv")
    with pytest.raises(ValueError, match="time_column"):
        FileSource(path, speed=2)
    with pytest.raises(ValueError, match="speed=-1"):
        FileSource(path, speed=-1, time_column="timestamp")
    assert FileSource(path, format="csv").guarantee == "exactly-once"

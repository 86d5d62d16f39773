"""The HTTP source's record hand-off: the compiled readers against msgspec, live (memory) against replay (file)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tidegauge.connectors._records import RecordCodec
from tidegauge.connectors._rfc3339 import parse_rfc3339
from tidegauge.connectors.http import HttpIngestSource
from tidegauge.server.validation import RecordValidator

SCHEMA: dict[str, Any] = {"sensor_id": "str", "timestamp": "timestamp", "t": "float", "n": "int", "b": "bool",
                          "s": "str"}
CODEC = RecordCodec(SCHEMA)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def same_frames(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    """Equal schemas and values, floats bit for bit (so -0.0 is not 0.0)."""
    if a.schema != b.schema or a.height != b.height:
        return False
    for name in a.columns:
        x, y = a[name], b[name]
        if x.dtype == pl.Float64:
            if not (x.is_null() == y.is_null()).all():
                return False
            bits = [s.fill_null(0.0).to_numpy().view(np.int64) for s in (x, y)]
            if not np.array_equal(*bits):
                return False
        elif not x.equals(y):
            return False
    return True


# -- values as JSON text: mostly what a sensor sends, some of everything msgspec rejects or the reader leaves
_odd_number = st.sampled_from([
    "-0", "-0.0", "0.0", "1e22", "1e23", "1E-3", "1e+2", "-1.5e-7", "9007199254740993", "9223372036854775807",
    "9223372036854775808", "1e400", "01", ".5", "5.", "-", "1.5e", "0.1000000000000000055511151231257827",
    "1767225600", "1767225600.25", "1e11", "100000000001", "123456789012345678901234"])
_decimal = st.integers(0, 8).flatmap(lambda k: st.decimals(-10**6, 10**6, allow_nan=False, allow_infinity=False,
                                                           places=k)).map(str)
_float = st.one_of(_decimal, _decimal, _decimal, st.integers(-(10**6), 10**6).map(str),
                   st.floats(allow_nan=False, allow_infinity=False).map(repr))
_int = st.integers(-(2**63), 2**63 - 1).map(str)
_text = st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters='"\\'), max_size=12)
_string = st.one_of(_text.map(lambda s: f'"{s}"'), _text.map(lambda s: f'"{s}"'),
                    st.text(max_size=8).map(lambda s: msgspec.json.encode(s).decode()))
_odd_string = st.sampled_from(['"a\\"b"', '"\\u0041"', '"a\tb"', '""', '"' + "x" * 300 + '"',
                               '"' + "é" * 4096 + '"', '"' + "é" * 4097 + '"', '"\xff"'])
_stamp_text = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                 timezones=st.just(UTC) | st.builds(lambda m: timezone(timedelta(minutes=m)),
                                                             st.integers(-1439, 1439))).map(
        lambda d: f'"{d.isoformat()}"'),
    st.sampled_from(['"2026-01-01T00:00:00Z"', '"2026-01-01t00:00:00.1234565z"', '"2026-01-01 00:00:00+0200"',
                     '"2026-02-29T00:00:00Z"', '"2026-01-01T24:00:00Z"', '"2026-01-01T00:00:00"', '"1767225600"']),
)
_stamp = st.one_of(_stamp_text, _stamp_text, _decimal, st.floats(-1e11, 1e11).map(repr))
_weird = st.one_of(st.sampled_from(["null", "true", "false", "[]", "{}", '{"a":[1]}', "nul", "tru"]),
                   _odd_number, _odd_string, _float, _string)
_VALUES = {"str": _string, "float": _float, "int": _int, "bool": st.sampled_from(["true", "false"]),
           "timestamp": _stamp}


@st.composite
def _record(draw: st.DrawFn) -> str:
    fields = []
    for name, type_ in SCHEMA.items():
        if draw(st.integers(0, 39)) > 0:  # now and then missing (required ones too)
            fields.append((name, draw(_VALUES[type_] if draw(st.integers(0, 39)) else _weird)))
    if draw(st.booleans()):
        fields.append(("extra", draw(st.one_of(_string, _float, _weird))))
    if fields and not draw(st.integers(0, 39)):
        fields.append(draw(st.sampled_from(fields)))  # a repeated key
    fields = draw(st.permutations(fields))
    ws = st.sampled_from(["", "", "", " ", "\t", "\r"])
    return "{" + draw(ws) + ",".join(f'"{k}"{draw(ws)}:{draw(ws)}{v}' for k, v in fields) + draw(ws) + "}"


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=st.lists(_record(), min_size=1, max_size=4), sep=st.sampled_from(["\n", "\r\n", " ", "\n\n"]))
def test_compiled_reader_takes_only_what_msgspec_takes_with_the_same_values(records: list[str], sep: str) -> None:
    body = sep.join(records).encode()
    columns = CODEC.scan(body)
    try:
        decoded = CODEC.decode_lines(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        decoded = None
    event("left to msgspec" if columns is None else "read by the compiled reader")
    if columns is None:
        return  # left to msgspec: always allowed
    assert decoded is not None, f"the compiled reader took a body msgspec rejects: {body!r}"
    assert columns.rows == len(decoded)
    assert same_frames(CODEC.frame_columns([columns]), CODEC.frame([CODEC.pack(decoded)], len(decoded)))


def test_compiled_reader_takes_plain_readings() -> None:
    """The point of it: ordinary readings (and the usual spacing) never fall back to msgspec."""
    body = (b'{"sensor_id":"S1","timestamp":"2026-01-01T00:00:00.250Z","t":21.5,"n":-3,"b":true,"s":"caf\xc3\xa9"}\n'
            b' { "timestamp" : 1767225600.5 , "sensor_id" : "S2" , "t" : -0.0 , "s" : null , "x" : [1] }\r\n')
    assert CODEC.scan(body) is None  # the nested value of an unknown field: left to msgspec
    body = body.replace(b"[1]", b'"ignored"')
    columns = CODEC.scan(body)
    assert columns is not None and columns.rows == 2
    df = CODEC.frame_columns([columns])
    assert df.columns == list(SCHEMA)
    assert df["timestamp"].dt.epoch("us").to_list() == [1767225600250000, 1767225600500000]
    assert df["s"].to_list() == ["café", None] and df["b"].to_list() == [True, None]
    assert np.signbit(df["t"].to_numpy()).tolist() == [False, True]


@settings(max_examples=300, deadline=None)
@given(stamp=_stamp_text)
def test_rfc3339_reader_agrees_with_msgspec(stamp: str) -> None:
    text = msgspec.json.decode(stamp)
    ours, missed = parse_rfc3339(pl.Series([text]))
    try:
        dt = msgspec.json.decode(stamp, type=datetime)
        expected = None if dt.tzinfo is None else (dt - EPOCH) // timedelta(microseconds=1)
    except msgspec.ValidationError:
        expected = None
    got = None if missed is not None else ours.dt.epoch("us")[0]
    assert got == expected


def _append_as_the_server_does(log: Any, validator: RecordValidator, body: bytes) -> None:
    result = validator.validate(body, "application/x-ndjson")
    decoded: object | None = result.columns
    if decoded is None and result.records:
        decoded = validator.codec.pack(result.records)
    asyncio.run(log.append(result.ndjson, result.accepted, [(r.reason, r.payload) for r in result.rejects],
                           decoded=decoded))


def test_live_hand_off_and_replay_from_the_file_give_the_same_records(tmp_path: Path) -> None:
    """What the flow gets in memory from the server equals what a restarted flow reads back from the log."""
    source = HttpIngestSource(tmp_path, schema=SCHEMA, durability="os")
    validator = RecordValidator(SCHEMA)
    bodies = [
        b'{"sensor_id":"a","timestamp":"2026-01-01T00:00:00Z","t":1.25}\n' * 3,  # the compiled reader's
        b'{"sensor_id":"b\\u00e9","timestamp":"2026-01-01T00:00:01.1234565+01:00","t":2,"t":3}\n',  # msgspec's
        b'{"sensor_id":"c","timestamp":1767225602.5,"n":7}\n{"sensor_id":"","timestamp":"x"}\n',  # one reject
        b'{"sensor_id":"d","timestamp":"2026-01-01T00:00:03Z","t":0.1000000000000000055511151231257827}\n',
    ]
    live = source.build(None)
    for body in bodies:
        _append_as_the_server_does(live.log, validator, body)

    async def read_all(logic: Any) -> pl.DataFrame:
        frames = []
        while logic.offset < logic.log.durable:
            df = await logic.next_batch(2, 0.001)
            frames.append(df)
        return pl.concat([f for f in frames if f.height], how="diagonal_relaxed")

    got_live = asyncio.run(read_all(live))
    assert live.log.frames_from_memory > 0 and live.log.frames_from_file == 0
    asyncio.run(live.close())
    replay_source = HttpIngestSource(tmp_path, schema=SCHEMA, durability="os")
    replay = replay_source.build(None)
    got_replay = asyncio.run(read_all(replay))
    assert replay.log.frames_from_file > 0 and replay.log.frames_from_memory == 0
    asyncio.run(replay.close())
    assert same_frames(got_live, got_replay)
    ok = got_live.filter(pl.col("_tg_error").is_null()) if "_tg_error" in got_live.columns else got_live
    assert ok["sensor_id"].to_list() == ["a", "a", "a", "bé", "c", "d"]
    assert ok["t"].to_list()[3] == 3.0  # a repeated key: the last value, as msgspec validated it
    assert ok["timestamp"].dt.epoch("us").to_list()[3:5] == [1767225601123457 - 3_600_000_000, 1767225602500000]

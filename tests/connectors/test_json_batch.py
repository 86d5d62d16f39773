"""Decoding broker payloads: the column-wise path gives exactly the frame the row-by-row path gives.

``decode_payloads`` builds the common batch (one object per payload, matching topics) column by column,
and sends everything else (arrays, bad JSON, topics that do not match, a field both in the topic and in
the payload) row by row. Hypothesis throws mixed batches at both and compares the frames.
"""

from __future__ import annotations

from typing import Any

import msgspec
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tidegauge.connectors._json_batch as jb
from tidegauge.connectors._json_batch import TopicTemplate, decode_payloads

TEMPLATE = TopicTemplate("sensors/{sensor_id}/telemetry")
values = st.one_of(st.none(), st.integers(-5, 5), st.floats(allow_nan=False, width=32), st.text(max_size=3))
objects = st.dictionaries(st.sampled_from(["timestamp", "t", "v", "sensor_id"]), values, max_size=4)
payloads = st.one_of(
    objects.map(msgspec.json.encode),
    st.lists(objects, max_size=2).map(msgspec.json.encode),
    st.sampled_from([b"not json", b"5", b'"s"']),
)
topics = st.one_of(st.sampled_from(["a", "b", "c"]).map(lambda s: f"sensors/{s}/telemetry"), st.just("other/x"))


def row_by_row(monkeypatch: pytest.MonkeyPatch, *args: Any, **kwargs: Any) -> pl.DataFrame | Exception:
    with monkeypatch.context() as m:
        m.setattr(jb, "_columns_frame", lambda *a: None)
        try:
            return decode_payloads(*args, **kwargs)
        except Exception as exc:  # compared with what the fast path does
            return exc


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(payloads, topics), min_size=1, max_size=12), st.booleans(), st.booleans())
def test_column_wise_equals_row_by_row(batch: list[tuple[bytes, str]], with_template: bool, typed: bool) -> None:
    pays, tops = [p for p, _ in batch], [t for _, t in batch]
    kwargs: dict[str, Any] = {"topics": tops, "template": TEMPLATE} if with_template else {}
    if typed:
        kwargs["schema"] = {"v": pl.Float64}
    mp = pytest.MonkeyPatch()
    try:
        want = row_by_row(mp, pays, **kwargs)
    finally:
        mp.undo()
    if isinstance(want, Exception):
        with pytest.raises(type(want)):
            decode_payloads(pays, **kwargs)
        return
    got = decode_payloads(pays, **kwargs)
    assert got.columns == want.columns
    assert got.schema == want.schema
    assert got.to_dicts() == want.to_dicts()


def test_the_common_batch_takes_the_column_wise_path() -> None:
    pays = [msgspec.json.encode({"timestamp": "2026-01-01T00:00:00Z", "v": i, "gone": None}) for i in range(3)]
    tops = ["sensors/a/telemetry", "sensors/b/telemetry", "sensors/a/telemetry"]
    values = [msgspec.json.decode(p) for p in pays]
    fast = jb._columns_frame(values, tops, TEMPLATE, None)
    assert fast is not None
    assert fast["sensor_id"].to_list() == ["a", "b", "a"]
    assert fast.columns == ["sensor_id", "timestamp", "v", "_tg_error", "_tg_raw"]  # all-null 'gone' dropped
    assert jb._columns_frame(values, [*tops[:2], "other/x"], TEMPLATE, None) is None  # an error row: row by row

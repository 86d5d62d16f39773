"""Decoding broker messages (JSON payloads) into batches, and encoding batches back to JSON messages.

Shared by the MQTT, NATS and Redis connectors. A payload is one JSON object (one reading) or an array of
objects (several readings). Payloads are decoded in one ``msgspec`` call per batch (joined into one JSON
array); only when that fails is each payload decoded on its own, to find the bad ones. A payload that is not
JSON, or not an object / array of objects, becomes one row whose ``_tg_error`` gives the reason and whose
``_tg_raw`` holds the payload, so the engine dead-letters it instead of crashing.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import polars as pl

from tidegauge.dataflow.base import ERROR, RAW

__all__ = ["TopicTemplate", "decode_payloads", "encode_rows", "row_ids"]

logger = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder()
_TOPIC_CACHE = 65_536
"""Topics whose parsed fields a template remembers: a fleet of tens of thousands of devices fits; an
unbounded stream of distinct topics only costs a periodic clear."""
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TopicTemplate:
    """A topic (or subject, or stream key) pattern such as ``sensors/{sensor_id}/telemetry``.

    Each ``{name}`` stands for exactly one level (between ``separator``\\ s). Used both ways: to take
    column values out of the topic of an incoming message, and to build the topic of an outgoing row.

    Examples
    --------
    >>> t = TopicTemplate("sensors/{sensor_id}/telemetry")
    >>> t.fields, t.parse("sensors/s-1/telemetry")
    (('sensor_id',), {'sensor_id': 's-1'})
    >>> t.parse("other/s-1") is None
    True
    """

    def __init__(self, template: str, *, separator: str = "/") -> None:
        if not isinstance(template, str) or not template:
            raise ValueError(f"topic template {template!r}: use a non-empty string like 'sensors/{{sensor_id}}/data'")
        self.template = template
        self.separator = separator
        self.fields: tuple[str, ...] = tuple(_FIELD.findall(template))
        if len(set(self.fields)) != len(self.fields):
            raise ValueError(f"topic template {template!r} names a field twice")
        level = f"[^{re.escape(separator)}]+"
        parts = _FIELD.split(template)
        pattern = "".join(
            re.escape(p) if i % 2 == 0 else f"(?P<{p}>{level})" for i, p in enumerate(parts)
        )
        self._regex = re.compile(f"^{pattern}$")
        self._cache: dict[str, dict[str, str] | None] = {}

    def __repr__(self) -> str:
        return f"TopicTemplate({self.template!r})"

    def parse(self, topic: str) -> dict[str, str] | None:
        """The fields in ``topic``, or ``None`` if it does not match."""
        m = self._regex.match(topic)
        return None if m is None else m.groupdict()

    def parse_cached(self, topic: str) -> dict[str, str] | None:
        """:meth:`parse`, remembered: a fleet reuses the same topics (the cache is cleared past 65,536)."""
        try:
            return self._cache[topic]
        except KeyError:
            if len(self._cache) >= _TOPIC_CACHE:
                self._cache.clear()
            found = self._cache[topic] = self.parse(topic)
            return found

    def format_column(self, df: pl.DataFrame) -> pl.Series:
        """The topic of every row of ``df`` (a field missing from ``df`` is an error)."""
        missing = [f for f in self.fields if f not in df.columns]
        if missing:
            raise ValueError(f"topic template {self.template!r} needs columns {missing}; the batch has {df.columns}")
        if not self.fields:
            return pl.Series("topic", [self.template] * df.height, dtype=pl.String)
        literal = _FIELD.sub("{}", self.template)
        exprs = [pl.col(f).cast(pl.String) for f in self.fields]
        return df.select(pl.format(literal, *exprs).alias("topic")).to_series()


def _error_row(reason: str, payload: bytes) -> dict[str, Any]:
    return {ERROR: reason, RAW: payload.decode("utf-8", errors="replace")}


def _rows_of(value: Any, payload: bytes) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    kind = type(value).__name__
    return [_error_row(f"payload is JSON {kind}, not an object or an array of objects", payload)]


def decode_payloads(
    payloads: Sequence[bytes],
    *,
    topics: Sequence[str] | None = None,
    template: TopicTemplate | None = None,
    schema: Mapping[str, pl.DataType] | None = None,
) -> pl.DataFrame:
    """Decode JSON ``payloads`` into one frame (with ``_tg_error``/``_tg_raw`` when some are bad).

    With ``template``, the fields found in each message's topic (``topics[i]``) fill the columns of the
    same name where the payload has no value; a topic that does not match gives an error row.

    Examples
    --------
    >>> df = decode_payloads([b'{"v": 1}', b'[{"v": 2}, {"v": 3}]', b'oops'])
    >>> df["v"].to_list(), df["_tg_error"].is_null().to_list()
    ([1, 2, 3, None], [True, True, True, False])
    """
    if not payloads:
        return pl.DataFrame()
    try:
        values: list[Any] = _decoder.decode(b"[" + b",".join(payloads) + b"]")
        if len(values) != len(payloads):  # a payload like b'1,2' joins into two values
            raise msgspec.DecodeError("payload count mismatch")
    except msgspec.DecodeError:
        values = []
        for p in payloads:
            try:
                values.append(_decoder.decode(p))
            except msgspec.DecodeError as exc:
                values.append(_Bad(f"payload is not valid JSON: {exc}"))
    else:
        fast = _columns_frame(values, topics, template, schema)
        if fast is not None:
            return fast
    rows: list[dict[str, Any]] = []
    for i, (value, payload) in enumerate(zip(values, payloads, strict=True)):
        if isinstance(value, _Bad):
            rows.append(_error_row(value.reason, payload))
            continue
        got = _rows_of(value, payload)
        if template is not None and topics is not None and template.fields:
            found = template.parse(topics[i])
            if found is None:
                got = [_error_row(f"topic {topics[i]!r} does not match {template.template!r}", payload)]
            else:
                got = [{**found, **{k: v for k, v in r.items() if v is not None}} for r in got]
        rows.extend(got)
    return _frame(rows, schema)


def _columns_frame(
    values: list[Any],
    topics: Sequence[str] | None,
    template: TopicTemplate | None,
    schema: Mapping[str, pl.DataType] | None,
) -> pl.DataFrame | None:
    """The common case, column-wise: one object per payload, topics that match, no field in both.

    Gives the same frame as the row-by-row path below (tested); ``None`` sends anything else there.
    Row by row, each row was a merged dict (topic fields, then the payload's non-null values), which
    cost more than decoding the JSON; here polars builds the payload columns in one call and the topic
    fields are added as columns, parsed once per distinct topic.
    """
    if not all(type(v) is dict for v in values):
        return None
    fields = template.fields if template is not None and topics is not None else ()
    parsed: list[dict[str, str] | None] = []
    if fields:
        assert template is not None and topics is not None
        parsed = [template.parse_cached(t) for t in topics]
        if any(p is None for p in parsed):
            return None
    try:
        df = pl.from_dicts(values, infer_schema_length=None, schema_overrides=dict(schema) if schema else None)
    except (pl.exceptions.PolarsError, TypeError, ValueError):
        return None
    if any(f in df.columns for f in fields):
        return None
    if fields:
        # a key null (or absent) in every row: merging topic fields, the row-by-row path dropped null
        # values, so it had no such column
        empty = [c for c in df.columns if df[c].null_count() == df.height]
        if empty:
            df = df.drop(empty)
    topic_columns = [pl.Series(f, [p[f] for p in parsed if p is not None], dtype=pl.String) for f in fields]
    # Series, not with_columns(pl.lit(...)): each polars query costs 25-400 us per batch on a busy machine
    none = [None] * len(values)
    marks = [pl.Series(ERROR, none, dtype=pl.String), pl.Series(RAW, none, dtype=pl.String)]
    return pl.DataFrame([*topic_columns, *df.get_columns(), *marks], height=len(values))


class _Bad:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _frame(rows: list[dict[str, Any]], schema: Mapping[str, pl.DataType] | None) -> pl.DataFrame:
    overrides = dict(schema) if schema else None
    try:
        df = pl.from_dicts(rows, infer_schema_length=None, schema_overrides=overrides)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        # a value that cannot take the schema's type: decode row by row so only the bad rows fail
        logger.debug("batch decode failed (%s); decoding row by row", exc)
        good: list[pl.DataFrame] = []
        for r in rows:
            try:
                good.append(pl.from_dicts([r], schema_overrides=overrides))
            except (pl.exceptions.PolarsError, TypeError, ValueError) as row_exc:
                raw = msgspec.json.encode(r).decode()
                good.append(pl.DataFrame({ERROR: [f"cannot read payload: {row_exc}"], RAW: [raw]}))
        df = pl.concat(good, how="diagonal_relaxed")
    if ERROR not in df.columns:
        df = df.with_columns(pl.lit(None, pl.String).alias(ERROR), pl.lit(None, pl.String).alias(RAW))
    return df


def encode_rows(df: pl.DataFrame) -> list[bytes]:
    """One JSON object per row (timestamps as ISO 8601 strings)."""
    if not df.height:
        return []
    text = df.write_ndjson()
    return [line.encode() for line in text.splitlines()]


def row_ids(payloads: Sequence[bytes], df: pl.DataFrame, columns: Sequence[str] | None) -> list[str]:
    """A deterministic id per row: a hash of ``columns`` (e.g. key and time) or of the whole payload.

    The same row written again after a replay gets the same id, so a broker that de-duplicates by id
    (NATS ``Nats-Msg-Id``) stores it once.
    """
    if columns:
        keys = encode_rows(df.select(list(columns)))
    else:
        keys = list(payloads)
    return [hashlib.blake2b(k, digest_size=16).hexdigest() for k in keys]

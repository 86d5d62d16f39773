"""Validating ingest bodies record by record, with a msgspec Struct generated from the source's schema.

A body is NDJSON (one reading per line) or JSON (an array of readings, or one reading). An NDJSON body is
first read by the compiled reader of :mod:`tidegauge.connectors._ndjson` (flat records of plain values:
the usual case), which checks the same rules as msgspec without the GIL; anything it does not take is
decoded in one msgspec call (in C); only if that fails, or if the caller may write only some sensors,
is each record decoded on its own to find which ones are bad and why. Every rejected
record keeps its index (0-based, among the non-blank lines or array elements) and its original text.

Reasons start with a stable class, before the first ``:`` (what the metrics count by):
``malformed`` (not JSON), ``invalid`` (wrong type, missing field, out of range, naive timestamp) and
``forbidden`` (the token may not write that sensor).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tidegauge.connectors._records import Columns, RecordCodec
from tidegauge.connectors.http import FieldType

__all__ = ["RecordValidator", "Reject", "ValidationResult"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reject:
    index: int
    reason: str
    payload: str


@dataclass
class ValidationResult:
    """Accepted records as NDJSON (``ndjson``, ``accepted`` of them, and decoded: ``records`` or ``columns``),
    and the rejects."""

    ndjson: bytes = b""
    accepted: int = 0
    rejects: list[Reject] = field(default_factory=list)
    sensors: list[str] | None = None
    records: list[Any] = field(default_factory=list)
    columns: Columns | None = None
    """the compiled reader's columns, when it validated the body (then ``records`` is empty)"""


class RecordValidator:
    """Decodes and validates ingest bodies against ``schema`` (field -> type), ``key`` and ``time`` required.

    Examples
    --------
    >>> v = RecordValidator({"sensor_id": "str", "timestamp": "timestamp", "t": "float"})
    >>> r = v.validate(b'{"sensor_id":"a","timestamp":"2026-01-01T00:00:00Z","t":1}\\n{"sensor_id":"b"}\\n',
    ...                "application/x-ndjson")
    >>> r.accepted, [(x.index, x.reason) for x in r.rejects]
    (1, [(1, 'invalid: Object missing required field `timestamp`')])
    """

    def __init__(self, schema: Mapping[str, FieldType], *, key: str = "sensor_id", time: str = "timestamp") -> None:
        self.codec = RecordCodec(schema, key=key, time=time)
        """the record Struct and its packing for the flow (:mod:`tidegauge.connectors._records`)"""
        self.key = key
        self.record = self.codec.record
        self._one = msgspec.json.Decoder(self.record)
        self._array = msgspec.json.Decoder(list[self.record])  # type: ignore[name-defined]
        self._raw_array = msgspec.json.Decoder(list[msgspec.Raw])
        self._encoder = msgspec.json.Encoder()

    def validate(
        self, body: bytes, content_type: str | None, *, sensors: frozenset[str] | None = None
    ) -> ValidationResult:
        """Validate ``body``; with ``sensors``, records of other sensors are rejected as ``forbidden``."""
        ctype = (content_type or "").split(";", 1)[0].strip().lower()
        # sniff on a short prefix: stripping the whole body would copy it
        is_json = ctype == "application/json" or (ctype not in ("application/x-ndjson", "application/jsonl")
                                                  and body[:256].lstrip()[:1] == b"[")
        if is_json:
            return self._validate_json(body.lstrip(), sensors)
        return self._validate_lines(body, sensors)

    def _validate_lines(self, body: bytes, sensors: frozenset[str] | None) -> ValidationResult:
        if sensors is None:
            # the compiled reader first: plain records validated without the GIL and without a Python
            # object per value (the flow reads them with it again); anything else goes to msgspec
            columns = self.codec.scan(body)
            if columns is not None:
                return ValidationResult(body, columns.rows, columns=columns)
            try:
                records = self._one.decode_lines(body)
            except (msgspec.DecodeError, UnicodeDecodeError):
                pass
            else:
                return ValidationResult(body, len(records), records=records)
        lines = [line for line in body.split(b"\n") if line.strip()]
        return self._one_by_one(lines, sensors)

    def _validate_json(self, body: bytes, sensors: frozenset[str] | None) -> ValidationResult:
        if body[:1] != b"[":
            return self._one_by_one([body], sensors)
        if sensors is None:
            try:
                records = self._array.decode(body)
            except (msgspec.DecodeError, UnicodeDecodeError):
                pass
            else:
                return ValidationResult(self._encoder.encode_lines(records), len(records), records=records)
        try:
            raws = self._raw_array.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return ValidationResult(rejects=[Reject(0, _reason(exc), _text(body))])
        return self._one_by_one([bytes(r) for r in raws], sensors)

    def _one_by_one(self, items: list[bytes], sensors: frozenset[str] | None) -> ValidationResult:
        good: list[Any] = []
        rejects: list[Reject] = []
        for i, raw in enumerate(items):
            try:
                rec = self._one.decode(raw)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                rejects.append(Reject(i, _reason(exc), _text(raw)))
                continue
            if sensors is not None and getattr(rec, self.key) not in sensors:
                rejects.append(Reject(i, f"forbidden: this token may not write sensor {getattr(rec, self.key)!r}",
                                      _text(raw)))
                continue
            good.append(rec)
        return ValidationResult(self._encoder.encode_lines(good) if good else b"", len(good), rejects, records=good)


def _reason(exc: Exception) -> str:
    if isinstance(exc, msgspec.ValidationError):
        return f"invalid: {exc}"
    return f"malformed: {exc}"


def _text(raw: bytes) -> str:
    """The original record as text for the dead-letter payload (bytes that are not UTF-8 replaced)."""
    return raw.decode("utf-8", "replace")

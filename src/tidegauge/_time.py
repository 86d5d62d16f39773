"""Durations, timestamps and clocks.

Inside the engine every timestamp is an ``int`` of microseconds since the Unix epoch (UTC) and every
duration an ``int`` of microseconds. At the API, timestamps are timezone-aware ``datetime`` objects or
polars ``Datetime("us", "UTC")`` columns, and durations are ``timedelta`` or strings such as ``"500ms"``,
``"30s"``, ``"5m"``, ``"1h"``.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

import polars as pl

__all__ = [
    "Clock",
    "Duration",
    "ManualClock",
    "SystemClock",
    "format_duration",
    "parse_duration",
    "timestamp_column_to_micros",
    "to_micros",
]

logger = logging.getLogger(__name__)

Duration = str | timedelta | int | float
"""A duration: a ``timedelta``, a string like ``"30s"``, or a number of seconds."""

_UNITS_US = {
    "us": 1,
    "µs": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "min": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(us|µs|ms|min|s|m|h|d)")


def parse_duration(value: Duration, *, name: str = "duration") -> int:
    """Return ``value`` as a whole number of microseconds.

    Accepts ``timedelta``, a number of seconds, or a string of one or more ``<number><unit>`` parts
    with units ``us``, ``ms``, ``s``, ``m``/``min``, ``h``, ``d`` (``"1m30s"``).

    >>> parse_duration("1m30s")
    90000000
    >>> parse_duration("500ms")
    500000
    """
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a duration like '30s', got {value!r}")
    if isinstance(value, timedelta):
        us = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    elif isinstance(value, int | float):
        us = round(value * 1_000_000)
    elif isinstance(value, str):
        text = value.strip().lower()
        pos = 0
        us_f = 0.0
        for m in _PART.finditer(text):
            if m.start() != pos or not text:
                break
            us_f += float(m.group(1)) * _UNITS_US[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ValueError(
                f"{name}: {value!r} is not a duration; write a number and a unit, e.g. '500ms', '30s', '5m', '1h'"
            )
        us = round(us_f)
    else:
        raise TypeError(f"{name}: expected a duration like '30s' or a timedelta, got {type(value).__name__}")
    if us < 0:
        raise ValueError(f"{name}: {value!r} is negative; durations must be >= 0")
    return us


def format_duration(us: int) -> str:
    """Format microseconds in the largest unit that divides them exactly.

    >>> format_duration(90_000_000)
    '90s'
    """
    for unit in ("h", "m", "s", "ms"):
        size = _UNITS_US[unit]
        if us % size == 0 and us >= size:
            return f"{us // size}{unit}"
    return f"{us}us"


def to_micros(ts: datetime) -> int:
    """Microseconds since the epoch for a timezone-aware datetime; naive datetimes are rejected."""
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r}: pass a timezone-aware datetime (e.g. tzinfo=UTC)")
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def timestamp_column_to_micros(series: pl.Series) -> pl.Series:
    """Convert an event-time column to Int64 microseconds (nulls where it cannot be read).

    Accepted: ``Datetime`` (naive values are taken as UTC only when they come from a file format with no
    zone, which polars marks as naive), ``Date``, ISO-8601 strings, and numbers of seconds since the epoch.
    """
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        # cast_time_unit only when needed, and a cast to Int64 rather than to_physical: both of those run
        # as expressions on polars' thread pool (~0.04 ms each), the cast does not (~1 us)
        micros = series if dtype.time_unit == "us" else series.dt.cast_time_unit("us")
        return micros.cast(pl.Int64)
    if dtype == pl.Date:
        return series.cast(pl.Datetime("us")).to_physical().cast(pl.Int64)
    if dtype == pl.String:
        parsed = series.str.to_datetime(time_unit="us", time_zone="UTC", strict=False)
        return parsed.to_physical().cast(pl.Int64)
    if dtype.is_numeric():
        return (series.cast(pl.Float64) * 1_000_000).round().cast(pl.Int64, strict=False)
    raise TypeError(f"time column {series.name!r} has type {dtype}; use a Datetime, ISO string or epoch seconds")


class Clock(Protocol):
    """Processing-time clock. Every time-dependent part takes one so tests can control time."""

    def now_us(self) -> int:
        """Current processing time in microseconds since the epoch."""
        ...


class SystemClock:
    """The wall clock."""

    def now_us(self) -> int:
        return time.time_ns() // 1_000


class ManualClock:
    """A clock that moves only when told to (for tests and simulations).

    >>> c = ManualClock(0)
    >>> c.advance("2s"); c.now_us()
    2000000
    """

    def __init__(self, start_us: int = 0) -> None:
        self._now = start_us

    def now_us(self) -> int:
        return self._now

    def advance(self, by: Duration) -> None:
        self._now += parse_duration(by, name="advance")

    def set(self, now_us: int) -> None:
        if now_us < self._now:
            raise ValueError("ManualClock cannot go backwards")
        self._now = now_us

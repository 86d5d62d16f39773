"""Window kinds: what a window is, independent of what is computed over it.

- :class:`Tumbling`: fixed, non-overlapping event-time windows ``[offset + k*size, offset + (k+1)*size)``.
- :class:`Sliding`: hopping windows of ``size`` starting every ``slide``; ``size`` must be a multiple of
  ``slide`` (each window is made of ``size // slide`` panes of length ``slide``).
- :class:`Session`: per key, records closer than ``gap`` in event time form one session
  ``[first_ts, last_ts + gap)``.
- :class:`Count`: per key, every ``n`` records in arrival order; ``window_start``/``window_end`` are the
  minimum and maximum event time of its records (**end inclusive**, unlike the time windows).

Time windows report ``window_end`` exclusive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tidegauge._time import Duration, format_duration, parse_duration

__all__ = ["Count", "Session", "Sliding", "Tumbling", "WindowKind"]

logger = logging.getLogger(__name__)


def _positive(value: Duration, name: str) -> int:
    us = parse_duration(value, name=name)
    if us <= 0:
        raise ValueError(f"{name}: {value!r} must be a positive duration, e.g. '10s'")
    return us


@dataclass(frozen=True, init=False)
class Tumbling:
    """Fixed, non-overlapping event-time windows.

    Parameters
    ----------
    size:
        Window length (``"10s"``, a ``timedelta``, or seconds).
    offset:
        Shift of the window grid from the epoch (``"30m"`` with ``size="1h"`` gives windows from hh:30).

    Examples
    --------
    >>> Tumbling("10s").size_us
    10000000
    """

    size_us: int
    offset_us: int

    def __init__(self, size: Duration, *, offset: Duration = 0) -> None:
        size_us = _positive(size, "Tumbling.size")
        offset_us = parse_duration(offset, name="Tumbling.offset")
        object.__setattr__(self, "size_us", size_us)
        object.__setattr__(self, "offset_us", offset_us % size_us)

    def __repr__(self) -> str:
        off = f", offset={format_duration(self.offset_us)!r}" if self.offset_us else ""
        return f"Tumbling({format_duration(self.size_us)!r}{off})"


@dataclass(frozen=True, init=False)
class Sliding:
    """Hopping event-time windows of ``size`` every ``slide`` (each record is in ``size // slide`` windows).

    Examples
    --------
    >>> Sliding("1m", "10s").panes
    6
    """

    size_us: int
    slide_us: int

    def __init__(self, size: Duration, slide: Duration) -> None:
        size_us = _positive(size, "Sliding.size")
        slide_us = _positive(slide, "Sliding.slide")
        if size_us < slide_us or size_us % slide_us:
            raise ValueError(
                f"Sliding: size {format_duration(size_us)} must be a multiple of slide {format_duration(slide_us)}"
                f"; e.g. Sliding('{format_duration(slide_us * max(1, size_us // slide_us))}', "
                f"'{format_duration(slide_us)}')"
            )
        object.__setattr__(self, "size_us", size_us)
        object.__setattr__(self, "slide_us", slide_us)

    @property
    def panes(self) -> int:
        """Number of ``slide``-long panes in one window."""
        return self.size_us // self.slide_us

    def __repr__(self) -> str:
        return f"Sliding({format_duration(self.size_us)!r}, {format_duration(self.slide_us)!r})"


@dataclass(frozen=True, init=False)
class Session:
    """Per-key sessions: a session ends once no record arrived for ``gap`` of event time.

    Records at least ``gap`` apart start a new session; an out-of-order record can merge two sessions.
    """

    gap_us: int

    def __init__(self, gap: Duration) -> None:
        object.__setattr__(self, "gap_us", _positive(gap, "Session.gap"))

    def __repr__(self) -> str:
        return f"Session({format_duration(self.gap_us)!r})"


@dataclass(frozen=True)
class Count:
    """Per-key windows of ``n`` records in arrival order.

    A window is emitted as soon as it holds ``n`` records; at the end of input (watermark at end of time)
    the partial windows are emitted too. ``window_end`` is the largest event time of its records,
    inclusive.
    """

    n: int

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"Count.n: {self.n!r} must be a positive integer number of records, e.g. Count(100)")


WindowKind = Tumbling | Sliding | Session | Count

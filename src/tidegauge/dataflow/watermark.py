"""Watermarks: bounded out-of-orderness, idle sources, and records from the future.

Per source, the watermark is ``max event time seen - max_delay``, computed *per record* (each record is
judged against the watermark in force just before it arrived), so lateness never depends on how the
stream was cut into batches. Two gaps other engines leave open are closed here:

- **Idle sources.** When a source has delivered nothing for ``idle_timeout`` of processing time, its
  event time is assumed to move on at the speed of the wall clock since its last record, so windows of
  a quiet source (or of a quiet fleet) still close. A window ending at ``E`` whose last record had event
  time ``t`` is therefore emitted ``max(idle_timeout, (E - t) + max_delay)`` after that record arrived.
- **Fast device clocks.** A record stamped more than ``max_future`` ahead of the watermark is not
  allowed to advance time: it goes to the dead-letter output with the reason. Before any watermark
  exists, the median of the first batch stands in for it, so the very first record cannot poison time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgspec
import numpy as np

from tidegauge._jit import lazy_njit
from tidegauge._time import Duration, parse_duration
from tidegauge.dataflow.base import NO_WATERMARK

__all__ = ["SourceClock", "SourceClockSnapshot", "WatermarkConfig"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatermarkConfig:
    """How event time advances.

    Parameters
    ----------
    max_delay:
        Bounded out-of-orderness: how far behind the newest event time a record may be and still be on time.
    idle_timeout:
        After this much processing time with no record, a source's event time advances with the wall clock.
    max_future:
        Records stamped more than this ahead of the watermark are dead-lettered (``None`` disables the check).
    """

    max_delay: int = 0
    idle_timeout: int = 10_000_000
    max_future: int | None = 3_600_000_000

    @classmethod
    def of(
        cls,
        *,
        max_delay: Duration = 0,
        idle_timeout: Duration = "10s",
        max_future: Duration | None = "1h",
    ) -> WatermarkConfig:
        return cls(
            max_delay=parse_duration(max_delay, name="watermark.max_delay"),
            idle_timeout=parse_duration(idle_timeout, name="watermark.idle_timeout"),
            max_future=None if max_future is None else parse_duration(max_future, name="watermark.max_future"),
        )


class SourceClockSnapshot(msgspec.Struct, frozen=True, tag="source-clock/1"):
    max_event: int
    floor: int
    finished: bool


@lazy_njit(cache=True, nogil=True)
def _assign(ts, max_event, floor, max_delay, max_future, check_future, future_ref):  # type: ignore[no-untyped-def]
    n = ts.shape[0]
    wm = np.empty(n, np.int64)
    future = np.zeros(n, np.bool_)
    m = max_event
    for i in range(n):
        w = floor
        if m > NO_WATERMARK and m - max_delay > w:
            w = m - max_delay
        wm[i] = w
        if check_future:
            ref = w if w > future_ref else future_ref
            if ts[i] > ref + max_future:
                future[i] = True
                continue
        if ts[i] > m:
            m = ts[i]
    return wm, future, m


def _assign_vectorised(
    ts: np.ndarray, max_event: int, floor: int, max_delay: int, max_future: int, check_future: bool, future_ref: int
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """:func:`_assign` with numpy, for a batch with no future-stamped record (``None`` if it has one).

    Without exclusions the newest event time before record ``i`` is a running maximum, so each record's
    watermark is vectorised; the first future-stamped record is the first the running maximum flags (up
    to it both agree), and then the compiled loop redoes the batch.
    """
    n = ts.shape[0]
    before = np.empty(n, np.int64)
    before[0] = max_event
    if n > 1:
        np.maximum.accumulate(ts[:-1], out=before[1:])
        np.maximum(before[1:], max_event, out=before[1:])
    ahead = before - max_delay
    wm = np.where((before > NO_WATERMARK) & (ahead > floor), ahead, floor)
    if check_future and (ts > np.maximum(wm, future_ref) + max_future).any():
        return None
    return wm, np.zeros(n, np.bool_), max(max_event, int(ts.max()))


class SourceClock:
    """Event-time progress of one source."""

    def __init__(self, config: WatermarkConfig, snapshot: SourceClockSnapshot | None = None) -> None:
        self.config = config
        self.max_event = NO_WATERMARK if snapshot is None else snapshot.max_event
        self.floor = NO_WATERMARK if snapshot is None else snapshot.floor
        self.finished = False if snapshot is None else snapshot.finished
        self.last_arrival_us: int | None = None
        # what the last batch's future check compared against: the watermark, or (before there is one)
        # the first batch's median; the dead-letter reason reports the distance from it
        self.future_ref: int = NO_WATERMARK

    @property
    def watermark(self) -> int:
        if self.max_event == NO_WATERMARK:
            return self.floor
        return max(self.floor, self.max_event - self.config.max_delay)

    def assign(self, ts: np.ndarray, now_us: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-record watermarks and the mask of future-stamped records for a batch of event times."""
        cfg = self.config
        self.last_arrival_us = now_us
        if ts.size == 0:
            return np.empty(0, np.int64), np.zeros(0, np.bool_)
        check = cfg.max_future is not None
        future_ref = NO_WATERMARK
        if check and self.max_event == NO_WATERMARK and self.floor == NO_WATERMARK:
            future_ref = int(np.median(ts)) - cfg.max_delay
        args = (ts, self.max_event, self.floor, cfg.max_delay, cfg.max_future or 0, check, future_ref)
        # the compiled loop only for a batch with a future-stamped record: numba stays unloaded otherwise
        wm, future, m = _assign_vectorised(*args) or _assign(*args)
        self.future_ref = future_ref
        self.max_event = int(m)
        return wm, future

    def silent(self, now_us: int) -> bool:
        """True for a source that has never delivered a record and has been quiet for ``idle_timeout``.

        Such a source does not hold back the flow's watermark (otherwise a union with a source that
        never sends would never close a window).
        """
        return self.max_event == NO_WATERMARK and (
            self.last_arrival_us is not None and now_us - self.last_arrival_us >= self.config.idle_timeout
        )

    def on_idle(self, now_us: int) -> None:
        """Advance by processing time if the source has been quiet for ``idle_timeout``."""
        if self.last_arrival_us is None:
            self.last_arrival_us = now_us
            return
        if self.finished or self.max_event == NO_WATERMARK:
            return
        quiet = now_us - self.last_arrival_us
        if quiet >= self.config.idle_timeout:
            advanced = self.max_event - self.config.max_delay + quiet
            if advanced > self.floor:
                self.floor = advanced

    def snapshot(self) -> SourceClockSnapshot:
        return SourceClockSnapshot(max_event=self.max_event, floor=self.floor, finished=self.finished)

"""Watermarks: bounded out-of-orderness, idle sources, and records from the future.

Per source, the watermark is ``max event time seen - max_delay``, computed *per record* (each record is
judged against the watermark in force just before it arrived), so lateness never depends on how the
stream was cut into batches. Two gaps other engines leave open are closed here:

- **Idle sources.** When a source has delivered nothing for ``idle_timeout`` of processing time, its
  event time is assumed to move on at the speed of the wall clock since its last record, so windows of
  a quiet source (or of a quiet fleet) still close. A window ending at ``E`` whose last record had event
  time ``t`` is therefore emitted ``max(idle_timeout, (E - t) + max_delay)`` after that record arrived.
- **Wrong device clocks.** A record is *from the future*, and goes to the dead-letter output with the
  reason instead of advancing time, when it is more than ``max_future`` ahead of **both**

  1. the watermark in force, and
  2. the event time that **more than half of the source's last** ``future_window`` **records** (1,024 by
     default, dead-lettered ones included) agree on: it is future only if more than half of them are more
     than ``max_future - max_delay`` behind it (equivalently: ahead of their upper median minus
     ``max_delay``, the watermark they would set).

Why both. The watermark alone can be dragged around by one device in *either* direction: a record that is
accepted moves it forward (a fast clock), and a record that is old leaves it behind while everything after
it is "ahead" and, being dead-lettered, never moves it on: one warm-up reading dated months earlier, or a
slow device clock, used to black-hole a live stream for good. The vote over recent records is what a
single device cannot drag: a fast-clock *minority* is outvoted (still dead-lettered, reason and all); a
stale watermark set by a minority of old records is overtaken by the majority, because rejected records
vote too. After ``k`` stale records the next ``k`` current ones (never more than ``future_window / 2``)
are dead-lettered, with the reason, before the majority carries the watermark on: the bug case, one old
reading and then a live stream, costs one live reading, not the stream. Only the records *before* a
record vote on it, so in a two-record history a lone fast record is outvoted rather than believed: losing
one record is cheap, a watermark pushed hours ahead makes everything after it late.

A stream whose clock **jumps forward for good** (one device, or a whole fleet whose gateway clock was
reset) is believed once the jumped records make up half of the last ``future_window``: its first
``future_window / 2`` records after the jump are dead-lettered with the reason, then the watermark
follows. A shorter burst of fast records is dead-lettered whole and leaves time alone.

Why not the processing clock. Trusting it (a record near the wall clock is never future) would also save
the first current record after a stale one, but it would let a record near the wall clock through while a
stream is legitimately behind (a fleet catching up on a backlog), making the rest of the backlog late;
distrusting records ahead of it would make an edge gateway whose real-time clock was reset reject
everything, and a test's manual clock meaningless; and either way decisions would depend on when a run
happens, so a replay or a restore from a checkpoint would not reproduce them. The
rule above uses event times only: the same records in the same order give the same decisions, however
they were cut into batches and whether or not the flow was restored from a snapshot in between (the
recent event times are part of :class:`SourceClockSnapshot`).

One exception: a source's **first batch** (nothing seen, nothing restored) has no history, so a sample of
that batch itself (up to ``future_window`` records, evenly spaced) stands in for it: a fast clock in the
very first record is caught when the rest of the first batch outvotes it. A first batch of one record
cannot be judged and is accepted: if its clock was fast, the watermark starts that far ahead and what
follows is late until event time catches up (an old one costs one live record, as above).
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
        Records stamped more than this ahead of the watermark and of most recent records are dead-lettered
        (``None`` disables the check). Must exceed ``max_delay``, or no record could ever advance time.
    partition_idle_timeout:
        For sources with ``partition_by``: how long the source's watermark waits for a quiet partition
        (:mod:`tidegauge.dataflow.partitions`). Ten minutes by default: an edge outage that short replays
        on time; every window of the source waits that long for a partition gone quiet.
    future_window:
        How many of a source's most recent records vote on the future check (module docstring). 1,024 by
        default: a fast-clock device is outvoted as long as it sends fewer than 512 of any 1,024 records in
        a row (an edge agent flushing a few hundred readings at once included), and a stream whose clock
        jumps for good loses at most 512 records before it is believed. Each source keeps (and
        checkpoints) this many event times.
    """

    max_delay: int = 0
    idle_timeout: int = 10_000_000
    max_future: int | None = 3_600_000_000
    partition_idle_timeout: int = 600_000_000
    future_window: int = 1024

    def __post_init__(self) -> None:
        if self.max_future is not None and self.max_future <= self.max_delay:
            raise ValueError(
                f"watermark.max_future ({self.max_future} us) must be greater than watermark.max_delay "
                f"({self.max_delay} us): every record newer than the newest seen would be dead-lettered as "
                "future; raise max_future or set it to None to turn the check off"
            )
        if isinstance(self.future_window, bool) or not isinstance(self.future_window, int) \
                or self.future_window < 1:
            raise ValueError(f"watermark.future_window must be a whole number >= 1, got {self.future_window!r}")

    @classmethod
    def of(
        cls,
        *,
        max_delay: Duration = 0,
        idle_timeout: Duration = "10s",
        max_future: Duration | None = "1h",
        partition_idle_timeout: Duration = "10m",
        future_window: int = 1024,
    ) -> WatermarkConfig:
        return cls(
            max_delay=parse_duration(max_delay, name="watermark.max_delay"),
            idle_timeout=parse_duration(idle_timeout, name="watermark.idle_timeout"),
            max_future=None if max_future is None else parse_duration(max_future, name="watermark.max_future"),
            partition_idle_timeout=parse_duration(partition_idle_timeout, name="watermark.partition_idle_timeout"),
            future_window=future_window,
        )


class SourceClockSnapshot(msgspec.Struct, frozen=True, tag="source-clock/1"):
    max_event: int
    floor: int
    finished: bool
    partitions: dict[str, int] = {}
    """with ``partition_by``: each partition's newest event time"""
    combined: int = NO_WATERMARK
    """with ``partition_by``: the minimum over partitions last in force"""
    recent: list[int] = []
    """the last ``future_window`` event times, oldest first (they vote on the future check); empty in
    snapshots written before the vote existed: the watermark alone then judges until records come"""


@lazy_njit(cache=True, nogil=True)
def _assign(ts, max_event, floor, max_delay, max_future, check_future, future_ref):  # type: ignore[no-untyped-def]
    # check_future: how many recent records vote (0: no future check); future_ref: the event times that
    # vote, oldest first, before this batch (this batch's earlier records join them as it goes)
    n = ts.shape[0]
    wm = np.empty(n, np.int64)
    future = np.zeros(n, np.bool_)
    refs = np.empty(n, np.int64)  # what each future record was judged against, for its dead-letter reason
    n_future = 0
    n_hist = future_ref.shape[0]
    m = max_event
    for i in range(n):
        w = floor
        if m > NO_WATERMARK and m - max_delay > w:
            w = m - max_delay
        wm[i] = w
        if check_future > 0 and ts[i] > w + max_future:
            # ahead of the watermark: future only if more than half of the recent records are far behind it
            from_batch = min(i, check_future)
            from_hist = min(check_future - from_batch, n_hist)
            voters = from_batch + from_hist
            bar = ts[i] - max_future + max_delay
            low = w + max_delay  # voters at or below it cannot lift the reference above w
            behind = 0
            not_above = 0
            for j in range(i - from_batch, i):
                behind += ts[j] < bar
                not_above += ts[j] <= low
            for j in range(n_hist - from_hist, n_hist):
                behind += future_ref[j] < bar
                not_above += future_ref[j] <= low
            if voters == 0 or 2 * behind > voters:
                future[i] = True
                ref = w
                if voters and 2 * not_above <= voters:  # else the upper median is <= low: no need to find it
                    votes = np.concatenate((future_ref[n_hist - from_hist:], ts[i - from_batch:i]))
                    upper_median = np.partition(votes, voters // 2)[voters // 2]
                    if upper_median - max_delay > ref:
                        ref = upper_median - max_delay
                refs[n_future] = ref
                n_future += 1
                continue
        if ts[i] > m:
            m = ts[i]
    return wm, future, m, refs[:n_future]


def warm_up_assign() -> None:
    """Load (or compile) :func:`_assign` now, through :meth:`SourceClock.assign` on a throwaway clock, with
    the argument types a flow gives it (event times as polars hands them: read-only arrays; the voters
    of a first batch, then of the clock's history)."""
    import polars as pl

    clock = SourceClock(WatermarkConfig())
    far = 10**15  # far ahead of the first record: judged by the compiled loop
    for batch in ([0, far], [1, far + 1]):
        clock.assign(pl.Series(batch, dtype=pl.Int64).to_numpy(), 0)


def _assign_vectorised(
    ts: np.ndarray, max_event: int, floor: int, max_delay: int, max_future: int, check_future: int,
    voters: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray] | None:
    """:func:`_assign` with numpy when no record of the batch can be judged future (``None`` otherwise: the
    compiled loop then decides). numba stays unloaded for such batches.

    Without exclusions the newest event time before record ``i`` is a running maximum, so each record's
    watermark is vectorised. A record is judged future only when it is more than ``max_future`` ahead of its
    watermark *and* more than half of the records voting on it are behind ``ts[i] - max_future + max_delay``;
    when that bar is at or below every voter (the history and the whole batch: a superset of each record's
    voters), no vote can pass.
    """
    n = ts.shape[0]
    before = np.empty(n, np.int64)
    before[0] = max_event
    if n > 1:
        np.maximum.accumulate(ts[:-1], out=before[1:])
        np.maximum(before[1:], max_event, out=before[1:])
    ahead = before - max_delay
    wm = np.where((before > NO_WATERMARK) & (ahead > floor), ahead, floor)
    if check_future > 0:
        candidates = ts > wm + max_future
        if candidates.any():
            if voters.shape[0] == 0 and candidates[0]:
                return None  # the first record of a source with no history has no voter: it is judged on wm
            lowest = min(int(ts.min()), int(voters.min()) if voters.shape[0] else int(ts.min()))
            if int(ts[candidates].max()) - max_future + max_delay > lowest:
                return None
    return wm, np.zeros(n, np.bool_), max(max_event, int(ts.max())), np.empty(0, np.int64)


def _first_batch_voters(ts: np.ndarray, window: int) -> np.ndarray:
    """Before a source has any history, a sample of its first batch (up to ``window`` records, evenly
    spaced, in arrival order) stands in for it."""
    step = max(1, -(-ts.shape[0] // window))
    return np.ascontiguousarray(ts[::step][-window:], dtype=np.int64)


class SourceClock:
    """Event-time progress of one source."""

    def __init__(self, config: WatermarkConfig, snapshot: SourceClockSnapshot | None = None) -> None:
        self.config = config
        self.max_event = NO_WATERMARK if snapshot is None else snapshot.max_event
        self.floor = NO_WATERMARK if snapshot is None else snapshot.floor
        self.finished = False if snapshot is None else snapshot.finished
        self.last_arrival_us: int | None = None
        # the last `future_window` event times, oldest first: they vote on the future check
        recent = [] if snapshot is None else snapshot.recent[-config.future_window:]
        self.recent = np.asarray(recent, dtype=np.int64)
        # what each record the last batch flagged as future was judged against (the watermark, or the
        # recent records' upper median minus max_delay if higher), in row order: its dead-letter reason
        # reports the distance from it
        self.future_refs = np.empty(0, np.int64)

    @property
    def watermark(self) -> int:
        if self.max_event == NO_WATERMARK:
            return self.floor
        return max(self.floor, self.max_event - self.config.max_delay)

    def _voters(self, ts: np.ndarray) -> tuple[int, np.ndarray]:
        """The vote window (0: no future check) and the event times voting before this batch."""
        cfg = self.config
        if cfg.max_future is None:
            return 0, self.recent[:0]
        if self.recent.size == 0 and self.max_event == NO_WATERMARK and self.floor == NO_WATERMARK:
            return cfg.future_window, _first_batch_voters(ts, cfg.future_window)
        return cfg.future_window, self.recent

    def _remember(self, ts: np.ndarray) -> None:
        """Keep the last ``future_window`` event times (future ones included: they vote too)."""
        window = self.config.future_window
        if self.config.max_future is None:
            return
        if ts.shape[0] >= window:
            self.recent = np.array(ts[-window:], dtype=np.int64)
        else:
            self.recent = np.concatenate((self.recent[-(window - ts.shape[0]):], ts.astype(np.int64)))

    def assign(self, ts: np.ndarray, now_us: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-record watermarks and the mask of future-stamped records for a batch of event times."""
        cfg = self.config
        self.last_arrival_us = now_us
        if ts.size == 0:
            self.future_refs = np.empty(0, np.int64)
            return np.empty(0, np.int64), np.zeros(0, np.bool_)
        ts = np.ascontiguousarray(ts, dtype=np.int64)
        window, voters = self._voters(ts)
        args = (ts, self.max_event, self.floor, cfg.max_delay, cfg.max_future or 0, window, voters)
        # the compiled loop only for a batch where a record may be future: numba stays unloaded otherwise
        wm, future, m, refs = _assign_vectorised(*args) or _assign(*args)
        self.future_refs = refs
        self.max_event = int(m)
        self._remember(ts)
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
        return SourceClockSnapshot(max_event=self.max_event, floor=self.floor, finished=self.finished,
                                   recent=self.recent.tolist())

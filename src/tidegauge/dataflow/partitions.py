"""Per-partition watermarks: one source carrying several independent event-time streams.

A source fed by many producers (the edge receiver: every agent's records in one intake log) has one
event-time stream per producer. With one watermark for the whole source, a producer that was offline and
replays its backlog finds the watermark moved on by the others, and its records go to the late output.
``flow.source(src, partition_by="edge_node")`` (``partition_by:`` on a pipeline file's source) gives each
value of that column its own watermark, as Flink does for the partitions of a Kafka topic:

- the source's watermark is the **minimum over its partitions**, so a partition that is behind (an agent
  still offline, or replaying) holds back the windows until its data is in: its replayed records are on
  time, and the windows come out as if there had been no outage;
- a partition quiet for ``partition_idle_timeout`` of processing time (``WatermarkConfig``, default 10
  minutes) is **excluded** from the minimum, so a producer that is gone for good does not stop time; what it
  sends after that is judged against the others' watermark (late if older);
- the watermark never goes back: a new partition, or one coming back after being excluded, starts at the
  watermark in force.

Records from the future (:mod:`tidegauge.dataflow.watermark`) are judged per source, with one twist: a
record is a candidate only when it is more than ``max_future`` ahead of the source's watermark **and** of
its own partition's, and then the source's recent records (all partitions) vote on it. So a partition
holding the minimum far behind (a backlog being replayed, a slow gateway clock) does not make the other
partitions' current records look future, while a fast-clock device, or a whole partition stamped hours
ahead, is still outvoted by the rest of the source and dead-lettered.

The price: while a partition is quiet (up to ``partition_idle_timeout``), every window of the source waits
for it. The whole source's own idleness (``idle_timeout``) applies only after ``partition_idle_timeout``
too: an upstream that hears from no one (its own network down) keeps its windows open for the backlog.

>>> from tidegauge.dataflow.watermark import WatermarkConfig
>>> import numpy as np
>>> clock = PartitionedSourceClock(WatermarkConfig(max_delay=0, max_future=None), partition_by="node")
>>> import polars as pl
>>> _ = clock.assign_partitioned(np.array([10, 20]), pl.Series(["a", "b"]), now_us=0)
>>> _ = clock.assign_partitioned(np.array([50]), pl.Series(["b"]), now_us=1)
>>> clock.watermark  # held back by partition a
10
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl

from tidegauge._jit import lazy_njit
from tidegauge.dataflow.base import NO_WATERMARK
from tidegauge.dataflow.watermark import SourceClock, SourceClockSnapshot, WatermarkConfig

__all__ = ["PartitionedSourceClock"]

logger = logging.getLogger(__name__)


@lazy_njit(cache=True, nogil=True)
def _assign(ts, pid, pmax, active, combined, floor, max_delay, max_future, check_future, future_ref):  # type: ignore[no-untyped-def]
    # check_future / future_ref: the vote window and the voting event times, as in watermark._assign
    n = ts.shape[0]
    wm = np.empty(n, np.int64)
    future = np.zeros(n, np.bool_)
    refs = np.empty(n, np.int64)
    n_future = 0
    n_hist = future_ref.shape[0]
    no_wm = NO_WATERMARK
    for i in range(n):
        w = combined if combined > floor else floor
        wm[i] = w
        p = pid[i]
        if check_future > 0:
            # "ahead" of the partition's own watermark too: a partition behind the others (replaying, or a
            # slow clock holding the minimum) must not make the others' records look future
            own = pmax[p] - max_delay if pmax[p] != no_wm else w
            ahead_of = w if w > own else own
            if ts[i] > ahead_of + max_future:
                from_batch = min(i, check_future)
                from_hist = min(check_future - from_batch, n_hist)
                voters = from_batch + from_hist
                bar = ts[i] - max_future + max_delay
                low = ahead_of + max_delay  # voters at or below it cannot lift the reference above ahead_of
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
                    ref = ahead_of
                    if voters and 2 * not_above <= voters:  # else the upper median is <= low: no need to find it
                        votes = np.concatenate((future_ref[n_hist - from_hist:], ts[i - from_batch:i]))
                        upper_median = np.partition(votes, voters // 2)[voters // 2]
                        if upper_median - max_delay > ref:
                            ref = upper_median - max_delay
                    refs[n_future] = ref
                    n_future += 1
                    continue
        if ts[i] > pmax[p]:
            old = pmax[p]
            pmax[p] = ts[i]
            if old == no_wm or old - max_delay <= combined:
                # p may have been the one holding the minimum: recompute it over the active partitions
                low = no_wm
                for q in range(pmax.shape[0]):
                    if active[q] and pmax[q] != no_wm:
                        mark = pmax[q] - max_delay
                        if low == no_wm or mark < low:
                            low = mark
                if low > combined:
                    combined = low
    return wm, future, combined, refs[:n_future]


class PartitionedSourceClock(SourceClock):
    """A :class:`SourceClock` keeping one watermark per value of ``partition_by`` (see the module docstring)."""

    def __init__(self, config: WatermarkConfig, snapshot: SourceClockSnapshot | None = None, *,
                 partition_by: str) -> None:
        super().__init__(config, snapshot)
        self.partition_by = partition_by
        self._ids: dict[Any, int] = {}
        self._max = np.empty(0, np.int64)
        self._seen = np.empty(0, np.int64)  # processing time of each partition's last record (or restore)
        self._restored_pending = False
        self._enum: pl.Enum | None = None
        self.combined = NO_WATERMARK
        if snapshot is not None:
            for value, top in snapshot.partitions.items():
                self._add(value, top, NO_WATERMARK)
            self.combined = snapshot.combined
            self._restored_pending = bool(snapshot.partitions)  # their idle time counts from the first `now`

    def _add(self, value: Any, top: int, now_us: int) -> int:
        i = self._ids[value] = len(self._ids)
        self._max = np.append(self._max, np.int64(top))
        self._seen = np.append(self._seen, np.int64(now_us))
        return i

    def _touch_restored(self, now_us: int) -> None:
        if self._restored_pending:
            self._seen[:] = now_us
            self._restored_pending = False

    @property
    def watermark(self) -> int:
        return max(self.floor, self.combined)

    @property
    def partitions(self) -> dict[str, int]:
        """Each partition's watermark (``max event - max_delay``), for tests and metrics."""
        return {str(v): int(self._max[i]) - self.config.max_delay for v, i in self._ids.items()}

    def _active(self, now_us: int) -> np.ndarray:
        return np.asarray(now_us - self._seen < self.config.partition_idle_timeout, dtype=np.bool_)

    def _partition_ids(self, partitions: pl.Series | None, n: int, now_us: int) -> np.ndarray:
        if partitions is None:
            i = self._ids.get("")
            return np.full(n, self._add("", NO_WATERMARK, now_us) if i is None else i, np.int64)
        values = partitions.cast(pl.String).fill_null("")
        # an Enum's physical codes are the partition ids (category i is partition i): ~20 ns a row
        if self._enum is not None:
            try:
                return values.cast(self._enum).to_physical().to_numpy().astype(np.int64)
            except pl.exceptions.InvalidOperationError:
                pass  # a partition not seen before: rare
        for value in values.unique().to_list():
            if value not in self._ids:
                self._add(value, NO_WATERMARK, now_us)
        self._enum = pl.Enum(list(self._ids))
        return values.cast(self._enum).to_physical().to_numpy().astype(np.int64)

    def assign_partitioned(self, ts: np.ndarray, partitions: pl.Series | None,
                           now_us: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-record watermarks and the future mask, each record's partition given by ``partitions``
        (its ``partition_by`` values; ``None``: the column is missing, one partition)."""
        cfg = self.config
        self._touch_restored(now_us)
        self.last_arrival_us = now_us
        if ts.size == 0:
            self.future_refs = np.empty(0, np.int64)
            return np.empty(0, np.int64), np.zeros(0, np.bool_)
        pid = self._partition_ids(partitions, ts.shape[0], now_us)
        present = np.bincount(pid, minlength=len(self._ids)) > 0
        active = self._active(now_us) | present  # a partition sending now is active
        ts = np.ascontiguousarray(ts, dtype=np.int64)
        window, voters = self._voters(ts)
        wm, future, combined, refs = _assign(ts, pid, self._max, active, self.combined, self.floor,
                                             cfg.max_delay, cfg.max_future or 0, window, voters)
        self.combined = int(combined)
        self.future_refs = refs
        self._remember(ts)
        self._seen[present] = now_us
        kept = ts[~future]
        if kept.size:
            self.max_event = max(self.max_event, int(kept.max()))
        return wm, future

    def assign(self, ts: np.ndarray, now_us: int) -> tuple[np.ndarray, np.ndarray]:
        return self.assign_partitioned(ts, None, now_us)

    def on_idle(self, now_us: int) -> None:
        """Drop partitions quiet for ``partition_idle_timeout`` from the minimum; past that, the whole source
        idles as a plain one does (its event time follows the wall clock)."""
        if self.last_arrival_us is None:
            self.last_arrival_us = now_us
        self._touch_restored(now_us)
        active = self._active(now_us) & (self._max != NO_WATERMARK)
        if active.any():
            low = int((self._max[active] - self.config.max_delay).min())
            if low > self.combined:
                self.combined = low
        if self.finished or self.max_event == NO_WATERMARK:
            return
        quiet = now_us - self.last_arrival_us
        if quiet >= max(self.config.idle_timeout, self.config.partition_idle_timeout):
            advanced = self.max_event - self.config.max_delay + quiet
            if advanced > self.floor:
                self.floor = advanced

    def snapshot(self) -> SourceClockSnapshot:
        return SourceClockSnapshot(max_event=self.max_event, floor=self.floor, finished=self.finished,
                                   partitions={str(v): int(self._max[i]) for v, i in self._ids.items()},
                                   combined=self.combined, recent=self.recent.tolist())

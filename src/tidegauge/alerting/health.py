"""``RunnerHealthSource``: the flow's own health as a stream of records, so alert rules can watch it.

Once :meth:`RunnerHealthSource.attach` has bound it to the :class:`~tidegauge.dataflow.Runner` it reports
on, the source emits one record every ``interval`` of processing time with the runner's figures over that
interval:

=========================  ====================================================================================
``flow``                   the flow's name (the key column of these records)
``timestamp``              processing time of the record (UTC)
``processing_latency_ms``  p99 of the batch processing latency over the interval, estimated from the runner's
                           latency histogram as Prometheus' ``histogram_quantile`` does (linear within a
                           bucket); ``null`` when no batch was processed
``batch_mean_ms``          mean batch processing latency over the interval (exact); ``null`` with no batch
``batches``                batches processed in the interval
``readings_per_s``         records the flow's other sources handed over, per second
``dead_letters_per_s``     records dead-lettered, per second
``late_per_s``             records too late for their window, per second
``watermark_lag_s``        processing time minus the flow's watermark (``null`` before there is one)
``queue_depth``            batches waiting between the sources and the graph
``checkpoint_age_s``       seconds since the last checkpoint (``null`` before the first, or without any)
=========================  ====================================================================================

The default rule ``ProcessingLatencyHigh`` (``processing_latency_ms > 100``) is evaluated on these records
when a pipeline file's ``alerts.streams`` lists ``health``. The source ends once every other source of the
flow is exhausted, so a finite run still finishes. Its records are stamped with processing time: in a flow
replaying data stamped *ahead* of the wall clock they would hold the flow's watermark back; use it with
live or historical data.

>>> from tidegauge.dataflow.metrics import LatencyHistogram
>>> h = LatencyHistogram()
>>> for _ in range(99): h.observe(0.003)
>>> h.observe(0.2)
>>> round(histogram_quantile(0.99, h.bounds, h.counts), 4)
0.005
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import polars as pl

from tidegauge._time import Clock, Duration, SystemClock, parse_duration
from tidegauge.connectors.base import Guarantee
from tidegauge.dataflow.base import END_OF_TIME, NO_WATERMARK

__all__ = ["HEALTH_SCHEMA", "RunnerHealthSource", "histogram_quantile"]

logger = logging.getLogger(__name__)

HEALTH_SCHEMA: dict[str, pl.DataType] = {
    "processing_latency_ms": pl.Float64(), "batch_mean_ms": pl.Float64(), "batches": pl.Int64(),
    "readings_per_s": pl.Float64(), "dead_letters_per_s": pl.Float64(), "late_per_s": pl.Float64(),
    "watermark_lag_s": pl.Float64(), "queue_depth": pl.Int64(), "checkpoint_age_s": pl.Float64(),
}
"""The value columns of a health record (besides the key and time columns)."""


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The ``q`` quantile of a histogram with upper bounds ``bounds`` and per-bucket ``counts``.

    ``counts`` has one more entry than ``bounds`` (the ``+Inf`` bucket). As Prometheus does, the value is
    interpolated linearly inside its bucket (from 0 for the first), and a quantile in the ``+Inf`` bucket
    is the largest finite bound. ``None`` for an empty histogram.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n and below + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            return lower + (float(bounds[i]) - lower) * (rank - below) / n
        below += n
    return float(bounds[-1])


class RunnerHealthSource:
    """A source of one health record per ``interval`` about the runner it is attached to.

    Parameters
    ----------
    interval:
        Processing time between two records (and the span each record's rates and latency cover).
    key_column, time_column:
        Names of the records' key (the flow's name) and time columns; pass the same names to
        ``flow.source(health, key=..., time=...)``.
    name:
        The source's node id in the flow.
    clock:
        Processing-time clock; by default the attached runner's.

    Call :meth:`attach` with the runner before running it (building the source's logic fails otherwise).
    """

    guarantee: Guarantee = "at-most-once"
    snapshot_type = None

    def __init__(
        self,
        *,
        interval: Duration = "1s",
        key_column: str = "flow",
        time_column: str = "timestamp",
        name: str = "health",
        clock: Clock | None = None,
    ) -> None:
        self.interval_us = parse_duration(interval, name="interval")
        if self.interval_us <= 0:
            raise ValueError(f"interval={interval!r}: must be positive, e.g. '1s'")
        self.key_column = key_column
        self.time_column = time_column
        self.name = name
        self.clock = clock
        self.runner: Any = None

    def attach(self, runner: Any) -> None:
        """Report on ``runner`` (a :class:`~tidegauge.dataflow.Runner` whose flow has this source)."""
        ids = [nid for nid, n in runner.flow.nodes.items() if n.kind == "source" and n.definition is self]
        if not ids:
            raise ValueError("attach(runner): this RunnerHealthSource is not a source of the runner's flow; "
                             "add it with flow.source(health) first")
        self.runner = runner
        self._node_id = ids[0]

    def build(self, resume_state: Any | None) -> _HealthLogic:
        if self.runner is None:
            raise ValueError("RunnerHealthSource: call health.attach(runner) before running the flow")
        return _HealthLogic(self, self.runner, self._node_id, self.clock or self.runner.clock)


class _HealthLogic:
    def __init__(self, d: RunnerHealthSource, runner: Any, node_id: str, clock: Clock) -> None:
        self.d = d
        self.runner = runner
        self.node_id = node_id
        self.clock = clock or SystemClock()
        self.closed = False
        self._prev = self._read()
        self._prev_at = self.clock.now_us()

    def _read(self) -> tuple[list[int], float, int, int, int, int]:
        m = self.runner.metrics
        others = sum(n for sid, n in m.records_in.items() if sid != self.node_id)
        return (list(m.batch_seconds.counts), m.batch_seconds_total, m.batches, others,
                m.dead_letters_total, m.late_total)

    def _others_finished(self) -> bool:
        finished = self.runner.sources_finished()
        others = [done for sid, done in finished.items() if sid != self.node_id]
        return bool(others) and all(others)

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        if self.closed or self._others_finished():
            return None
        due = self._prev_at + self.d.interval_us
        now = self.clock.now_us()
        if now < due:
            # wake at least every max_delay to notice the other sources ending, at most at the due time
            await asyncio.sleep(min((due - now) / 1e6, max(max_delay_s, 0.05)))
            now = self.clock.now_us()
            if now < due:
                return pl.DataFrame()
        return self._record(now)

    def _record(self, now: int) -> pl.DataFrame:
        counts, seconds, batches, records, dead, late = cur = self._read()
        p_counts, p_seconds, p_batches, p_records, p_dead, p_late = self._prev
        span_s = max(1e-6, (now - self._prev_at) / 1e6)
        self._prev, self._prev_at = cur, now
        n = batches - p_batches
        p99 = histogram_quantile(0.99, self.runner.metrics.batch_seconds.bounds,
                                 [a - b for a, b in zip(counts, p_counts, strict=True)])
        m = self.runner.metrics
        wm = m.watermark_us
        last_cp = m.last_checkpoint_at_us
        row: dict[str, Any] = {
            self.d.key_column: self.runner.flow.name,
            self.d.time_column: now,
            "processing_latency_ms": None if p99 is None else p99 * 1e3,
            "batch_mean_ms": (seconds - p_seconds) / n * 1e3 if n > 0 else None,
            "batches": n,
            "readings_per_s": (records - p_records) / span_s,
            "dead_letters_per_s": (dead - p_dead) / span_s,
            "late_per_s": (late - p_late) / span_s,
            "watermark_lag_s": None if wm is None or not NO_WATERMARK < wm < END_OF_TIME else (now - wm) / 1e6,
            "queue_depth": m.queue_depth,
            "checkpoint_age_s": None if last_cp is None else (now - last_cp) / 1e6,
        }
        schema = {self.d.key_column: pl.String(), self.d.time_column: pl.Int64(), **HEALTH_SCHEMA}
        df = pl.DataFrame([row], schema=schema, orient="row")
        return df.with_columns(pl.col(self.d.time_column).cast(pl.Datetime("us", "UTC")))

    def snapshot(self) -> None:
        return None

    async def ack(self, position: Any) -> None:
        return None

    async def close(self) -> None:
        self.closed = True

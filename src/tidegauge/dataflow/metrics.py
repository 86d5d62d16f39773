"""Counters a running flow keeps about itself (exported by the server as Prometheus metrics)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["BATCH_BUCKETS", "FlowMetrics", "LatencyHistogram", "reason_class"]

BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the batch-latency histogram: from a tiny idle batch to a slow 65k-row one."""


@dataclass
class LatencyHistogram:
    """Cumulative-export histogram with fixed buckets (Prometheus semantics: ``le`` upper bounds).

    >>> h = LatencyHistogram(); h.observe(0.003); h.observe(2.0)
    >>> h.count, h.cumulative()[3], h.cumulative()[-1]
    (2, (0.005, 1), (inf, 2))
    """

    bounds: tuple[float, ...] = BATCH_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        i = 0
        while i < len(self.bounds) and seconds > self.bounds[i]:
            i += 1
        self.counts[i] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def reason_class(reason: str) -> str:
    """The stable part of a dead-letter reason (before the first ':'), for low-cardinality counters."""
    return reason.split(":", 1)[0].strip()


@dataclass
class FlowMetrics:
    """Running totals; all counts since the process started (not restored from checkpoints)."""

    records_in: Counter[str] = field(default_factory=Counter)
    records_out: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    late: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    batch_seconds_total: float = 0.0
    batch_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)
    checkpoints: int = 0
    last_checkpoint_seconds: float = 0.0
    last_checkpoint_bytes: int = 0
    last_checkpoint_at_us: int | None = None
    watermark_us: int | None = None
    queue_depth: int = 0

    @property
    def dead_letters_total(self) -> int:
        return sum(self.dead_letters.values())

    @property
    def late_total(self) -> int:
        return sum(self.late.values())

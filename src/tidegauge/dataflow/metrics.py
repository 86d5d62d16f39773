"""Counters a running flow keeps about itself (exported by the server as Prometheus metrics)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["FlowMetrics", "reason_class"]


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

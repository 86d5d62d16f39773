"""Shared helpers for the alerting tests: a recording notifier and reading frames on a manual clock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from tidegauge._time import ManualClock

S = 1_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z


class Recorder:
    """A notifier keeping (time, payload) of every delivered notification; can be told to fail."""

    def __init__(self, name: str = "rec", clock: ManualClock | None = None, *, send_resolved: bool = True) -> None:
        self.name = name
        self.send_resolved = send_resolved
        self.clock = clock
        self.sent: list[tuple[int, dict[str, Any]]] = []
        self.fail = False
        self.attempts = 0

    def send(self, payload: Mapping[str, Any]) -> None:
        self.attempts += 1
        if self.fail:
            raise ConnectionError("receiver down")
        now = self.clock.now_us() if self.clock else 0
        self.sent.append((now, dict(payload)))

    def summary(self) -> list[tuple[int, str, list[tuple[str, str]]]]:
        """(seconds after T0, status, [(sensor_id or alertname, alert status)])."""
        return [
            ((t - T0) // S, p["status"],
             [(a["labels"].get("sensor_id", a["labels"]["alertname"]), a["status"]) for a in p["alerts"]])
            for t, p in self.sent
        ]


def batch(rows: dict[str, float], *, t_us: int, column: str = "temperature", **extra: list[Any]) -> pl.DataFrame:
    """One reading per sensor at event time ``t_us``."""
    data: dict[str, Any] = {
        "sensor_id": list(rows),
        "timestamp": pl.Series([t_us] * len(rows), dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
        column: list(rows.values()),
    }
    data.update(extra)
    return pl.DataFrame(data)

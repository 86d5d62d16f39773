"""A sink for the ingest benchmarks: counts rows and records ``now - sent_at`` (publish-to-output latency)."""

from __future__ import annotations

import time
from typing import Any


class LatencySink:
    """Keeps each row's latency from its ``sent_at`` column (seconds since the epoch) to when it arrives here."""

    guarantee = "at-least-once"
    snapshot_type = None
    name = "latency"

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.rows = 0

    def build(self, resume_state: Any) -> LatencySink:
        return self

    async def write_batch(self, df: Any) -> None:
        self.rows += df.height
        if "sent_at" in df.columns:
            now = time.time()
            self.lat.extend((now - df["sent_at"].drop_nulls()).to_list())

    async def pre_commit(self, epoch: int) -> None: ...
    async def commit(self, epoch: int) -> None: ...
    def snapshot(self) -> None: ...
    async def close(self) -> None: ...

"""Testing helpers: an in-memory source and sink (like Bytewax's ``TestingSource``/``TestingSink``).

>>> import polars as pl
>>> src = MemorySource(pl.DataFrame({"x": [1, 2, 3]}), batch_rows=2)
>>> sink = MemorySink()
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

import msgspec
import polars as pl

from tidegauge.connectors.base import Guarantee

__all__ = ["MemorySink", "MemorySinkSnapshot", "MemorySource", "MemorySourceSnapshot"]


class MemorySourceSnapshot(msgspec.Struct, frozen=True, tag="memory-source/1"):
    offset: int


class MemorySource:
    """Hands out the rows of a DataFrame (or a list of frames, one batch each) in order; replayable.

    With ``batch_rows``, cuts the frame into batches of that many rows (also bounded by the runner's
    ``max_batch``). ``stay_open=True`` keeps the source alive (returning empty batches) after the data,
    to test idle behaviour.
    """

    guarantee: Guarantee = "exactly-once"
    snapshot_type = MemorySourceSnapshot

    def __init__(
        self,
        data: pl.DataFrame | Sequence[pl.DataFrame],
        *,
        batch_rows: int | None = None,
        name: str | None = None,
        stay_open: bool = False,
    ) -> None:
        self.frames = [data] if isinstance(data, pl.DataFrame) else list(data)
        self.batch_rows = batch_rows
        self.name = name
        self.stay_open = stay_open

    def build(self, resume_state: MemorySourceSnapshot | None) -> _MemorySourceLogic:
        return _MemorySourceLogic(self, 0 if resume_state is None else resume_state.offset)


class _MemorySourceLogic:
    def __init__(self, d: MemorySource, offset: int) -> None:
        self.d = d
        self.offset = offset
        # batches as (start, length) over the concatenation, cut on frame boundaries and batch_rows
        self._bounds: list[tuple[int, int]] = []
        start = 0
        for f in d.frames:
            step = d.batch_rows or max(f.height, 1)
            for i in range(0, f.height, step):
                self._bounds.append((start + i, min(step, f.height - i)))
            start += f.height
        self._all = pl.concat(d.frames, how="diagonal_relaxed") if d.frames else pl.DataFrame()

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        for start, length in self._bounds:
            if start + length > self.offset:
                begin = max(start, self.offset)
                n = min(start + length - begin, max_rows)
                self.offset = begin + n
                return self._all.slice(begin, n)
        if self.d.stay_open:
            await asyncio.sleep(max_delay_s)
            return self._all.clear()
        return None

    def snapshot(self) -> MemorySourceSnapshot:
        return MemorySourceSnapshot(self.offset)

    async def ack(self, position: object) -> None:
        return None

    async def close(self) -> None:
        return None


class MemorySinkSnapshot(msgspec.Struct, frozen=True, tag="memory-sink/1"):
    committed_batches: int


class MemorySink:
    """Collects batches in memory. Transactional: ``committed`` holds only checkpointed output."""

    guarantee: Guarantee = "exactly-once"
    snapshot_type = MemorySinkSnapshot

    def __init__(self, *, name: str | None = None) -> None:
        self.name = name
        self.frames: list[pl.DataFrame] = []
        self._pending_upto = 0
        self.committed = 0
        self.closed = False

    def build(self, resume_state: MemorySinkSnapshot | None) -> MemorySink:
        if resume_state is not None:
            del self.frames[resume_state.committed_batches:]
            self.committed = self._pending_upto = resume_state.committed_batches
        return self

    async def write_batch(self, df: pl.DataFrame) -> None:
        self.frames.append(df)

    async def pre_commit(self, epoch: int) -> None:
        self._pending_upto = len(self.frames)

    async def commit(self, epoch: int) -> None:
        self.committed = self._pending_upto

    def snapshot(self) -> MemorySinkSnapshot:
        return MemorySinkSnapshot(self._pending_upto)

    async def close(self) -> None:
        self.closed = True

    def to_frame(self, *, order: Literal["arrival"] = "arrival") -> pl.DataFrame:
        """Everything written so far, in arrival order."""
        return pl.concat(self.frames, how="diagonal_relaxed") if self.frames else pl.DataFrame()

"""A source of simulated IoT fleet readings (see :mod:`tidegauge.simulate`).

Replayable, hence ``exactly-once``: its snapshot (a :class:`~tidegauge.simulate.FleetSnapshot`)
restores the exact same continuation, so a restarted pipeline sees the same rows again.
"""

from __future__ import annotations

import asyncio
import logging

import polars as pl

from tidegauge._time import Clock, SystemClock
from tidegauge.connectors.base import Guarantee
from tidegauge.simulate import READING_SCHEMA, FleetConfig, FleetSimulator, FleetSnapshot

__all__ = ["SimulatorSource", "SimulatorSourceLogic"]

logger = logging.getLogger(__name__)

_MAX_SLEEP_S = 0.05
"""Longest single sleep while paced: re-reads the clock often enough for a clock that jumps."""


class SimulatorSourceLogic:
    """Running state of a :class:`SimulatorSource` (built by ``SimulatorSource.build``)."""

    def __init__(self, sim: FleetSimulator, *, limit: int | None, paced: bool, clock: Clock) -> None:
        self._sim = sim
        self._limit = limit
        self._paced = paced
        self._clock = clock
        # Pacing is anchored at build: the next row is due now, later ones every 1/rate seconds after.
        # With start "now" this makes event time equal wall time; after a restore it avoids a burst.
        # The offset itself is worked out at the first batch: the next row's schedule means generating a
        # block of rows (~10 MB), which a source that never emits (limit reached) should not hold.
        self._built_us = clock.now_us()
        self._offset: int | None = None if paced else 0

    def _remaining(self, max_rows: int) -> int:
        if self._limit is None:
            return max_rows
        return max(0, min(max_rows, self._limit - self._sim.rows_emitted))

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        """Up to ``max_rows`` rows; ``None`` once ``limit`` rows were handed out.

        Unpaced, returns at once. Paced, returns the rows whose scheduled time has come, waiting up to
        ``max_delay_s`` (measured on the event loop's monotonic time) for the first and then up to
        ``max_delay_s`` more for the batch to fill.
        """
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows} must be >= 1")
        want = self._remaining(max_rows)
        if want == 0:
            return None
        if not self._paced:
            return self._sim.next_batch(want)
        if self._offset is None:
            self._offset = self._built_us - self._sim.next_due_us()
        offset = self._offset
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_delay_s
        got_first = False
        while True:
            now = self._clock.now_us()
            due = self._sim.rows_due(now - offset, want)
            if due and not got_first:
                got_first = True
                deadline = loop.time() + max_delay_s
            left = deadline - loop.time()
            if due == want or left <= 0:
                break
            # Sleep until the next row is due, the deadline, or the poll bound, whichever is first.
            next_due_s = (self._sim.next_due_us(due) + offset - now) / 1e6
            await asyncio.sleep(max(0.0, min(next_due_s, left, _MAX_SLEEP_S)))
        if due == 0:
            return READING_SCHEMA.to_frame()
        return self._sim.next_batch(due)

    def snapshot(self) -> FleetSnapshot:
        """The simulator's position after the last row handed out."""
        return self._sim.snapshot()

    async def ack(self, epoch: int) -> None:
        """Nothing to acknowledge: the simulator is replayable."""

    async def close(self) -> None:
        """Nothing to release."""


class SimulatorSource:
    """Readings from a simulated IoT fleet.

    Parameters
    ----------
    config:
        The fleet (see :class:`~tidegauge.simulate.FleetConfig`).
    limit:
        Stop after this many rows (``None``: never).
    paced:
        Hand out rows only when their scheduled time comes (``config.rate`` rows per second),
        sleeping via asyncio; otherwise as fast as asked.
    clock:
        Processing-time clock used for pacing.

    Examples
    --------
    >>> import asyncio
    >>> src = SimulatorSource(FleetConfig(sensors=3, seed=1), limit=5)
    >>> logic = src.build(None)
    >>> asyncio.run(logic.next_batch(10, 0.0)).height
    5
    >>> asyncio.run(logic.next_batch(10, 0.0)) is None
    True
    """

    name: str = "simulator"
    snapshot_type: type | None = FleetSnapshot
    guarantee: Guarantee = "exactly-once"

    def __init__(
        self,
        config: FleetConfig,
        *,
        limit: int | None = None,
        paced: bool = False,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(config, FleetConfig):
            raise TypeError(f"config must be a FleetConfig, got {type(config).__name__}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit={limit!r} must be None or an int >= 0")
        self.config = config
        self.limit = limit
        self.paced = paced
        self.clock: Clock = clock or SystemClock()

    def build(self, resume_state: FleetSnapshot | None) -> SimulatorSourceLogic:
        """Fresh logic, or logic continuing exactly from ``resume_state``."""
        if resume_state is None:
            sim = FleetSimulator(self.config)
        else:
            sim = FleetSimulator.restore(self.config, resume_state)
        return SimulatorSourceLogic(sim, limit=self.limit, paced=self.paced, clock=self.clock)

"""An agent following the coordinator's assignment (``tidegauge agent --follow-assignment``).

:class:`AssignmentView` sits between the heartbeat loop, which stores each :class:`Assignment` it gets, and
the flow, whose first step (:meth:`AssignmentView.keep_assigned`) keeps only the readings of the sensors
the agent may process. The rules that make the coordinator's handover safe (no sensor on two agents at
once) are kept here:

- **nothing before an assignment**: a following agent processes no sensor until the coordinator has
  answered (an upstream without a coordinator answers 404: then it processes all, as without the flag);
- **the lease**: when no heartbeat got an answer for ``lease_s`` (counted from sending the last one that
  did), it processes nothing, because by then the coordinator has declared it offline and may have handed
  its sensors to another agent;
- **acknowledge what the flow applies**: heartbeats report the set and generation the flow has applied
  (:attr:`AssignmentView.applied_sensors`), not merely received, so the coordinator hands a sensor on only
  once this agent's flow has stopped taking its readings.

Every change of the applied set is appended to ``log`` (``<data-dir>/assignments.jsonl``), one JSON object
a line: ``wall_us`` and ``mono_ns`` (when the flow applied it; ``CLOCK_MONOTONIC``, comparable between
processes of one machine), ``generation``, ``sensors`` (``null``: all) and ``event_from_us`` (the event
time from which the agent's readings fall under it: the first of the batch it was applied to). It is the
agent's own account of what it processed when: an audit trail of handovers.

>>> import polars as pl
>>> from tidegauge.edge.heartbeat import Assignment
>>> view = AssignmentView(follow=True)
>>> df = pl.DataFrame({"sensor_id": ["a", "b"], "timestamp": [1, 2]})
>>> view.keep_assigned(df).height  # no assignment yet: nothing
0
>>> view.received(Assignment(node_id="gw", generation=1, sensors=["b"]), sent_at=view.clock())
>>> view.keep_assigned(df)["sensor_id"].to_list(), view.applied_generation
(['b'], 1)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidegauge.edge.heartbeat import Assignment

__all__ = ["AssignmentView"]

logger = logging.getLogger(__name__)


@dataclass
class AssignmentView:
    """The coordinator's latest :class:`Assignment` and what the flow applies of it (see the module docstring).

    ``clock`` is monotonic seconds (for the lease); ``log`` the file the applied changes are appended to.
    """

    follow: bool = False
    assignment: Assignment | None = None
    log: Path | None = None
    clock: Callable[[], float] = time.monotonic
    time_column: str = "timestamp"
    key_column: str = "sensor_id"
    no_coordinator: bool = False
    """the upstream answered 404 (no coordinator): a following agent processes everything"""
    skipped: int = 0
    """readings dropped because another agent has their sensor (or none yet)"""
    processed: int = 0
    """readings kept"""
    ok_sent_at: float | None = None
    applied_generation: int = 0
    _applied: frozenset[str] | None = field(default=None, repr=False)
    _applied_once: bool = field(default=False, repr=False)
    _high_water_us: int | None = field(default=None, repr=False)

    def received(self, assignment: Assignment, *, sent_at: float) -> None:
        """The heartbeat sent at ``sent_at`` (``clock`` seconds) was answered with ``assignment``."""
        self.assignment = assignment
        self.ok_sent_at = sent_at
        self.no_coordinator = False

    def wanted(self) -> tuple[int, frozenset[str] | None]:
        """The generation and sensors to process now (``None``: every sensor)."""
        if not self.follow or self.no_coordinator:
            return 0, None
        a = self.assignment
        if a is None:
            return 0, frozenset()
        if a.lease_s > 0 and self.ok_sent_at is not None and self.clock() - self.ok_sent_at > a.lease_s:
            return a.generation, frozenset()  # the lease lapsed: the coordinator may have given them away
        return a.generation, frozenset(a.sensors)

    @property
    def applied_sensors(self) -> list[str]:
        """The sensors the flow processes now, as the heartbeat reports them (``[]`` when not following)."""
        return sorted(self._applied) if self.follow and self._applied is not None else []

    def active(self) -> Assignment | None:
        """The received assignment while following one (``None`` otherwise)."""
        a = self.assignment
        return a if self.follow and not self.no_coordinator and a is not None else None

    def keep_assigned(self, df: Any) -> Any:
        """The readings of ``df`` whose sensor this agent may process now (the flow's first step)."""
        import polars as pl

        generation, want = self.wanted()
        if not self._applied_once or want != self._applied or generation != self.applied_generation:
            self._apply(generation, want, df)
        if df.height and self.time_column in df.columns:
            top = df[self.time_column].cast(pl.Int64).max()
            if top is not None and (self._high_water_us is None or top > self._high_water_us):
                self._high_water_us = int(top)
        if want is None:
            self.processed += df.height
            return df
        out = df.filter(pl.col(self.key_column).is_in(list(want))) if want else df.clear()
        self.skipped += df.height - out.height
        self.processed += out.height
        return out

    def _apply(self, generation: int, want: frozenset[str] | None, df: Any) -> None:
        import polars as pl

        self._applied, self.applied_generation, self._applied_once = want, generation, True
        if not self.follow:
            return
        first = None
        if df.height and self.time_column in df.columns:
            first = df[self.time_column].cast(pl.Int64).min()
        if first is None:  # an empty batch: the next readings come after everything seen so far
            first = 0 if self._high_water_us is None else self._high_water_us + 1
        logger.info("processing %s sensors (generation %d)", "all" if want is None else len(want), generation)
        if self.log is not None:
            line = {"wall_us": time.time_ns() // 1000, "mono_ns": time.monotonic_ns(), "generation": generation,
                    "sensors": None if want is None else sorted(want), "event_from_us": int(first)}
            with open(self.log, "a") as f:  # a few lines per handover: opened each time, never left half written
                f.write(json.dumps(line) + "\n")

    def keep_edge_detection(self, df: Any) -> Any:
        """The anomalies of sensors whose detection runs on the edge (the others are detected upstream)."""
        import polars as pl

        a = self.active()
        if a is None or not a.detection or not df.height:
            return df
        cloud = [s for s, where in a.detection.items() if where == "cloud"]
        return df.filter(~pl.col(self.key_column).is_in(cloud)) if cloud else df

"""The coordinator inside the upstream flow: heartbeat records in, sensor discovery and the cloud-side filter.

- :class:`EdgeHeartbeatSource` emits one record per heartbeat received and one per agent going offline,
  with the columns the default edge alert rules use (``node_id``, ``timestamp``, ``heartbeat``, ``status``,
  ``availability``, ``battery_pct``, ``cpu_pct``, ``memory_pct``, ``outbox_depth``, ...). Offline records
  have ``heartbeat = false`` and no machine figures, so the ``EdgeNodeOffline`` no-data rule (which counts
  ``heartbeat`` rows) keeps seeing silence. Heartbeats are live state, not history: the source is
  at-most-once (records not yet in a checkpoint when the server stops are not replayed).
- :class:`CloudOnlyStep` keeps the readings of sensors whose detection runs upstream (the
  ``edge_or_cloud`` policy said ``cloud``); put it before a ``detect`` step.
- :class:`SensorDiscoveryStep` adds the sensors seen in readings (with their coordinates) to the
  coordinator's catalog, for fleets not listed in the config.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import polars as pl

from tidegauge.dataflow.base import StepContext

if TYPE_CHECKING:
    from tidegauge.connectors.base import Guarantee
    from tidegauge.edge.coordinator import Coordinator

__all__ = ["HEARTBEAT_SCHEMA", "CloudOnlyStep", "EdgeHeartbeatSource", "SensorDiscoveryStep", "flow_coordinator"]

logger = logging.getLogger(__name__)

HEARTBEAT_SCHEMA: dict[str, pl.DataType] = {
    "node_id": pl.String(), "timestamp": pl.Datetime("us", "UTC"), "heartbeat": pl.Boolean(),
    "status": pl.String(), "availability": pl.Float64(), "battery_pct": pl.Float64(), "cpu_pct": pl.Float64(),
    "memory_pct": pl.Float64(), "disk_pct": pl.Float64(), "outbox_depth": pl.Int64(),
    "outbox_age_s": pl.Float64(), "load": pl.Float64(), "link": pl.String(), "sensors": pl.Int64(),
    "generation": pl.Int64(),
}

_POLL_S = 0.05
"""How often a waiting source looks for new records and offline agents: far finer than any heartbeat
timeout worth configuring, and a look costs microseconds."""


def flow_coordinator(flow: Any) -> Coordinator | None:
    """The coordinator of ``flow``'s :class:`EdgeHeartbeatSource`, if it has one (a ``coordinator:`` section)."""
    return next((n.definition.coordinator for n in flow.nodes.values()
                 if isinstance(n.definition, EdgeHeartbeatSource)), None)


def heartbeat_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Heartbeat records as a frame of :data:`HEARTBEAT_SCHEMA` (``timestamp`` given in microseconds)."""
    if not rows:
        return pl.DataFrame(schema=HEARTBEAT_SCHEMA)
    schema = {**HEARTBEAT_SCHEMA, "timestamp": pl.Int64()}
    return pl.DataFrame(rows, schema=schema, orient="row").with_columns(
        pl.col("timestamp").cast(pl.Datetime("us", "UTC")))


class _HeartbeatLogic:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.closed = False

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_delay_s
        while True:
            rows = self.coordinator.drain_records(max_rows)
            left = deadline - loop.time()
            if rows or left <= 0 or self.closed:
                return heartbeat_frame(rows)
            await asyncio.sleep(min(_POLL_S, left))

    def snapshot(self) -> None:
        return None

    async def ack(self, position: Any) -> None:
        """Nothing to acknowledge: heartbeats are not replayed."""

    async def close(self) -> None:
        self.closed = True
        self.coordinator.unsubscribe()


class EdgeHeartbeatSource:
    """Heartbeat and offline records of a :class:`~tidegauge.edge.coordinator.Coordinator`.

    Use it with ``key="node_id"``: ``flow.source(EdgeHeartbeatSource(coordinator), key="node_id")``.
    """

    snapshot_type: type | None = None
    guarantee: Guarantee = "at-most-once"

    def __init__(self, coordinator: Coordinator, *, name: str = "edge_heartbeats") -> None:
        self.coordinator = coordinator
        self.name = name
        coordinator.subscribe()  # from now on: records made before the flow starts wait for it

    def build(self, resume_state: Any | None) -> _HeartbeatLogic:
        return _HeartbeatLogic(self.coordinator)


class _CoordinatorStep:
    snapshot_type: type | None = None

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def build(self, resume_state: Any | None) -> _CoordinatorStep:
        return self

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        return None

    def snapshot(self) -> None:
        return None

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        return df


class CloudOnlyStep(_CoordinatorStep):
    """Keeps the readings of sensors detected upstream (``cloud``); the edge runs the others' detection."""

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        edge = self.coordinator.edge_sensors()
        if not edge or not df.height:
            return df
        return df.filter(~pl.col(ctx.key_column).cast(pl.String).is_in(list(edge)))


class SensorDiscoveryStep(_CoordinatorStep):
    """Adds the sensors of each batch (and their ``latitude``/``longitude``) to the coordinator's catalog."""

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        self.coordinator.observe(df, key=ctx.key_column)
        return df

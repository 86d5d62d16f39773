"""Building a flow: sources, steps and sinks wired into a graph of streams.

>>> import polars as pl
>>> from tidegauge.dataflow import Flow
>>> from tidegauge.testing import MemorySink, MemorySource
>>> from datetime import datetime, UTC
>>> df = pl.DataFrame({"sensor_id": ["a", "b"], "timestamp": [datetime(2026, 1, 1, tzinfo=UTC)] * 2,
...                    "temperature": [20.0, 50.0]})
>>> flow = Flow("example")
>>> hot = flow.source(MemorySource(df)).filter("temperature > 45")
>>> out = MemorySink()
>>> hot.sink(out)
>>> _ = flow.run()
>>> out.to_frame()["sensor_id"].to_list()
['b']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from tidegauge._time import Duration
from tidegauge.connectors.base import SinkDefinition, SourceDefinition
from tidegauge.dataflow.base import StepDefinition
from tidegauge.dataflow.steps import (
    EnrichStep,
    FilterStep,
    IntoExpr,
    KeyByStep,
    MapBatchesStep,
    MapStep,
    PassStep,
    SelectStep,
    TableLike,
    WithColumnsStep,
)
from tidegauge.dataflow.watermark import WatermarkConfig
from tidegauge.errors import ConfigError

if TYPE_CHECKING:
    from tidegauge.dataflow.runner import CheckpointConfig, Runner, RunResult

__all__ = ["Flow", "Stream"]

_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class _Node:
    id: str
    kind: Literal["source", "step", "sink", "dead_letters"]
    definition: Any
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (node id, port)
    key_column: str = "sensor_id"
    time_column: str = "timestamp"
    partition_by: str | None = None  # sources: one watermark per value of this column


class Flow:
    """A dataflow graph from sources to sinks.

    Parameters
    ----------
    name:
        Names the flow in logs, metrics and checkpoints.
    key, time:
        Default key and event-time columns of every source (a source may override them).
    watermark:
        How event time advances (:class:`~tidegauge.dataflow.watermark.WatermarkConfig`).
    """

    def __init__(
        self,
        name: str = "flow",
        *,
        key: str = "sensor_id",
        time: str = "timestamp",
        watermark: WatermarkConfig | None = None,
    ) -> None:
        self.name = name
        self.key = key
        self.time = time
        self.watermark = watermark or WatermarkConfig()
        self.nodes: dict[str, _Node] = {}
        self._counts: dict[str, int] = {}
        self.nodes["dead_letters"] = _Node("dead_letters", "dead_letters", None, key_column=key, time_column=time)

    def _new_id(self, base: str, name: str | None, *, default: str | None = None) -> str:
        """A unique node id: ``name`` if given (must be unique), else ``default`` made unique, else ``base_N``."""
        if name is None and default:
            n, candidate = 1, default
            while candidate in self.nodes:
                candidate = f"{default}_{n}"
                n += 1
            name = candidate
        if name is not None:
            if not _ID.match(name):
                raise ConfigError(f"step name {name!r}: use letters, digits, '_', '-' or '.'")
            if name in self.nodes:
                raise ConfigError(f"step name {name!r} is used twice; names must be unique in a flow")
            return name
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        return f"{base}_{n}"

    def source(
        self, source: SourceDefinition, *, key: str | None = None, time: str | None = None,
        partition_by: str | None = None,
    ) -> Stream:
        """Add a source; returns its stream of records.

        ``partition_by`` names a column whose values are independent event-time streams (e.g. ``edge_node``
        when many edge agents feed one source): each gets its own watermark, and the source's is their
        minimum (:mod:`tidegauge.dataflow.partitions`).
        """
        node_id = self._new_id("source", None, default=getattr(source, "name", None))
        self.nodes[node_id] = _Node(node_id, "source", source, [], key or self.key, time or self.time,
                                    partition_by)
        return Stream(self, node_id)

    def dead_letters(self) -> Stream:
        """The stream of every rejected record, with ``reason``, ``stage``, ``payload``, ``rejected_at``."""
        return Stream(self, "dead_letters")

    def run(
        self,
        *,
        checkpoint: CheckpointConfig | None = None,
        max_batch: int = 65_536,
        max_delay: Duration = "5ms",
    ) -> RunResult:
        """Run until every source is exhausted (blocking); see :class:`~tidegauge.dataflow.runner.Runner`."""
        from tidegauge.dataflow.runner import Runner

        return Runner(self, checkpoint=checkpoint, max_batch=max_batch, max_delay=max_delay).run()

    def runner(self, **options: Any) -> Runner:
        from tidegauge.dataflow.runner import Runner

        return Runner(self, **options)


class Stream:
    """A stream of batches coming out of one port of a node. Methods add steps and return new streams."""

    def __init__(self, flow: Flow, node_id: str, port: str = "main") -> None:
        self.flow = flow
        self.node_id = node_id
        self.port = port

    def _columns(self) -> tuple[str, str]:
        node = self.flow.nodes[self.node_id]
        return node.key_column, node.time_column

    def then(self, step: StepDefinition, *, name: str | None = None, base: str = "step") -> Stream:
        """Add any step definition (the extension point every built-in uses)."""
        if not hasattr(step, "build"):
            raise TypeError(f"then() takes a step definition with build(), got {step!r}")
        key, time = self._columns()
        node_id = self.flow._new_id(base, name)
        self.flow.nodes[node_id] = _Node(node_id, "step", step, [(self.node_id, self.port)], key, time)
        return Stream(self.flow, node_id)

    def filter(self, condition: IntoExpr, *, name: str | None = None) -> Stream:
        """Keep records where ``condition`` (SQL string or polars expression) is true."""
        return self.then(FilterStep(condition), name=name, base="filter")

    def split(self, condition: IntoExpr, *, name: str | None = None) -> tuple[Stream, Stream]:
        """Two streams: the records matching ``condition``, and the rest (null counts as the rest)."""
        yes = self.then(FilterStep(condition), name=name, base="split")
        no = self.then(FilterStep(condition, negate=True), name=None if name is None else f"{name}.rest",
                       base="split")
        return yes, no

    def select(self, *exprs: IntoExpr, name: str | None = None, **named: IntoExpr) -> Stream:
        return self.then(SelectStep(*exprs, **named), name=name, base="select")

    def with_columns(self, *exprs: IntoExpr, name: str | None = None, **named: IntoExpr) -> Stream:
        return self.then(WithColumnsStep(*exprs, **named), name=name, base="with_columns")

    def map_batches(self, fn: Callable[[pl.DataFrame], pl.DataFrame], *, name: str | None = None) -> Stream:
        return self.then(MapBatchesStep(fn), name=name, base="map_batches")

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any] | None], *, name: str | None = None) -> Stream:
        """Per-record Python function (the slow path: prefer ``with_columns`` or ``map_batches``)."""
        return self.then(MapStep(fn), name=name, base="map")

    def stateful_map(
        self,
        fn: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any] | None]],
        *,
        ttl: Duration | None = None,
        name: str | None = None,
    ) -> Stream:
        """Per-record function with per-key state that expires ``ttl`` after its last update.

        See :class:`~tidegauge.state.StatefulMapStep`.
        """
        from tidegauge.state import StatefulMapStep

        return self.then(StatefulMapStep(fn, ttl=ttl), name=name, base="stateful_map")

    def key_by(self, column: str, *, name: str | None = None) -> Stream:
        stream = self.then(KeyByStep(column), name=name, base="key_by")
        self.flow.nodes[stream.node_id].key_column = column
        return stream

    def enrich(
        self,
        table: TableLike,
        *,
        on: str | list[str],
        how: Literal["left", "inner"] = "left",
        refresh: Duration | None = None,
        name: str | None = None,
    ) -> Stream:
        """Join each record with a reference table (static, or reloaded every ``refresh``)."""
        return self.then(EnrichStep(table, on=on, how=how, refresh=refresh), name=name, base="enrich")

    def window(
        self,
        window: Any,
        aggregate: Mapping[str, Sequence[Any]],
        *,
        emit: Literal["close", "update"] = "close",
        allowed_lateness: Duration = 0,
        name: str | None = None,
        **options: Any,
    ) -> Stream:
        """Windowed aggregation per key; results have ``window_start``, ``window_end``, ``<field>_<agg>``.

        Records too late for their window go to ``.late()`` of the returned stream.
        """
        from tidegauge.windows import WindowStep

        step = WindowStep(window, aggregate, emit=emit, allowed_lateness=allowed_lateness, **options)
        return self.then(step, name=name, base="window")

    def detect(self, detector: Any, *, name: str | None = None) -> Stream:
        """Score every record with an anomaly detector (adds ``score``, ``is_anomaly``, ``detector``)."""
        step = detector.as_step() if hasattr(detector, "as_step") else detector
        return self.then(step, name=name, base="detect")

    def late(self) -> Stream:
        """The records a window step found too late (beyond its allowed lateness)."""
        return Stream(self.flow, self.node_id, "late")

    def union(self, *others: Stream, name: str | None = None) -> Stream:
        """One stream of the records of this stream and ``others``."""
        key, time = self._columns()
        node_id = self.flow._new_id("union", name)
        inputs = [(self.node_id, self.port)] + [(o.node_id, o.port) for o in others]
        for o in others:
            if o.flow is not self.flow:
                raise ConfigError("union: streams must belong to the same flow")
        self.flow.nodes[node_id] = _Node(node_id, "step", PassStep(), inputs, key, time)
        return Stream(self.flow, node_id)

    def sink(self, sink: SinkDefinition, *, name: str | None = None) -> None:
        """Send this stream to ``sink`` (tidegauge's internal columns are removed first)."""
        key, time = self._columns()
        node_id = self.flow._new_id("sink", name, default=getattr(sink, "name", None))
        self.flow.nodes[node_id] = _Node(node_id, "sink", sink, [(self.node_id, self.port)], key, time)

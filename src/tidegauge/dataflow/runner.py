"""Running a flow: adaptive batching, backpressure, watermarks, checkpoints and recovery.

Steps are chained (as Flink chains operators): a source batch is pushed through the whole graph
synchronously, and sink writes are awaited before the next batch is taken. Between each source and the
graph sits a bounded queue of ``queue_batches`` batches, so a slow sink or step slows the sources down
instead of filling memory. Because nothing is in flight between batches, a checkpoint is consistent by
construction, in this order:

1. every sink's ``pre_commit(epoch)`` (pending output made durable);
2. one manifest with the key dictionary, each source's event-time clock and position, each step's and
   sink's snapshot, written atomically (:class:`~tidegauge.checkpoint.CheckpointStore`);
3. every sink's ``commit(epoch)``;
4. every source's ``ack(position)``.

A replayable source with a transactional sink therefore gives exactly-once output: after a crash the
flow restarts from the last manifest and produces, row for row, what an uninterrupted run would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from tidegauge._time import Clock, Duration, SystemClock, parse_duration
from tidegauge.dataflow.base import END_OF_TIME, NO_WATERMARK, StepContext, drop_internal
from tidegauge.dataflow.flow import Flow
from tidegauge.dataflow.ingest import ingest_batch
from tidegauge.dataflow.keys import KeyDictionary, KeyDictionarySnapshot
from tidegauge.dataflow.metrics import FlowMetrics, reason_class
from tidegauge.dataflow.partitions import PartitionedSourceClock
from tidegauge.dataflow.watermark import SourceClock, SourceClockSnapshot
from tidegauge.errors import CheckpointError, ConnectorError

__all__ = ["CheckpointConfig", "RunPhase", "RunResult", "Runner"]

logger = logging.getLogger(__name__)


RunPhase = Literal["new", "starting", "running", "stopped"]
"""Where a :class:`Runner` is: ``starting`` while it restores state and builds its steps (a detector's
kernels are compiled then: seconds with a cold numba cache), ``running`` once its sources are being
read, ``stopped`` once :meth:`Runner.run_async` has returned or failed."""


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often to checkpoint.

    A checkpoint is taken every ``interval`` of processing time, and also every ``every_batches``
    source batches when set (useful for deterministic tests), and once at the end of a finite run.
    """

    dir: str | Path
    interval: Duration = "10s"
    every_batches: int | None = None
    keep: int = 3

    def interval_us(self) -> int:
        return parse_duration(self.interval, name="checkpoint.interval")


@dataclass
class RunResult:
    """What a finished (or stopped) run did."""

    records_in: int
    records_out: dict[str, int]
    dead_letters: dict[str, int]
    late: int
    batches: int
    checkpoints: int
    restored_from: int | None
    seconds: float
    watermark_us: int | None
    metrics: FlowMetrics = field(repr=False)


class Runner:
    """Runs a :class:`~tidegauge.dataflow.flow.Flow`.

    Parameters
    ----------
    max_batch:
        Largest batch a source hands over (rows).
    max_delay:
        Longest a source waits to fill a batch once it has a record (latency when idle).
    queue_batches:
        Batches buffered between each source and the graph (the backpressure bound).
    clock:
        Processing-time clock (inject a ``ManualClock`` in tests).
    tick:
        How often the runner wakes up with no input to advance idle watermarks and take due checkpoints
        (default: a quarter of the idle timeout or of the checkpoint interval, at most 1 s).
    warm_up:
        ``"kernels"``: before reading its sources, load (or compile) the numba kernels its first batches
        would otherwise stop for: the key table's (500+ keys in a batch), the watermark's (a record that
        may be future-stamped) and those of steps that have a ``warm_up_kernels()`` method (fixed
        windows). Seconds with a cold numba cache, then a served flow keeps up from its first request
        (:attr:`phase` is ``starting`` meanwhile). ``"lazy"`` (default) compiles each at its first use:
        a flow that may never see data (an idle edge agent) does not hold numba (~55 MB).
    """

    def __init__(
        self,
        flow: Flow,
        *,
        checkpoint: CheckpointConfig | None = None,
        max_batch: int = 65_536,
        max_delay: Duration = "5ms",
        queue_batches: int = 4,
        clock: Clock | None = None,
        tick: Duration | None = None,
        warm_up: Literal["lazy", "kernels"] = "lazy",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be >= 1")
        if queue_batches < 1:
            raise ValueError(f"queue_batches={queue_batches}: must be >= 1")
        if warm_up not in ("lazy", "kernels"):
            raise ValueError(f"warm_up={warm_up!r}: use 'lazy' or 'kernels'")
        self.flow = flow
        self.warm_up = warm_up
        self.checkpoint_config = checkpoint
        self.max_batch = max_batch
        self.max_delay_s = parse_duration(max_delay, name="max_delay") / 1e6
        self.queue_batches = queue_batches
        self.clock = clock or SystemClock()
        self._tick_override = None if tick is None else parse_duration(tick, name="tick") / 1e6
        self.metrics = FlowMetrics()
        self.keys = KeyDictionary()
        self._order = _topological_order(flow)
        self._children: dict[tuple[str, str], list[str]] = {}
        for node in flow.nodes.values():
            for src in node.inputs:
                self._children.setdefault(src, []).append(node.id)
        self.epoch = 0
        self.restored_from: int | None = None
        self._stop_requested = False
        self._in_dead_letter_pass = False
        self._progress_listeners: list[Callable[[], None]] = []
        self.phase: RunPhase = "new"
        """read from other threads (the server's readiness): a plain attribute, set by the flow's thread"""

    # -- lifecycle -------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run until every source is exhausted or :meth:`stop` is called (blocking)."""
        try:
            uvloop: Any = importlib.import_module("uvloop")  # faster event loop, when installed
        except ImportError:
            return asyncio.run(self.run_async())
        result: RunResult = uvloop.run(self.run_async())
        return result

    def positions(self) -> dict[str, Any]:
        """Each source's position after the last batch the flow processed (what a checkpoint records)."""
        return dict(getattr(self, "_positions", {}))

    def sources_finished(self) -> dict[str, bool]:
        """Whether each source of the running flow is exhausted (empty before the run starts).

        A live source that reports on the others (e.g. :class:`~tidegauge.alerting.health.RunnerHealthSource`)
        ends once they all have, so a finite run still finishes.
        """
        return {sid: c.finished for sid, c in getattr(self, "_clocks", {}).items()}

    def add_progress_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each source batch has gone through the graph (:meth:`positions` then
        includes it), in the flow's thread: what a server reports from the flow's progress (end-to-end
        latency) without polling it. A listener must be quick; its errors are logged, never raised."""
        self._progress_listeners.append(listener)

    def stop(self) -> None:
        """Ask a running flow to finish its batch, checkpoint and stop (thread-safe enough for signals)."""
        self._stop_requested = True

    async def run_async(self) -> RunResult:
        started = time.perf_counter()
        self.phase = "starting"
        try:
            return await self._run(started)
        finally:
            self.phase = "stopped"

    async def _run(self, started: float) -> RunResult:
        if self.warm_up == "kernels":
            t0 = time.perf_counter()
            self._warm_up_kernels()
            logger.info("flow %r: kernels loaded in %.1f s", self.flow.name, time.perf_counter() - t0)
        self._build()  # builds the steps too: a DetectStep loads (or compiles) its kernels here
        queue: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue(
            maxsize=self.queue_batches * max(1, len(self._sources))
        )
        live = {sid for sid in self._sources if not self._clocks[sid].finished}
        readers = [asyncio.create_task(self._read(sid, self._sources[sid], queue)) for sid in live]
        self.phase = "running"
        tick_s = self._tick_seconds()
        last_cp_us = self.clock.now_us()
        batches_since_cp = 0
        try:
            while live and not self._stop_requested:
                try:
                    sid, df, position = await asyncio.wait_for(queue.get(), timeout=tick_s)
                except TimeoutError:
                    sid, df, position = "", None, None
                now = self.clock.now_us()
                self.metrics.queue_depth = queue.qsize()
                if isinstance(df, Exception):
                    raise ConnectorError(f"source {sid!r} failed: {type(df).__name__}: {df}") from df
                propagated: int | None = None  # the watermark a batch just pushed through every step
                if sid:
                    if df is None:
                        self._clocks[sid].finished = True
                        self._positions[sid] = position
                        live.discard(sid)
                    else:
                        t0 = time.perf_counter()
                        propagated = await self._on_batch(sid, df, now)
                        self._positions[sid] = position
                        for listener in self._progress_listeners:
                            try:
                                listener()
                            except Exception:  # a listener (metrics) must never stop the flow
                                logger.exception("progress listener %r failed", listener)
                        spent = time.perf_counter() - t0
                        self.metrics.batches += 1
                        self.metrics.batch_seconds_total += spent
                        self.metrics.batch_seconds.observe(spent)
                        batches_since_cp += 1
                for clock in self._clocks.values():
                    clock.on_idle(now)
                if propagated is None or self._watermark(now) != propagated:
                    # every step already saw this watermark (and this `now`) with the batch: don't repeat it
                    await self._advance(now)
                if self._store is not None and (
                    now - last_cp_us >= self._cp_interval_us
                    or (self._cp_every is not None and batches_since_cp >= self._cp_every)
                ):
                    await self._checkpoint()
                    last_cp_us, batches_since_cp = self.clock.now_us(), 0
            if not live:
                await self._advance(self.clock.now_us(), final=True)
            if self._store is not None:
                await self._checkpoint()
            else:  # no checkpoints: still make everything written so far visible before closing
                self.epoch += 1
                for sink in self._sinks.values():
                    await sink.pre_commit(self.epoch)
                    await sink.commit(self.epoch)
            for logic in self._sinks.values():
                await logic.close()
        finally:
            for r in readers:
                r.cancel()
            for r in readers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await r
            for src in self._sources.values():
                with contextlib.suppress(Exception):
                    await src.close()
        m = self.metrics
        return RunResult(
            records_in=sum(m.records_in.values()),
            records_out=dict(m.records_out),
            dead_letters=dict(m.dead_letters),
            late=m.late_total,
            batches=m.batches,
            checkpoints=m.checkpoints,
            restored_from=self.restored_from,
            seconds=time.perf_counter() - started,
            watermark_us=m.watermark_us,
            metrics=m,
        )

    def _tick_seconds(self) -> float:
        # wake up often enough to notice idle sources and due checkpoints, rarely enough to cost nothing
        if self._tick_override is not None:
            return max(0.001, self._tick_override)
        candidates = [self.flow.watermark.idle_timeout / 4e6, 1.0]
        if self.checkpoint_config is not None:
            candidates.append(self.checkpoint_config.interval_us() / 4e6)
        return max(0.001, min(candidates))

    async def _read(self, sid: str, logic: Any, queue: asyncio.Queue[tuple[str, Any, Any]]) -> None:
        try:
            while True:
                df = await logic.next_batch(self.max_batch, self.max_delay_s)
                if df is not None and not df.height:
                    continue
                await queue.put((sid, df, logic.snapshot()))
                if df is None:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # hand the failure to the main loop, which stops the flow with it
            await queue.put((sid, exc, None))

    def _warm_up_kernels(self) -> None:
        """Run the engine's own kernels and the steps' ``warm_up_kernels()`` once, on throwaway data."""
        from tidegauge.dataflow._keytable import KeyTable
        from tidegauge.dataflow.keys import _large_strings
        from tidegauge.dataflow.watermark import warm_up_assign

        # 100 keys: past the table's first growth, so that its rehash kernel is loaded too
        KeyTable().encode(_large_strings(pl.Series([f"k{i}" for i in range(100)], dtype=pl.String)))
        warm_up_assign()
        for node in self.flow.nodes.values():
            warm = getattr(node.definition, "warm_up_kernels", None)
            if callable(warm):
                warm()

    # -- building and restoring ------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.checkpoint_config
        self._store: Any = None
        cp: Any = None
        if cfg is not None:
            from tidegauge.checkpoint import CheckpointStore

            self._store = CheckpointStore(cfg.dir, keep=cfg.keep)
            self._cp_interval_us = cfg.interval_us()
            self._cp_every = cfg.every_batches
            cp = self._store.latest()
            new_nodes: set[str] = set()
            if cp is not None:
                new_nodes = self._check_restorable(cp, cfg.dir)
                self.epoch = cp.epoch
                self.restored_from = cp.epoch
                logger.info("restoring from checkpoint epoch %d", cp.epoch)

        def load(name: str, type_: type | None) -> Any:
            if cp is None or type_ is None or name.partition(":")[2] in new_nodes:
                return None
            return cp.load(name, type_)

        snap = load("keys", KeyDictionarySnapshot)
        self.keys = KeyDictionary(snap)
        self._sources: dict[str, Any] = {}
        self._clocks: dict[str, SourceClock] = {}
        self._positions: dict[str, Any] = {}
        self._logic: dict[str, Any] = {}
        self._sinks: dict[str, Any] = {}
        self._ctx: dict[str, StepContext] = {}
        for node in self.flow.nodes.values():
            self._ctx[node.id] = StepContext(node.id, node.key_column, node.time_column, self.keys)
            d = node.definition
            if node.kind == "source":
                clock_snap = load(f"clock:{node.id}", SourceClockSnapshot)
                self._clocks[node.id] = SourceClock(self.flow.watermark, clock_snap) if node.partition_by is None \
                    else PartitionedSourceClock(self.flow.watermark, clock_snap, partition_by=node.partition_by)
                state = load(f"source:{node.id}", d.snapshot_type)
                self._sources[node.id] = d.build(state)
                self._positions[node.id] = state
            elif node.kind == "step":
                self._logic[node.id] = d.build(load(f"step:{node.id}", getattr(d, "snapshot_type", None)))
            elif node.kind == "sink":
                self._sinks[node.id] = d.build(load(f"sink:{node.id}", d.snapshot_type))

    def _check_restorable(self, cp: Any, where: Any) -> set[str]:
        """The nodes of this flow that the checkpoint ``cp`` does not have (they start empty, as a new
        operator does in Flink); :class:`CheckpointError` if it has a node this flow lacks, or one of
        another kind: its state would be lost or read as something else."""
        found = str(cp.meta.get("fingerprint", ""))
        ours = self._fingerprint()
        if found == ours:
            return set()
        theirs = dict(part.partition("=")[::2] for part in found.split(";") if part)
        mine = dict(part.partition("=")[::2] for part in ours.split(";") if part)
        gone = [f"{n} ({t})" for n, t in theirs.items() if n not in mine]
        changed = [f"{n} ({theirs[n]} -> {t})" for n, t in mine.items() if n in theirs and theirs[n] != t]
        if gone or changed:
            what = "; ".join(x for x in (f"not in this pipeline: {', '.join(gone)}" if gone else "",
                                         f"of another kind now: {', '.join(changed)}" if changed else "") if x)
            raise CheckpointError(
                f"the checkpoint in {where} (epoch {cp.epoch}) was written by a different pipeline ({what}); "
                "its state cannot be restored into this one: point checkpoint.dir at a new directory or "
                "delete the old one"
            )
        new = set(mine) - set(theirs)
        logger.warning("checkpoint epoch %d has no state for %s (added to the pipeline since): they start empty",
                       cp.epoch, ", ".join(sorted(new)))
        return new

    def _fingerprint(self) -> str:
        # steps that only observe (``observes_only``: they emit nothing and keep no state, like the dashboard's
        # live steps) are left out, so turning the dashboard on or off keeps the checkpoints usable
        return ";".join(
            f"{n.id}={type(n.definition).__name__}" for n in self.flow.nodes.values()
            if n.kind != "dead_letters" and not getattr(n.definition, "observes_only", False)
        )

    # -- processing ------------------------------------------------------------------------------
    def _watermark(self, now: int) -> int:
        marks = [
            c.watermark for c in self._clocks.values() if not c.finished and not c.silent(now)
        ]
        if not marks:
            return END_OF_TIME if all(c.finished for c in self._clocks.values()) else NO_WATERMARK
        return min(marks)

    async def _on_batch(self, sid: str, df: pl.DataFrame, now: int) -> int:
        """Ingest and push one source batch; returns the watermark the steps saw."""
        ctx = self._ctx[sid]
        ctx.now_us = now
        self.metrics.records_in[sid] += df.height
        others = [c.watermark for s, c in self._clocks.items() if s != sid and not c.finished and not c.silent(now)]
        batch = ingest_batch(df, self._clocks[sid], ctx, other_watermark=min(others) if others else END_OF_TIME)
        wm = self._watermark(now)
        await self._propagate({(sid, "main"): [batch]} if batch.height else {}, now, wm)
        return wm

    async def _advance(self, now: int, *, final: bool = False) -> None:
        wm = END_OF_TIME if final else self._watermark(now)
        await self._propagate({}, now, wm)

    async def _propagate(
        self, outputs: dict[tuple[str, str], list[pl.DataFrame]], now: int, wm: int
    ) -> None:
        """Push ``outputs`` through the graph in topological order, then let every step see ``wm``."""
        self.metrics.watermark_us = wm if NO_WATERMARK < wm < END_OF_TIME else self.metrics.watermark_us
        inbox: dict[str, list[pl.DataFrame]] = {}

        def deliver(src: tuple[str, str], frames: list[pl.DataFrame]) -> None:
            for child in self._children.get(src, ()):
                inbox.setdefault(child, []).extend(frames)

        for src, frames in outputs.items():
            deliver(src, frames)
        dead: deque[pl.DataFrame] = deque()
        for node_id in self._order:
            node = self.flow.nodes[node_id]
            ctx = self._ctx[node_id]
            ctx.now_us, ctx.watermark = now, wm
            if node.kind == "source":
                dead.extend(ctx.dead_letters)
                ctx.dead_letters.clear()
                continue
            frames = inbox.pop(node_id, [])
            if node.kind == "sink":
                await self._write(node_id, frames)
                continue
            logic = self._logic[node_id]
            results: list[pl.DataFrame] = []
            for f in frames:
                out = logic.process(f, ctx)
                if out is not None and out.height:
                    results.append(out)
            out = logic.on_watermark(ctx)
            if out is not None and out.height:
                results.append(out)
            if results:
                self.metrics.records_out[node_id] += sum(r.height for r in results)
                deliver((node_id, "main"), results)
            for port, side in ctx.side_outputs.items():
                if port == "late":
                    self.metrics.late[node_id] += sum(s.height for s in side)
                deliver((node_id, port), side)
            ctx.side_outputs.clear()
            dead.extend(ctx.dead_letters)
            ctx.dead_letters.clear()
        if dead:
            await self._dead_letters(list(dead), now, wm)

    async def _dead_letters(self, frames: list[pl.DataFrame], now: int, wm: int) -> None:
        for f in frames:
            for reason, n in f.group_by("reason").len().iter_rows():
                self.metrics.dead_letters[reason_class(reason)] += n
        if self._in_dead_letter_pass:
            # dead letters of the dead-letter branch itself are only counted, to avoid a loop
            logger.warning("%d records failed in the dead-letter branch", sum(f.height for f in frames))
        elif self._children.get(("dead_letters", "main")):
            self._in_dead_letter_pass = True
            try:
                await self._propagate({("dead_letters", "main"): frames}, now, wm)
            finally:
                self._in_dead_letter_pass = False
        else:
            logger.debug("%d dead letters (no dead-letter sink configured)", sum(f.height for f in frames))

    async def _write(self, node_id: str, frames: list[pl.DataFrame]) -> None:
        if not frames:
            return
        df = pl.concat([drop_internal(f) for f in frames], how="diagonal_relaxed") if len(frames) > 1 \
            else drop_internal(frames[0])
        if df.height:
            await self._sinks[node_id].write_batch(df)
            self.metrics.records_out[node_id] += df.height

    # -- checkpoints -----------------------------------------------------------------------------
    async def _checkpoint(self) -> None:
        t0 = time.perf_counter()
        self.epoch += 1
        epoch = self.epoch
        for sink in self._sinks.values():
            await sink.pre_commit(epoch)
        entries: dict[str, Any] = {"keys": self.keys.snapshot()}
        for sid, clock in self._clocks.items():
            entries[f"clock:{sid}"] = clock.snapshot()
            entries[f"source:{sid}"] = self._positions.get(sid)
        for nid, logic in self._logic.items():
            entries[f"step:{nid}"] = logic.snapshot()
        for nid, sink in self._sinks.items():
            entries[f"sink:{nid}"] = sink.snapshot()
        info = self._store.write(
            epoch, entries, meta={"flow": self.flow.name, "fingerprint": self._fingerprint(),
                                  "watermark": self.metrics.watermark_us}
        )
        for sink in self._sinks.values():
            await sink.commit(epoch)
        for sid, src in self._sources.items():
            await src.ack(self._positions.get(sid))
        self.metrics.checkpoints += 1
        self.metrics.last_checkpoint_seconds = time.perf_counter() - t0
        self.metrics.last_checkpoint_bytes = int(getattr(info, "total_bytes", 0) or 0)
        self.metrics.last_checkpoint_at_us = self.clock.now_us()


def _topological_order(flow: Flow) -> list[str]:
    """Node ids with every node after its inputs (the dead-letter node's subgraph included)."""
    indeg = {nid: len(n.inputs) for nid, n in flow.nodes.items()}
    children: dict[str, list[str]] = {}
    for n in flow.nodes.values():
        for src, _port in n.inputs:
            children.setdefault(src, []).append(n.id)
    ready = deque(nid for nid, d in indeg.items() if d == 0)
    order: list[str] = []
    while ready:
        nid = ready.popleft()
        order.append(nid)
        for c in children.get(nid, ()):
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    if len(order) != len(flow.nodes):
        raise ValueError("the flow has a cycle")
    return [nid for nid in order if flow.nodes[nid].kind != "dead_letters"]

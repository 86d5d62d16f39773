"""Source and sink contracts.

A source definition (``FileSource(...)``, ``MqttSource(...)``) is immutable; ``build(resume_state)``
returns its running logic, resumed from the position saved in a checkpoint. A sink definition builds
sink logic the same way.

Checkpoint protocol, in this order (the runner drives it; see ``tidegauge.checkpoint``):

1. ``sink.pre_commit(epoch)`` for every sink: flush buffered output so it is durable *as pending*;
2. the manifest (state snapshots + ``source.snapshot()`` positions + ``sink.snapshot()``) is written atomically;
3. ``sink.commit(epoch)``: pending output of epochs <= ``epoch`` becomes visible (transactional sinks);
4. ``source.ack(position)``: brokers are told the records up to the checkpointed position are done
   (the position is the ``snapshot()`` the runner recorded with the last batch it processed; a source may
   have handed out more batches since, which the runner has not processed yet).

On restart, sinks are built from the snapshot in the manifest, and must (a) commit pending output of the
checkpointed epoch if step 3 did not finish, and (b) discard anything written after it. A replayable source
plus such a sink gives exactly-once output.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import polars as pl

__all__ = ["Guarantee", "SinkDefinition", "SinkLogic", "SourceDefinition", "SourceLogic"]

Guarantee = Literal["exactly-once", "at-least-once", "at-most-once"]


@runtime_checkable
class SourceLogic(Protocol):
    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        """Up to ``max_rows`` records, waiting at most ``max_delay_s`` for more once one has come.

        Returns an empty frame if nothing came in ``max_delay_s``, ``None`` once the source is exhausted.
        """
        ...

    def snapshot(self) -> Any:
        """The position after the last record handed out (a ``msgspec.Struct``)."""
        ...

    async def ack(self, position: Any) -> None:
        """Everything up to ``position`` (an earlier ``snapshot()``) is in a durable checkpoint."""
        ...

    async def close(self) -> None: ...


class SourceDefinition(Protocol):
    @property
    def name(self) -> str | None: ...
    @property
    def snapshot_type(self) -> type | None: ...
    @property
    def guarantee(self) -> Guarantee: ...

    def build(self, resume_state: Any | None) -> SourceLogic: ...


@runtime_checkable
class SinkLogic(Protocol):
    async def write_batch(self, df: pl.DataFrame) -> None:
        """Take a batch (user columns only). May buffer; must not lose it once ``pre_commit`` returns."""
        ...

    async def pre_commit(self, epoch: int) -> None:
        """Make everything written so far durable as pending output of ``epoch``."""
        ...

    async def commit(self, epoch: int) -> None:
        """Make pending output of epochs <= ``epoch`` visible."""
        ...

    def snapshot(self) -> Any:
        """What a restart needs to finish or discard pending output (a ``msgspec.Struct``)."""
        ...

    async def close(self) -> None:
        """Flush and release; for finite runs, the final output is complete after this."""
        ...


class SinkDefinition(Protocol):
    @property
    def name(self) -> str | None: ...
    @property
    def snapshot_type(self) -> type | None: ...
    @property
    def guarantee(self) -> Guarantee: ...

    def build(self, resume_state: Any | None) -> SinkLogic: ...

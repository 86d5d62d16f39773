"""Contracts between the engine and every step, source and sink.

A batch is a ``polars.DataFrame``. After a source's ingest stage, every batch carries three internal
columns next to the user's columns (names in :data:`KEY_ID`, :data:`TS`, :data:`WM`):

``_tg_key``  UInt32  dense id of the record's key (see :class:`~tidegauge.dataflow.keys.KeyDictionary`)
``_tg_ts``   Int64   event time, microseconds since the epoch, UTC
``_tg_wm``   Int64   the watermark *in force when the record arrived* (record-at-a-time semantics: a
                     record is late iff it is late against this value, so results do not depend on how
                     the stream was cut into batches)

Steps follow the definition/logic pattern: an immutable :class:`StepDefinition` builds a mutable
:class:`StepLogic` from a saved snapshot (``build(resume_state)``), and ``logic.snapshot()`` returns the
typed state to checkpoint (a ``msgspec.Struct``; never a pickle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import polars as pl

if TYPE_CHECKING:
    from tidegauge.dataflow.keys import KeyDictionary

__all__ = [
    "INTERNAL_COLUMNS",
    "KEY_ID",
    "TS",
    "WM",
    "StepContext",
    "StepDefinition",
    "StepLogic",
    "drop_internal",
    "with_series",
    "without_columns",
]

KEY_ID = "_tg_key"
TS = "_tg_ts"
WM = "_tg_wm"
INTERNAL_COLUMNS = (KEY_ID, TS, WM)

NO_WATERMARK = -(2**62)
"""Watermark value before any event time has been seen."""
END_OF_TIME = 2**62
"""Watermark value once every source is exhausted: every window closes."""


def drop_internal(df: pl.DataFrame) -> pl.DataFrame:
    """The user's view of a batch: ``df`` without tidegauge's internal columns."""
    internal = [c for c in INTERNAL_COLUMNS if c in df.columns]
    return without_columns(df, internal) if internal else df


def without_columns(df: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """``df.drop(names)`` done eagerly (names must be columns of ``df``).

    ``DataFrame.drop`` and ``with_columns`` build a lazy plan and run it on polars' thread pool: 50-100 us
    a call for a batch of a few thousand rows, mostly the hand-over to the pool and back, several times a
    batch on the flow's thread. A shallow ``clone`` and in-place edits do the same in a few microseconds.

    Examples
    --------
    >>> without_columns(pl.DataFrame({"a": [1], "b": [2]}), ["b"]).columns
    ['a']
    """
    out = df.clone()
    for name in names:
        out.drop_in_place(name)
    return out


def with_series(df: pl.DataFrame, columns: list[pl.Series]) -> pl.DataFrame:
    """``df.with_columns(*columns)`` for Series of ``df``'s height, done eagerly (see :func:`without_columns`):
    a Series named like a column replaces it, others are added at the end, in order.

    Examples
    --------
    >>> with_series(pl.DataFrame({"a": [1], "b": [2]}), [pl.Series("b", [3]), pl.Series("c", [4])]).rows()
    [(1, 3, 4)]
    """
    out = df.clone()
    at = {name: i for i, name in enumerate(out.columns)}
    for s in columns:
        i = at.get(s.name)
        if i is None:
            out.hstack([s], in_place=True)
            at[s.name] = out.width - 1
        else:
            out.replace_column(i, s)
    return out


@dataclass
class StepContext:
    """What a step sees besides its input batch; one per step, updated by the runner.

    Attributes
    ----------
    now_us:
        Processing time (from the flow's clock).
    watermark:
        The flow's watermark after the current batch (microseconds).
    keys:
        The key dictionary of the flow (id <-> key value).
    key_column, time_column:
        The user's names of the key and event-time columns.
    """

    step_id: str
    key_column: str
    time_column: str
    keys: KeyDictionary
    now_us: int = 0
    watermark: int = NO_WATERMARK
    side_outputs: dict[str, list[pl.DataFrame]] = field(default_factory=dict)
    dead_letters: list[pl.DataFrame] = field(default_factory=list)

    def emit(self, port: str, df: pl.DataFrame) -> None:
        """Send ``df`` to the named side output (e.g. ``"late"``) of this step."""
        if df.height:
            self.side_outputs.setdefault(port, []).append(df)

    def dead_letter(self, rows: pl.DataFrame, reason: str | pl.Expr | pl.Series) -> None:
        """Send ``rows`` (in the user's schema) to the dead-letter output with ``reason``."""
        if not rows.height:
            return
        from tidegauge.dataflow.deadletter import to_dead_letters

        self.dead_letters.append(to_dead_letters(rows, reason, stage=self.step_id, now_us=self.now_us))


@runtime_checkable
class StepLogic(Protocol):
    """The running state of one step."""

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        """Handle one batch; return the main output (or ``None`` for nothing)."""
        ...

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        """Called after every batch and on every timer tick, with ``ctx.watermark`` current.

        Windows emit what the watermark closed; stateless steps return ``None``.
        """
        ...

    def snapshot(self) -> Any:
        """Typed state to checkpoint (a ``msgspec.Struct``), or ``None`` for stateless steps."""
        ...


class StepDefinition(Protocol):
    """An immutable description of a step that builds its logic."""

    @property
    def snapshot_type(self) -> type | None:
        """Type of what ``snapshot()`` returns, to decode it from a checkpoint (``None``: stateless)."""
        ...

    def build(self, resume_state: Any | None) -> StepLogic:
        """Build fresh logic, or logic resumed from ``resume_state`` (a decoded snapshot)."""
        ...

ERROR = "_tg_error"
"""Optional source column: a non-null value dead-letters the row with this reason."""
RAW = "_tg_raw"
"""Optional source column: the original input of the row (used as the dead-letter payload)."""

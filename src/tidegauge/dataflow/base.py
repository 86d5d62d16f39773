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

from collections.abc import Sequence
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
    "without",
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
    return without(df, INTERNAL_COLUMNS)


def without(df: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """``df.drop(columns)``, ignoring absent ones, without a polars query.

    Per batch, on the hot path: ``DataFrame.drop`` runs through the query engine (~50 us idle, several
    hundred on a loaded machine, its thread pool being woken); a shallow copy whose columns are dropped in
    place costs ~2 us. ``df`` itself is left untouched.

    >>> without(pl.DataFrame({"a": [1], "b": [2]}), ["b", "zz"]).columns
    ['a']
    """
    present = [c for c in columns if c in df.columns]
    if not present:
        return df
    out = df.clone()  # shares the column buffers
    for c in present:
        out.drop_in_place(c)
    return out


def with_series(df: pl.DataFrame, *columns: pl.Series) -> pl.DataFrame:
    """``df.with_columns(*columns)`` for ready Series, without a polars query (see :func:`without`).

    A column of the same name is replaced where it stands; new ones are appended in order.

    >>> with_series(pl.DataFrame({"a": [1], "b": [2]}), pl.Series("a", [5]), pl.Series("c", [3])).rows()
    [(5, 2, 3)]
    """
    if not df.width:
        return pl.DataFrame(list(columns))
    out = df.clone()
    names = out.columns
    for s in columns:
        if s.len() != out.height:
            raise ValueError(f"column {s.name!r} has {s.len()} values for a batch of {out.height} rows")
        if s.name in names:
            out.replace_column(names.index(s.name), s)
        else:
            out.insert_column(out.width, s)
            names.append(s.name)
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

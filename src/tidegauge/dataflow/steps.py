"""Built-in stateless steps: filter, select, with_columns, map_batches, map, key_by, enrich (join).

Each is a definition that builds itself (they hold no state worth checkpointing). A step that fails on
a batch does not stop the flow: the records go to the dead-letter output with the error as reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import polars as pl

from tidegauge._time import Clock, Duration, SystemClock, parse_duration, timestamp_column_to_micros
from tidegauge.dataflow.base import INTERNAL_COLUMNS, TS, WM, StepContext
from tidegauge.errors import ConfigError

__all__ = [
    "EnrichStep",
    "FilterStep",
    "KeyByStep",
    "MapBatchesStep",
    "MapStep",
    "PassStep",
    "SelectStep",
    "WithColumnsStep",
    "apply_per_record",
    "compile_condition",
]

logger = logging.getLogger(__name__)

IntoExpr = str | pl.Expr


def compile_condition(condition: IntoExpr, *, where: str = "condition") -> pl.Expr:
    """Compile an SQL condition (``"temperature > 45 OR vibration > 3.0"``) or pass a polars expression."""
    if isinstance(condition, pl.Expr):
        return condition
    if not isinstance(condition, str) or not condition.strip():
        raise ConfigError(f"{where}: expected an SQL condition like 'temperature > 45', got {condition!r}")
    try:
        return pl.sql_expr(condition)
    except Exception as exc:
        raise ConfigError(f"{where}: {condition!r} is not a valid SQL condition: {exc}") from exc


def _compile_exprs(exprs: tuple[IntoExpr, ...], named: Mapping[str, IntoExpr], where: str) -> list[pl.Expr]:
    out: list[pl.Expr] = []
    for e in exprs:
        if isinstance(e, str):
            # a bare column name, or an SQL expression such as "temperature * 1.8 + 32 AS temp_f"
            out.append(pl.col(e) if e.isidentifier() else _sql(e, where))
        else:
            out.append(e)
    for name, e in named.items():
        out.append((_sql(e, where) if isinstance(e, str) else e).alias(name))
    return out


def _sql(text: str, where: str) -> pl.Expr:
    try:
        return pl.sql_expr(text)
    except Exception as exc:
        raise ConfigError(f"{where}: {text!r} is not a valid SQL expression: {exc}") from exc


class _Stateless:
    """Base for steps without state: the definition is its own logic."""

    snapshot_type: type | None = None

    def build(self, resume_state: Any | None) -> _Stateless:
        return self

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        return None

    def snapshot(self) -> None:
        return None

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        try:
            return self._apply(df, ctx)
        except Exception as exc:
            ctx.dead_letter(df, f"{type(self).__name__.removesuffix('Step').lower()} failed: {exc}")
            return None

    def _apply(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        raise NotImplementedError


class PassStep(_Stateless):
    """Passes batches on unchanged (used by ``union``)."""

    def _apply(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        return df


class FilterStep(_Stateless):
    """Keeps the records for which ``condition`` is true (null counts as false)."""

    def __init__(self, condition: IntoExpr, *, negate: bool = False) -> None:
        self.condition = condition
        expr = compile_condition(condition, where="filter")
        self._expr = (~expr.fill_null(False)) if negate else expr.fill_null(False)

    def _apply(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        return df.filter(self._expr)


class SelectStep(_Stateless):
    """Keeps the given columns/expressions (tidegauge's internal columns always stay)."""

    def __init__(self, *exprs: IntoExpr, **named: IntoExpr) -> None:
        self._exprs = _compile_exprs(exprs, named, "select")

    def _apply(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        keep = [pl.col(c) for c in INTERNAL_COLUMNS if c in df.columns]
        return df.select(*self._exprs, *keep)


class WithColumnsStep(_Stateless):
    """Adds or replaces columns."""

    def __init__(self, *exprs: IntoExpr, **named: IntoExpr) -> None:
        self._exprs = _compile_exprs(exprs, named, "with_columns")

    def _apply(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        return df.with_columns(*self._exprs)


class MapBatchesStep(_Stateless):
    """Applies ``fn(DataFrame) -> DataFrame`` to each batch (the user sees no internal columns).

    If ``fn`` keeps the number and order of rows, the internal columns are carried over; otherwise the
    key and event time are read again from the result's key and time columns.
    """

    def __init__(self, fn: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
        if not callable(fn):
            raise TypeError(f"map_batches takes a function DataFrame -> DataFrame, got {fn!r}")
        self.fn = fn

    def _apply(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        user = df.drop([c for c in INTERNAL_COLUMNS if c in df.columns])
        out = self.fn(user)
        if not isinstance(out, pl.DataFrame):
            raise TypeError(f"map_batches function returned {type(out).__name__}, expected a polars DataFrame")
        return _reattach(df, out, ctx)


class MapStep(_Stateless):
    """Applies ``fn(record: dict) -> dict | None`` to each record (the slow path; ``None`` drops it).

    A record whose function raises is dead-lettered with the exception; the others go on.
    """

    def __init__(self, fn: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        if not callable(fn):
            raise TypeError(f"map takes a function dict -> dict | None, got {fn!r}")
        self.fn = fn

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        return apply_per_record(df, ctx, lambda i, row: self.fn(row), what="map")


def apply_per_record(
    df: pl.DataFrame,
    ctx: StepContext,
    call: Callable[[int, dict[str, Any]], dict[str, Any] | None],
    *,
    what: str,
) -> pl.DataFrame | None:
    """Run ``call(row_index, record)`` on each record (user columns only), in order.

    Records for which ``call`` raises are dead-lettered with the exception as reason; ``None`` drops a
    record; the outputs are rebuilt into a frame carrying the input's internal columns.
    """
    user = df.drop([c for c in INTERNAL_COLUMNS if c in df.columns])
    out_rows: list[dict[str, Any]] = []
    kept: list[int] = []
    failed: list[int] = []
    reasons: list[str] = []
    for i, row in enumerate(user.iter_rows(named=True)):
        try:
            res = call(i, row)
        except Exception as exc:
            failed.append(i)
            reasons.append(f"{what} failed: {type(exc).__name__}: {exc}")
            continue
        if res is not None:
            out_rows.append(res)
            kept.append(i)
    if failed:
        ctx.dead_letter(df[failed], pl.Series("reason", reasons))
    if not out_rows:
        return None
    out = pl.DataFrame(out_rows, infer_schema_length=None)
    internal = df.select([c for c in INTERNAL_COLUMNS if c in df.columns])[kept]
    return out.with_columns(internal) if internal.width else out


class KeyByStep(_Stateless):
    """Makes ``column`` the key of the records from here on."""

    def __init__(self, column: str) -> None:
        if not isinstance(column, str) or not column:
            raise ConfigError(f"key_by: expected a column name, got {column!r}")
        self.column = column

    def _apply(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        missing = df[self.column].is_null()
        if missing.any():
            ctx.dead_letter(df.filter(missing), f"missing key {self.column!r}")
            df = df.filter(~missing)
        return df.with_columns(ctx.keys.encode(df[self.column]))


TableLike = pl.DataFrame | Callable[[], pl.DataFrame]


class EnrichStep(_Stateless):
    """Joins each batch with a reference table (e.g. a sensor registry).

    ``table`` is a DataFrame (static) or a function returning one, called again every ``refresh`` of
    processing time (a slowly-changing table). ``how="left"`` keeps records without a match (their new
    columns null); ``how="inner"`` drops them.
    """

    def __init__(
        self,
        table: TableLike,
        *,
        on: str | list[str],
        how: Literal["left", "inner"] = "left",
        refresh: Duration | None = None,
        clock: Clock | None = None,
    ) -> None:
        if how not in ("left", "inner"):
            raise ConfigError(f"enrich: how={how!r}; use 'left' or 'inner'")
        if not isinstance(table, pl.DataFrame) and not callable(table):
            raise TypeError("enrich: table must be a polars DataFrame or a function returning one")
        self.on = on
        self.how = how
        self._source = table
        self._refresh = None if refresh is None else parse_duration(refresh, name="enrich.refresh")
        self._clock = clock or SystemClock()
        self._table: pl.DataFrame | None = table if isinstance(table, pl.DataFrame) else None
        self._loaded_at = -(2**62)

    def _current(self) -> pl.DataFrame:
        if callable(self._source) and not isinstance(self._source, pl.DataFrame):
            now = self._clock.now_us()
            if self._table is None or (self._refresh is not None and now - self._loaded_at >= self._refresh):
                try:
                    self._table = self._source()
                    self._loaded_at = now
                except Exception:
                    if self._table is None:
                        raise
                    logger.warning("enrich: reloading the table failed; keeping the previous one", exc_info=True)
        assert self._table is not None  # set above or in __init__
        return self._table

    def _apply(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        table = self._current()
        on = [self.on] if isinstance(self.on, str) else self.on
        extra = [c for c in table.columns if c in df.columns and c not in on]
        if extra:
            table = table.drop(extra)
        return df.join(table, on=on, how=self.how, maintain_order="left")


def _reattach(src: pl.DataFrame, out: pl.DataFrame, ctx: StepContext) -> pl.DataFrame:
    internal = [c for c in INTERNAL_COLUMNS if c in src.columns]
    if out.height == src.height:
        return out.with_columns(src.select(internal))
    # rows changed: re-derive the key id and event time from the user's columns; the watermark of the
    # new rows is the highest one among the input rows (they are all results of this batch)
    ts = timestamp_column_to_micros(out[ctx.time_column])
    wm = int(np.max(src[WM].to_numpy())) if WM in src.columns and src.height else ctx.watermark
    return out.with_columns(
        ctx.keys.encode(out[ctx.key_column]),
        ts.alias(TS),
        pl.lit(wm, dtype=pl.Int64).alias(WM),
    )

"""Compiled rules: each evaluates a batch vectorised and returns *observations*, one row per alert identity.

An observation frame has ``_id`` (the rule's label values joined, computed with polars), ``_seen`` (the
condition held at some point in the batch), ``_active`` (it holds at the end), the ``by`` label columns and
the other columns of the identity's last relevant record (for annotation templates).

Kinds (``kind:`` in ``rules.yaml``):

``condition``  ``expr`` over readings, window results or detector output; optional ``resolve`` (hysteresis:
               once pending/firing, the alert stays active until ``resolve`` holds).
``rate``       rate of change of ``column`` per ``per`` between consecutive records of a key, ``above``/``below``.
``fleet``      the share of readings matching ``expr`` over the last ``over`` of event time, checked by ``when``
               (columns ``ratio``, ``matching``, ``total``), once ``min_readings`` are in the window.
Pattern kinds and ``no_data`` live in :mod:`.patterns`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl

from tidegauge._time import parse_duration, timestamp_column_to_micros
from tidegauge.alerting.config import FlapConfig, RuleConfig
from tidegauge.alerting.lifecycle import LifecyclePolicy
from tidegauge.dataflow.base import TS

__all__ = ["CompiledRule", "ConditionRule", "FleetRule", "RateRule", "compile_rule"]

logger = logging.getLogger(__name__)

ID = "_id"
SEEN = "_seen"
ACTIVE = "_active"
_SEP = "\x1f"


def event_time_us(df: pl.DataFrame, time_column: str) -> pl.Series:
    """Event time of each row in microseconds (the engine's internal column when present)."""
    if TS in df.columns:
        return df[TS]
    return timestamp_column_to_micros(df[time_column])


class CompiledRule:
    """Base of compiled rules: identity, labels and lifecycle policy shared by every kind."""

    event_like = False

    def __init__(self, cfg: RuleConfig, *, key_column: str, time_column: str, flap: FlapConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.by: tuple[str, ...] = tuple(cfg.by) if cfg.by is not None else self._default_by(key_column)
        self.time_column = time_column
        default_keep = cfg.within if (self.event_like and cfg.within is not None) else 0
        keep = cfg.keep_firing_for if cfg.keep_firing_for is not None else default_keep
        self.policy = LifecyclePolicy(
            for_us=parse_duration(cfg.for_),
            keep_firing_for_us=parse_duration(keep),
            flap_window_us=parse_duration(FlapConfig().window if flap is None else flap.window),
            flap_threshold=flap.threshold,
        )
        self.required: frozenset[str] = frozenset(self.by)
        self.hit_expr: pl.Expr | None = None
        self._missing_logged = False

    def _default_by(self, key_column: str) -> tuple[str, ...]:
        return (key_column,)

    def id_expr(self) -> pl.Expr:
        if not self.by:
            return pl.lit(self.name, dtype=pl.String)
        return pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in self.by], separator=_SEP)

    def applies(self, df: pl.DataFrame) -> bool:
        """Whether the batch has the columns this rule needs (rules for absent parts stay dormant)."""
        missing = self.required.difference(df.columns)
        if missing and not self._missing_logged:
            logger.debug("rule %s: batch lacks %s; not evaluated", self.name, sorted(missing))
            self._missing_logged = True
        return not missing

    def evaluate(self, df: pl.DataFrame, now_us: int, held: set[str]) -> pl.DataFrame | None:
        raise NotImplementedError

    def tick(self, now_us: int, held: set[str]) -> pl.DataFrame | None:
        """Processing-time evaluation with no data (only ``no_data`` rules use it)."""
        return None

    def snapshot(self) -> bytes | None:
        """Per-key rule state to persist (Arrow IPC or msgpack), ``None`` if the kind keeps none."""
        return None

    def restore(self, blob: bytes) -> None:
        """Restore what :meth:`snapshot` returned."""


def _last_per_id(df: pl.DataFrame) -> pl.DataFrame:
    """One row per identity: ``SEEN`` if any of its records met the condition, ``ACTIVE`` as its last record
    has it, and the values of the last record that met the condition (those an alert's text shows), or of
    its last record if none did."""
    df = df.with_columns(pl.col(ACTIVE).any().over(ID).alias(SEEN))
    last = df.unique(subset=[ID], keep="last", maintain_order=True)
    if df[ACTIVE].all() or not df[SEEN].any():
        return last
    shown = df.filter(pl.col(ACTIVE) | ~pl.col(SEEN)).unique(subset=[ID], keep="last", maintain_order=True)
    return shown.drop(ACTIVE).join(last.select(ID, ACTIVE), on=ID, how="left", maintain_order="left")


class ConditionRule(CompiledRule):
    """An SQL condition per record, with optional hysteresis (``resolve``)."""

    def __init__(self, cfg: RuleConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        assert_expr = cfg.expr if cfg.expr is not None else "false"
        self.cond = pl.sql_expr(assert_expr).fill_null(False)
        self.resolve = None if cfg.resolve is None else pl.sql_expr(cfg.resolve).fill_null(False)
        self.hit_expr = self.cond
        cols = set(self.cond.meta.root_names())
        if self.resolve is not None:
            cols |= set(self.resolve.meta.root_names())
        self.required = self.required | cols

    def evaluate(self, df: pl.DataFrame, now_us: int, held: set[str]) -> pl.DataFrame | None:
        if held:
            in_alert = pl.col(ID).is_in(pl.Series(list(held), dtype=pl.String).implode())
            held_active = ~self.resolve if self.resolve is not None else self.cond
            active = pl.when(in_alert).then(held_active).otherwise(self.cond)
            rows = df.with_columns(self.id_expr().alias(ID)).with_columns(active.alias(ACTIVE))
            rows = rows.filter(pl.col(ACTIVE) | in_alert)
        else:
            rows = df.filter(self.cond)
            if not rows.height:
                return None
            rows = rows.with_columns(self.id_expr().alias(ID), pl.lit(True).alias(ACTIVE))
        return _last_per_id(rows) if rows.height else None


class RateRule(ConditionRule):
    """Rate of change of ``column`` per ``per`` between consecutive records of the same identity."""

    def __init__(self, cfg: RuleConfig, **kw: Any) -> None:
        col = cfg.column or ""
        self.rate_column = f"{col}_rate"
        parts = []
        if cfg.above is not None:
            parts.append(f'"{self.rate_column}" > {cfg.above!r}')
        if cfg.below is not None:
            parts.append(f'"{self.rate_column}" < {cfg.below!r}')
        super().__init__(cfg, **kw)
        self.cond = pl.sql_expr(" OR ".join(parts)).fill_null(False)
        self.hit_expr = None  # needs the previous record: always evaluated
        self.required = frozenset(self.by) | {col}
        self.per_us = parse_duration(cfg.per)
        self.value_column = col
        self._last = pl.DataFrame(schema={ID: pl.String, "_t": pl.Int64, "_v": pl.Float64})

    def evaluate(self, df: pl.DataFrame, now_us: int, held: set[str]) -> pl.DataFrame | None:
        if self.time_column not in df.columns and TS not in df.columns:
            return None
        cur = pl.DataFrame({
            ID: df.select(self.id_expr()).to_series(),
            "_t": event_time_us(df, self.time_column),
            "_v": df[self.value_column].cast(pl.Float64),
        }).with_row_index("_row")
        # the previous record of each identity (row -1) sorts before this batch's records at equal time; one
        # sort, then plain shifts: a row's predecessor is the row above it when the identity is the same.
        # Sorting on the identity's 64-bit hash is ~3x faster than on the string; a collision (p ~ 1e-19 per
        # pair) could only hide a rate (`same` compares the identities themselves), never invent one.
        both = pl.concat([self._last.select(ID, "_t", "_v", pl.lit(-1, dtype=pl.Int64).alias("_row")),
                          cur.select(ID, "_t", "_v", pl.col("_row").cast(pl.Int64))])
        both = both.with_columns(pl.col(ID).hash().alias("_h")).sort(["_h", "_t", "_row"])
        same = pl.col(ID) == pl.col(ID).shift(1)
        dt = pl.col("_t") - pl.col("_t").shift(1)
        rate = (pl.when(same & (dt > 0))  # no rate between two readings stamped alike
                .then((pl.col("_v") - pl.col("_v").shift(1)) / dt.cast(pl.Float64) * self.per_us)
                .otherwise(None))
        both = both.with_columns(rate.alias("_rate"))
        mine = both.filter(pl.col("_row") >= 0)
        values = np.empty(cur.height, dtype=np.float64)
        values[mine["_row"].to_numpy()] = mine["_rate"].to_numpy()  # back in batch order, without a sort
        rates = pl.Series(self.rate_column, values)
        self._last = both.select(ID, "_t", "_v").unique(ID, keep="last", maintain_order=True)
        out = df.with_columns(rates.fill_nan(None).alias(self.rate_column))
        return super().evaluate(out, now_us, held)

    def snapshot(self) -> bytes | None:
        import io

        buf = io.BytesIO()
        self._last.write_ipc(buf)
        return buf.getvalue()

    def restore(self, blob: bytes) -> None:
        import io

        self._last = pl.read_ipc(io.BytesIO(blob))


class FleetRule(CompiledRule):
    """Share of readings matching ``expr`` over the last ``over`` (event time), checked with ``when``."""

    _BUCKETS = 60  # buckets per window: the window slides in steps of over/60 (5 s for 5 min)

    def _default_by(self, key_column: str) -> tuple[str, ...]:
        return ()

    def __init__(self, cfg: RuleConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.match = pl.sql_expr(cfg.expr or "false").cast(pl.Boolean).fill_null(False)
        self.when = pl.sql_expr(cfg.when or "ratio > 0.15").fill_null(False)
        self.over_us = parse_duration(cfg.over or "5m")
        self.bucket_us = max(1, self.over_us // self._BUCKETS)
        self.required = frozenset(self.by) | set(self.match.meta.root_names())
        self._buckets: dict[int, tuple[int, int]] = {}
        self._max_t = -(2**62)

    def evaluate(self, df: pl.DataFrame, now_us: int, held: set[str]) -> pl.DataFrame | None:
        if not df.height:
            return None
        t = event_time_us(df, self.time_column)
        agg = (
            pl.DataFrame({"_b": t // self.bucket_us, "_m": df.select(self.match).to_series()})
            .group_by("_b").agg(pl.col("_m").sum().alias("m"), pl.len().alias("n"))
        )
        for b, m, n in agg.iter_rows():
            if b is None:
                continue
            om, on = self._buckets.get(b, (0, 0))
            self._buckets[b] = (om + int(m), on + int(n))
        t_max = t.max()
        if isinstance(t_max, int):
            self._max_t = max(self._max_t, t_max)
        low = (self._max_t - self.over_us) // self.bucket_us
        self._buckets = {b: v for b, v in self._buckets.items() if b > low}
        matching = sum(v[0] for v in self._buckets.values())
        total = sum(v[1] for v in self._buckets.values())
        row = pl.DataFrame({"matching": [matching], "total": [total],
                            "ratio": [matching / total if total else 0.0]})
        ok = total >= self.cfg.min_readings and bool(row.select(self.when).item())
        if not ok and self.name not in held:
            return None
        return row.with_columns(pl.lit(self.name).alias(ID), pl.lit(ok).alias(SEEN), pl.lit(ok).alias(ACTIVE))

    def snapshot(self) -> bytes | None:
        import msgspec

        return msgspec.msgpack.encode({"max_t": self._max_t, "buckets": [[b, m, n] for b, (m, n) in
                                                                          self._buckets.items()]})

    def restore(self, blob: bytes) -> None:
        import msgspec

        data = msgspec.msgpack.decode(blob)
        self._max_t = int(data["max_t"])
        self._buckets = {int(b): (int(m), int(n)) for b, m, n in data["buckets"]}


def compile_rule(cfg: RuleConfig, *, key_column: str, time_column: str, flap: FlapConfig) -> CompiledRule:
    """Build the evaluator of one validated rule."""
    from tidegauge.alerting import patterns

    kinds: dict[str, type[CompiledRule]] = {
        "condition": ConditionRule,
        "rate": RateRule,
        "fleet": FleetRule,
        "no_data": patterns.NoDataRule,
        "sequence": patterns.SequenceRule,
        "count": patterns.CountRule,
        "absence": patterns.AbsenceRule,
    }
    return kinds[cfg.kind](cfg, key_column=key_column, time_column=time_column, flap=flap)

"""Rules with per-key memory: silence (``no_data``) and patterns (complex event processing).

``no_data``   a key (``by: [sensor_id]``, the default) or a whole source (``by: []``) silent for ``silent_for``,
              on processing time; optional ``expr`` restricts which records count as a sign of life.
``sequence``  ``first`` then ``then`` for the same key within ``within`` (event time).
``count``     at least ``at_least`` records matching ``expr`` for the same key within ``within``.
``absence``   ``first`` not followed by ``then`` for the same key within ``within`` (checked as event time
              advances: the stream's largest event time so far).

Pattern matches are events: the alert is seen at the match and stays firing for ``keep_firing_for``
(default: ``within``) after the last match. Only the records matching ``first``/``then``/``expr`` reach the
per-key loop, after a vectorised filter, so the loop's cost follows the match rate, not the reading rate.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import msgspec
import polars as pl

from tidegauge._time import parse_duration
from tidegauge.alerting.config import RuleConfig
from tidegauge.alerting.rules import ACTIVE, ID, SEEN, CompiledRule, event_time_us

__all__ = ["AbsenceRule", "CountRule", "NoDataRule", "SequenceRule"]

logger = logging.getLogger(__name__)

_NEVER = -(2**62)


class NoDataRule(CompiledRule):
    """Fires when an identity has sent nothing for ``silent_for`` of processing time."""

    def __init__(self, cfg: RuleConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.silent_us = parse_duration(cfg.silent_for or "5m")
        self.where = None if cfg.expr is None else pl.sql_expr(cfg.expr).fill_null(False)
        if self.where is not None:
            self.required = self.required | set(self.where.meta.root_names())
        self._seen = pl.DataFrame(schema={ID: pl.String, **{c: pl.String for c in self.by}, "_seen_at": pl.Int64})

    def evaluate(self, df: pl.DataFrame, now_us: int, held: set[str]) -> pl.DataFrame | None:
        rows = df if self.where is None else df.filter(self.where)
        if not rows.height:
            return None
        alive = (
            rows.select(self.id_expr().alias(ID), *[pl.col(c).cast(pl.String) for c in self.by])
            .unique(ID, keep="last")
            .with_columns(pl.lit(now_us, dtype=pl.Int64).alias("_seen_at"))
        )
        self._seen = pl.concat([self._seen.filter(~pl.col(ID).is_in(alive[ID].implode())), alive])
        if not held:
            return None
        back = alive.filter(pl.col(ID).is_in(pl.Series(list(held), dtype=pl.String).implode()))
        if not back.height:
            return None
        return back.drop("_seen_at").with_columns(pl.lit(False).alias(SEEN), pl.lit(False).alias(ACTIVE))

    def tick(self, now_us: int, held: set[str]) -> pl.DataFrame | None:
        silent = self._seen.filter(pl.col("_seen_at") <= now_us - self.silent_us)
        if held:
            silent = silent.filter(~pl.col(ID).is_in(pl.Series(list(held), dtype=pl.String).implode()))
        if not silent.height:
            return None
        return silent.with_columns(
            ((now_us - pl.col("_seen_at")) // 1_000_000).alias("silent_seconds"),
            pl.lit(True).alias(SEEN),
            pl.lit(True).alias(ACTIVE),
        ).drop("_seen_at")

    def snapshot(self) -> bytes | None:
        buf = io.BytesIO()
        self._seen.write_ipc(buf)
        return buf.getvalue()

    def restore(self, blob: bytes) -> None:
        self._seen = pl.read_ipc(io.BytesIO(blob))


class _PatternRule(CompiledRule):
    """Shared machinery: filter the interesting records, then walk them per key in event-time order."""

    event_like = True

    def __init__(self, cfg: RuleConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.within_us = parse_duration(cfg.within or "0s")
        self.exprs: dict[str, pl.Expr] = {}

    def _add(self, name: str, text: str | None) -> None:
        expr = pl.sql_expr(text or "false").fill_null(False)
        self.exprs[name] = expr
        self.required = self.required | set(expr.meta.root_names())

    def _rows(self, df: pl.DataFrame) -> Iterator[dict[str, Any]]:
        flags = [e.alias(f"_is_{n}") for n, e in self.exprs.items()]
        hit = pl.any_horizontal([pl.col(f"_is_{n}") for n in self.exprs])
        rows = (
            df.with_columns(*flags, self.id_expr().alias(ID), event_time_us(df, self.time_column).alias("_t"))
            .filter(hit & pl.col("_t").is_not_null())
            .sort([ID, "_t"], maintain_order=True)
        )
        yield from rows.iter_rows(named=True)

    def _obs(self, matches: list[dict[str, Any]]) -> pl.DataFrame | None:
        if not matches:
            return None
        out = pl.DataFrame(matches, infer_schema_length=None)
        drop = [c for c in out.columns if c.startswith("_is_") or c == "_t"]
        return (
            out.drop(drop)
            .unique(ID, keep="last", maintain_order=True)
            .with_columns(pl.lit(True).alias(SEEN), pl.lit(False).alias(ACTIVE))
        )

    def _state(self) -> Any:
        raise NotImplementedError

    def _set_state(self, data: Any) -> None:
        raise NotImplementedError

    def snapshot(self) -> bytes | None:
        return msgspec.msgpack.encode(self._state())

    def restore(self, blob: bytes) -> None:
        self._set_state(msgspec.msgpack.decode(blob))


class SequenceRule(_PatternRule):
    """``first`` then ``then`` within ``within`` for the same key."""

    def __init__(self, cfg: RuleConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self._add("first", cfg.first)
        self._add("then", cfg.then)
        self._last_first: dict[str, int] = {}

    def evaluate(self, df: pl.DataFrame, now_us: int, held: set[str]) -> pl.DataFrame | None:
        matches: list[dict[str, Any]] = []
        for r in self._rows(df):
            key, t = r[ID], r["_t"]
            if r["_is_then"]:
                a = self._last_first.get(key)
                if a is not None and 0 <= t - a <= self.within_us:
                    matches.append(r)
                    del self._last_first[key]
            if r["_is_first"]:
                self._last_first[key] = t
        return self._obs(matches)

    def _state(self) -> Any:
        return self._last_first

    def _set_state(self, data: Any) -> None:
        self._last_first = {str(k): int(v) for k, v in data.items()}


class CountRule(_PatternRule):
    """At least ``at_least`` records matching ``expr`` for the same key within ``within``."""

    def __init__(self, cfg: RuleConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self._add("match", cfg.expr)
        self.at_least = cfg.at_least or 1
        self._times: dict[str, list[int]] = {}

    def evaluate(self, df: pl.DataFrame, now_us: int, held: set[str]) -> pl.DataFrame | None:
        matches: list[dict[str, Any]] = []
        for r in self._rows(df):
            key, t = r[ID], r["_t"]
            times = [x for x in self._times.get(key, []) if t - x < self.within_us]
            times.append(t)
            self._times[key] = times
            if len(times) >= self.at_least:
                r["match_count"] = len(times)
                matches.append(r)
        return self._obs(matches)

    def _state(self) -> Any:
        return self._times

    def _set_state(self, data: Any) -> None:
        self._times = {str(k): [int(x) for x in v] for k, v in data.items()}


class AbsenceRule(_PatternRule):
    """``first`` not followed by ``then`` for the same key within ``within``."""

    def __init__(self, cfg: RuleConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self._add("first", cfg.first)
        self._add("then", cfg.then)
        self._deadline: dict[str, tuple[int, dict[str, Any]]] = {}
        self._max_t = _NEVER

    def evaluate(self, df: pl.DataFrame, now_us: int, held: set[str]) -> pl.DataFrame | None:
        if df.height and (self.time_column in df.columns or "_tg_ts" in df.columns):
            t_max = event_time_us(df, self.time_column).max()
            if isinstance(t_max, int):
                self._max_t = max(self._max_t, t_max)
        matches: list[dict[str, Any]] = []
        for r in self._rows(df):
            key, t = r[ID], r["_t"]
            pending = self._deadline.get(key)
            if r["_is_then"] and pending is not None and t <= pending[0]:
                del self._deadline[key]
                pending = None
            if r["_is_first"] and pending is None:
                labels = {c: r[c] for c in self.by}
                self._deadline[key] = (t + self.within_us, {ID: key, **labels})
        for key, (deadline, rec) in list(self._deadline.items()):
            if deadline < self._max_t:
                matches.append(dict(rec))
                del self._deadline[key]
        return self._obs(matches)

    def _state(self) -> Any:
        return {"max_t": self._max_t, "deadline": {k: [d, rec] for k, (d, rec) in self._deadline.items()}}

    def _set_state(self, data: Any) -> None:
        self._max_t = int(data["max_t"])
        self._deadline = {str(k): (int(v[0]), dict(v[1])) for k, v in data["deadline"].items()}

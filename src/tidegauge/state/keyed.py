"""Keyed state with TTL, and the ``stateful_map`` step that uses it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
import polars as pl

from tidegauge._time import Duration, parse_duration
from tidegauge.dataflow.base import KEY_ID, TS, StepContext
from tidegauge.dataflow.steps import apply_per_record

__all__ = ["KeyedState", "KeyedStateSnapshot", "StatefulMapStep"]

logger = logging.getLogger(__name__)


class KeyedStateSnapshot(msgspec.Struct, frozen=True, tag="keyed-state/1"):
    keys: list[int]
    updated: list[int]
    values: list[Any]


class KeyedState:
    """One value per key id, expiring ``ttl`` of event time after its last update.

    >>> s = KeyedState(ttl="1m")
    >>> s.set(3, {"n": 1}, at_us=0); s.get(3)
    {'n': 1}
    >>> s.expire(watermark_us=61_000_000)
    1
    >>> s.get(3) is None
    True
    """

    def __init__(self, *, ttl: Duration | None = None, snapshot: KeyedStateSnapshot | None = None) -> None:
        self.ttl = None if ttl is None else parse_duration(ttl, name="ttl")
        self._values: dict[int, Any] = {}
        self._updated: dict[int, int] = {}
        if snapshot is not None:
            self._values = dict(zip(snapshot.keys, snapshot.values, strict=True))
            self._updated = dict(zip(snapshot.keys, snapshot.updated, strict=True))

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: int, *, at_us: int | None = None) -> Any:
        """The key's value, or ``None``; with ``at_us``, also ``None`` if it is older than ``ttl`` then."""
        if at_us is not None and self.ttl is not None and at_us - self._updated.get(key, at_us) > self.ttl:
            return None
        return self._values.get(key)

    def set(self, key: int, value: Any, *, at_us: int) -> None:
        if value is None:
            self._values.pop(key, None)
            self._updated.pop(key, None)
            return
        self._values[key] = value
        self._updated[key] = max(at_us, self._updated.get(key, at_us))

    def expire(self, *, watermark_us: int) -> int:
        """Drop values whose last update is more than ``ttl`` behind the watermark; returns how many."""
        if self.ttl is None:
            return 0
        limit = watermark_us - self.ttl
        old = [k for k, t in self._updated.items() if t < limit]
        for k in old:
            del self._values[k]
            del self._updated[k]
        return len(old)

    def snapshot(self) -> KeyedStateSnapshot:
        keys = sorted(self._values)
        return KeyedStateSnapshot(keys, [self._updated[k] for k in keys], [self._values[k] for k in keys])


StatefulFn = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any] | None]]


class StatefulMapStep:
    """Per-record function with per-key state: ``fn(state, record) -> (new_state, output | None)``.

    ``state`` is ``None`` for a key's first record, and when its state was last updated more than ``ttl``
    of event time before the record (expired state is also freed as the watermark passes); returning ``None`` as
    the new state deletes it. State must be msgpack-able (numbers, strings, lists, dicts) so it can be
    checkpointed. Records are handled in arrival order per key. A record whose function raises is
    dead-lettered and the key's state is left as it was. This is the slow path (one Python call per
    record); prefer windows and detectors for numeric work.
    """

    snapshot_type = KeyedStateSnapshot

    def __init__(self, fn: StatefulFn, *, ttl: Duration | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"stateful_map takes a function (state, record) -> (state, output), got {fn!r}")
        self.fn = fn
        self.ttl = ttl

    def build(self, resume_state: KeyedStateSnapshot | None) -> _StatefulMapLogic:
        return _StatefulMapLogic(self.fn, KeyedState(ttl=self.ttl, snapshot=resume_state))


class _StatefulMapLogic:
    def __init__(self, fn: StatefulFn, state: KeyedState) -> None:
        self.fn = fn
        self.state = state

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        keys = df[KEY_ID].to_list()
        times = df[TS].to_list()

        def call(i: int, row: dict[str, Any]) -> dict[str, Any] | None:
            new_state, out = self.fn(self.state.get(keys[i], at_us=times[i]), row)
            msgspec.msgpack.encode(new_state)  # refuse state that could not be checkpointed
            self.state.set(keys[i], new_state, at_us=times[i])
            return out

        return apply_per_record(df, ctx, call, what="stateful_map")

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        self.state.expire(watermark_us=ctx.watermark)
        return None

    def snapshot(self) -> KeyedStateSnapshot:
        return self.state.snapshot()

"""The detector contract: immutable definitions that build per-key logic over micro-batches.

A :class:`Detector` is an immutable definition (its parameters); ``det.build(resume_state)`` returns a
:class:`DetectorLogic` holding per-key state in numpy arrays indexed by the dense key id (``_tg_key``),
grown on demand. The logic works on whole batches:

- ``score(df)`` scores without learning;
- ``learn(df)`` learns without scoring;
- ``score_learn(df)`` scores every record against the state *before* it and then learns it,
  sequentially per key. Kernels walk the batch once, in arrival order, indexing state by key id, so the
  result of one big batch equals feeding the records one at a time, bit for bit.

Output: the input plus ``score`` (Float64 in [0, 1], higher = more anomalous), ``is_anomaly`` (Boolean)
and ``detector`` (String, the detector's name).

Bad values: a NaN, inf, null or missing field never updates state. A field with a bad value gets score
0 and, if all fields of a record are bad, the record gets ``score`` 0 and ``is_anomaly`` False (a missing
reading is the job of :class:`~tidegauge.detectors.NoData`, not of a value detector).

Warm-up: until a key has learned ``warmup`` valid values (per field) the detector learns but scores 0.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
import numpy as np
import polars as pl

from tidegauge._time import timestamp_column_to_micros
from tidegauge.checkpoint.codec import ArrayBlob, pack_array, unpack_array
from tidegauge.dataflow.base import KEY_ID, TS, with_series
from tidegauge.dataflow.keys import KeyDictionary, KeyDictionarySnapshot

__all__ = ["Batch", "Detector", "DetectorLogic", "DetectorSnapshot"]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from tidegauge.detectors.step import DetectStep


class DetectorSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Checkpointed state of one detector; each detector subclasses it with its own ``tag``.

    Attributes
    ----------
    n_keys:
        Number of key ids the state covers (rows of every per-key array).
    arrays:
        Named state arrays (per-key arrays have ``n_keys`` rows).
    keys:
        The detector's own key dictionary when used standalone with ``key=`` (else ``None``).
    children:
        msgpack-encoded snapshots of wrapped detectors (ensembles, calibration).
    meta:
        Small scalars (counters, group names).
    """

    n_keys: int = 0
    arrays: dict[str, ArrayBlob] = {}
    keys: KeyDictionarySnapshot | None = None
    children: list[bytes] = []
    meta: dict[str, int | float | str | list[str]] = {}


class Batch:
    """One input batch, prepared once and shared by every detector that scores it.

    ``keys`` are dense ids (UInt32 as ``int64``), ``ts`` event times in µs (``int64``); ``values(fields)``
    gives a C-contiguous ``(n, len(fields))`` float64 matrix with NaN for null, inf and missing fields.
    """

    def __init__(self, df: pl.DataFrame, keys: np.ndarray, ts: np.ndarray | None) -> None:
        self.df = df
        self.keys = keys
        self._ts = ts
        self._cache: dict[tuple[str, ...], np.ndarray] = {}

    @property
    def height(self) -> int:
        return self.df.height

    @property
    def ts(self) -> np.ndarray:
        if self._ts is None:
            # No event time at all: arrival order stands in for time (1 µs apart) so rate-based rules
            # still see increasing time.
            self._ts = np.arange(self.height, dtype=np.int64)
        return self._ts

    def values(self, fields: Sequence[str]) -> np.ndarray:
        key = tuple(fields)
        got = self._cache.get(key)
        if got is None:
            out = np.full((self.height, len(fields)), np.nan, dtype=np.float64)
            for j, name in enumerate(fields):
                if name not in self.df.columns:
                    continue
                col = self.df[name]
                if not (col.dtype.is_numeric() or col.dtype == pl.Boolean):
                    col = col.cast(pl.Float64, strict=False)
                arr = col.cast(pl.Float64).to_numpy()
                out[:, j] = arr
            out[~np.isfinite(out)] = np.nan
            self._cache[key] = out
            got = out
        return got


class Detector(ABC):
    """Immutable definition of an online detector.

    Subclasses set :attr:`kind` (the registry name), :attr:`snapshot_type`, and implement
    :meth:`_new_logic`.

    Parameters common to every detector (keyword-only):

    name:
        Value of the ``detector`` output column (defaults to :attr:`kind`).
    threshold:
        ``is_anomaly`` is ``score >= threshold``.
    warmup:
        Valid values per key and field learned before the detector may score above 0.
    key, time:
        For standalone use on a plain frame without ``_tg_key``/``_tg_ts``: the key column (encoded with
        an internal :class:`~tidegauge.dataflow.keys.KeyDictionary`) and the event-time column. With
        neither ``_tg_key`` nor ``key`` the whole frame is one key.
    """

    kind: ClassVar[str] = "detector"
    snapshot_type: ClassVar[type[DetectorSnapshot]] = DetectorSnapshot
    emits_changepoints: ClassVar[bool] = False
    """True for changepoint detectors: ``is_anomaly`` marks the row where a change is detected, once per
    change, rather than every anomalous row (evaluation scores those rows as predicted changepoints)."""

    def __init__(
        self,
        *,
        name: str | None = None,
        threshold: float = 0.5,
        warmup: int = 0,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise TypeError(f"threshold must be a number in [0, 1], got {threshold!r}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold={threshold!r} is outside [0, 1]; scores are in [0, 1]")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup={warmup!r}: give a whole number of readings >= 0, e.g. warmup=30")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name={name!r}: give a non-empty string")
        for label, col in (("key", key), ("time", time)):
            if col is not None and (not isinstance(col, str) or not col):
                raise TypeError(f"{label}={col!r}: give a column name (str) or None")
        self.name = name or self.kind
        self.threshold = float(threshold)
        self.warmup = warmup
        self.key = key
        self.time = time

    def build(self, resume_state: DetectorSnapshot | None = None) -> DetectorLogic:
        """Fresh logic, or logic resumed from a decoded snapshot of this detector."""
        if resume_state is not None and not isinstance(resume_state, self.snapshot_type):
            raise TypeError(
                f"{type(self).__name__}.build takes a {self.snapshot_type.__name__}, "
                f"got {type(resume_state).__name__}; decode the checkpoint with det.snapshot_type"
            )
        logic = self._new_logic()
        if resume_state is not None:
            logic.restore(resume_state)
        return logic

    def as_step(self) -> DetectStep:
        """This detector as a flow step (what ``Stream.detect(det)`` adds)."""
        from tidegauge.detectors.step import DetectStep

        return DetectStep(self)

    @abstractmethod
    def _new_logic(self) -> DetectorLogic: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, threshold={self.threshold})"


class DetectorLogic:
    """Mutable per-key state of a detector; see the module docstring for the batch semantics.

    Subclasses declare per-key arrays with :meth:`_declare` and implement :meth:`_run`.
    """

    def __init__(self, definition: Detector) -> None:
        self.definition = definition
        self.now_us: int | None = None  # processing time, set by DetectStep before each batch
        self._keys: KeyDictionary | None = KeyDictionary() if definition.key is not None else None
        self._arrays: dict[str, np.ndarray] = {}
        self._fill: dict[str, float | int | bool] = {}
        self._n_keys = 0
        self._missing_warned: set[str] = set()

    # -- state ---------------------------------------------------------------------------------
    def _declare(self, name: str, shape: tuple[int, ...], dtype: Any, fill: float | int | bool) -> None:
        """A per-key array named ``name`` with trailing ``shape``, new rows set to ``fill``."""
        self._arrays[name] = np.full((0, *shape), fill, dtype=dtype)
        self._fill[name] = fill

    def _grow(self, n_keys: int) -> None:
        if n_keys <= self._n_keys:
            return
        cap = next(iter(self._arrays.values())).shape[0] if self._arrays else 0
        if n_keys > cap:
            new_cap = max(n_keys, 2 * cap, 16)
            for name, arr in self._arrays.items():
                grown = np.full((new_cap, *arr.shape[1:]), self._fill[name], dtype=arr.dtype)
                grown[: arr.shape[0]] = arr
                self._arrays[name] = grown
        self._n_keys = n_keys

    def _state_snapshot(self, **extra: Any) -> dict[str, Any]:
        arrays = {name: pack_array(arr[: self._n_keys]) for name, arr in self._arrays.items()}
        arrays.update(extra.pop("arrays", {}))
        keys = self._keys.snapshot() if self._keys is not None else None
        return {"n_keys": self._n_keys, "arrays": arrays, "keys": keys, **extra}

    def snapshot(self) -> DetectorSnapshot:
        """Typed state to checkpoint (encode with msgspec msgpack, decode with ``snapshot_type``)."""
        return self.definition.snapshot_type(**self._state_snapshot())

    def restore(self, snap: DetectorSnapshot) -> None:
        if snap.keys is not None:
            self._keys = KeyDictionary(snap.keys)
        for name in self._arrays:
            if name not in snap.arrays:
                raise ValueError(f"snapshot of {self.definition.name!r} lacks state array {name!r}")
            loaded = unpack_array(snap.arrays[name])
            if loaded.shape[1:] != self._arrays[name].shape[1:]:
                raise ValueError(
                    f"snapshot array {name!r} has shape {loaded.shape}, expected rows of "
                    f"{self._arrays[name].shape[1:]}: the detector's parameters changed since the checkpoint"
                )
            self._arrays[name] = loaded.astype(self._arrays[name].dtype, copy=False)
        self._n_keys = snap.n_keys

    # -- batches -------------------------------------------------------------------------------
    def prepare(self, df: pl.DataFrame) -> Batch:
        """Key ids and event times of ``df`` (internal columns, or the definition's ``key``/``time``)."""
        d = self.definition
        if KEY_ID in df.columns:
            ids = df[KEY_ID]
            # without nulls (ingested batches have none) skip fill_null, a polars query per batch
            keys = ids.cast(pl.Int64).fill_null(0).to_numpy() if ids.null_count() else ids.to_numpy().astype(np.int64)
        elif d.key is not None:
            if d.key not in df.columns:
                raise ValueError(f"key column {d.key!r} is not in the batch (columns: {df.columns})")
            assert self._keys is not None
            ids = self._keys.encode(df[d.key].fill_null("<null>" if df[d.key].dtype == pl.String else 0))
            keys = ids.cast(pl.Int64).to_numpy()
        else:
            keys = np.zeros(df.height, dtype=np.int64)
        ts: np.ndarray | None = None
        if TS in df.columns:
            ts = df[TS].cast(pl.Int64).to_numpy()
        elif d.time is not None and d.time in df.columns:
            ts = timestamp_column_to_micros(df[d.time]).to_numpy()
        if ts is not None and ts.dtype != np.int64:
            # nulls in the time column: such records do not move the per-key clock
            ts = np.where(np.isnan(ts), np.iinfo(np.int64).min, ts).astype(np.int64)
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        return Batch(df, keys, ts)

    def run(self, batch: Batch, *, score: bool, learn: bool) -> np.ndarray:
        """Scores (float64, arrival order) of a prepared batch, learning it if ``learn``."""
        if batch.height:
            self._grow(int(self._state_keys(batch).max()) + 1)
        out = np.zeros(batch.height, dtype=np.float64)
        if batch.height:
            self._run(batch, out, score, learn)
        return out

    def _state_keys(self, batch: Batch) -> np.ndarray:
        """Row of the state arrays each record updates (the key id; a shared model overrides it)."""
        return batch.keys

    def flags(self, batch: Batch, scores: np.ndarray) -> np.ndarray:
        """``is_anomaly`` for ``scores``: ``score >= threshold`` and strictly positive."""
        thr = self.definition.threshold
        return (scores >= thr) & (scores > 0.0)

    @abstractmethod
    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        """Write scores into ``out`` (when ``score``) and update state (when ``learn``)."""

    def _output(self, batch: Batch, scores: np.ndarray) -> pl.DataFrame:
        return with_series(  # not with_columns: no polars query per batch (see tidegauge.dataflow.base.without)
            batch.df,
            pl.Series("score", scores, dtype=pl.Float64),
            pl.Series("is_anomaly", self.flags(batch, scores), dtype=pl.Boolean),
            pl.Series("detector", [self.definition.name], dtype=pl.String).new_from_index(0, batch.height),
        )

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        """Score ``df`` against the current state, without learning."""
        batch = self.prepare(df)
        return self._output(batch, self.run(batch, score=True, learn=False))

    def learn(self, df: pl.DataFrame) -> None:
        """Learn ``df`` without scoring it."""
        self.run(self.prepare(df), score=False, learn=True)

    def score_learn(self, df: pl.DataFrame) -> pl.DataFrame:
        """Score each record against the state before it, then learn it (record-at-a-time semantics)."""
        batch = self.prepare(df)
        return self._output(batch, self.run(batch, score=True, learn=True))

    def on_tick(self, now_us: int, watermark: int) -> pl.DataFrame | None:
        """Rows emitted from time alone (only :class:`~tidegauge.detectors.NoData` emits any)."""
        return None

    def _warn_missing(self, fields: Sequence[str], batch: Batch) -> None:
        for f in fields:
            if f not in batch.df.columns and f not in self._missing_warned:
                self._missing_warned.add(f)
                logger.warning("%s: field %r is not in the stream; scored as missing", self.definition.name, f)


def check_fields(fields: Sequence[str] | str, *, minimum: int = 1) -> tuple[str, ...]:
    """Validate a ``fields`` argument (a column name or a list of them)."""
    if isinstance(fields, str):
        fields = [fields]
    if not isinstance(fields, Sequence) or not all(isinstance(f, str) and f for f in fields):
        raise TypeError(f"fields={fields!r}: give a list of column names, e.g. fields=['temperature']")
    out = tuple(dict.fromkeys(fields))
    if len(out) < minimum:
        raise ValueError(f"fields={list(fields)!r}: give at least {minimum} column name(s)")
    return out


def check_positive(name: str, value: object, *, integer: bool = False, upper: float | None = None) -> None:
    """Raise unless ``value`` is a positive number (an ``int`` if ``integer``), at most ``upper``."""
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "a whole number" if integer else "a number"
        raise TypeError(f"{name}={value!r}: give {what} > 0")
    num = float(value)  # type: ignore[arg-type]
    if not num > 0 or (upper is not None and num > upper) or math.isnan(num):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ValueError(f"{name}={value!r}: give a value > 0{bound}")

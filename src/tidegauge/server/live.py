"""The dashboard's live state: a small in-memory picture of the running flow, fed by the flow itself.

:class:`LiveState` keeps, per sensor (indexed by the flow's dense key ids), the latest values, score,
operational status, position and a ring of one-second buckets (mean of each field, top score, anomaly
count) over the last ``history_s`` seconds; fleet-wide, a ring of per-second totals (readings, anomalies,
a latency histogram) and run totals. Three steps feed it from the flow (none emits anything):

- :class:`LiveStep` on the scored readings (they carry ``score``, ``is_anomaly`` and ``latency_ms``),
- :class:`LiveWindowsStep` on a window stream (the latest window row per sensor),
- :class:`LiveDeadLettersStep` on the dead-letter stream (counts by the stage that rejected them).

Everything is vectorised over a batch (one polars group-by and numpy scatter per batch), so the cost per
reading is a few hundred nanoseconds; the dashboard reads snapshots from memory, never Parquet, and the
series it gets are already decimated to one point per second per sensor. Memory: about 7.5 KB per sensor
at the default 300 one-second buckets and five fields (75 MB for 10,000 sensors).

Threads: the flow feeds the state (in its own thread with ``server.flow: thread``) while the server's loop
reads it; every read and write of the arrays, names and counters holds :attr:`LiveState.lock`, so a reader
sees each batch either entirely or not at all.

With ``fields=None`` the charted fields are found in the first batch: its numeric columns, in order, up
to eight (each costs ~1.2 KB per sensor at 300 buckets), leaving out the key and time columns, ``score``,
positions, ``latency_ms`` and the simulator's ``truth_*`` labels.

Sensor status (what the map and the list colour by): ``alert`` when the sensor had an anomaly in the last
``alert_hold_s`` seconds or reports ``operational_status = 'alert'``; ``warning`` when it reports
``warning`` or its last score is at least ``warning_score``; ``normal`` otherwise.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import polars as pl

from tidegauge.dataflow.base import KEY_ID, StepContext

__all__ = ["STATUSES", "LatencyStep", "LiveDeadLettersStep", "LiveState", "LiveStep", "LiveWindowsStep"]

logger = logging.getLogger(__name__)

STATUSES = ("normal", "warning", "alert")
# latency histogram: log-spaced bounds from 0.1 ms to ~100 s, 10 per decade (quantiles within ~12%)
_LAT_BOUNDS = 0.1 * 10 ** (np.arange(61) / 10)
_FLEET_S = 600  # per-second fleet totals kept: 10 minutes for the overview charts
_MAX_FIELDS = 8  # fields found in the first batch: each costs ~1.2 KB per sensor at 300 buckets
_NOT_FIELDS = frozenset({"score", "latitude", "longitude", "latency_ms"})


def _quantile(hist: np.ndarray[Any, Any], q: float) -> float | None:
    total = int(hist.sum())
    if total == 0:
        return None
    i = int(np.searchsorted(np.cumsum(hist), math.ceil(q * total)))
    return float(_LAT_BOUNDS[min(i, len(_LAT_BOUNDS) - 1)])


class LiveState:
    """Latest values, recent decimated series and counters of a running flow (see the module docstring).

    Parameters
    ----------
    fields:
        Value columns to keep series of (``None``: found in the first batch, see the module docstring).
    history_s:
        Seconds of one-second buckets kept per sensor.
    alert_hold_s, warning_score:
        The status thresholds of the module docstring.
    clock:
        Wall-clock seconds (injectable for tests).

    Examples
    --------
    >>> LiveState(["temperature"]).status_counts()
    {'normal': 0, 'warning': 0, 'alert': 0}
    """

    def __init__(self, fields: Sequence[str] | None, *, history_s: int = 300, alert_hold_s: float = 30.0,
                 warning_score: float = 0.999, clock: Callable[[], float] = time.time) -> None:
        if history_s < 10:
            raise ValueError(f"history_s={history_s}: keep at least 10 seconds")
        self._find_fields = fields is None
        self.fields: list[str] = [] if fields is None else list(fields)
        self.history_s = history_s
        self.alert_hold_us = int(alert_hold_s * 1e6)
        self.warning_score = warning_score
        self.clock = clock
        self.lock = threading.Lock()
        self.names: list[str] = []
        self.types: list[str] = []
        self._cap = 0
        self._alloc(64)
        self.fleet_second = np.full(_FLEET_S, -1, dtype=np.int64)
        self.fleet_readings = np.zeros(_FLEET_S, dtype=np.int64)
        self.fleet_anomalies = np.zeros(_FLEET_S, dtype=np.int64)
        self.fleet_latency = np.zeros((_FLEET_S, len(_LAT_BOUNDS)), dtype=np.int64)
        self.latency_total = np.zeros(len(_LAT_BOUNDS), dtype=np.int64)
        self.readings_total = 0
        self.anomalies_total = 0
        self.injected_total = 0
        self.true_positives = 0
        self.dead_by_stage: dict[str, int] = {}
        self.windows: pl.DataFrame | None = None
        self.window_key = "sensor_id"
        self.started = clock()
        self._newest = 0  # newest second in the per-sensor rings

    # -- storage ---------------------------------------------------------------------------------
    def _alloc(self, cap: int) -> None:
        old, n = self._cap, len(self.names)
        b, f = self.history_s, len(self.fields)

        def grow(a: np.ndarray[Any, Any] | None, shape: tuple[int, ...], dtype: Any, fill: Any) -> Any:
            out = np.full(shape, fill, dtype=dtype)
            if a is not None and n:
                out[:n] = a[:n]
            return out

        g = getattr
        self.last = grow(g(self, "last", None), (cap, f), np.float64, np.nan)
        self.last_score = grow(g(self, "last_score", None), (cap,), np.float64, 0.0)
        self.last_seen = grow(g(self, "last_seen", None), (cap,), np.int64, 0)
        self.last_anomaly = grow(g(self, "last_anomaly", None), (cap,), np.int64, -(2**62))
        self.op_status = grow(g(self, "op_status", None), (cap,), np.int8, 0)
        self.lat = grow(g(self, "lat", None), (cap,), np.float64, np.nan)
        self.lon = grow(g(self, "lon", None), (cap,), np.float64, np.nan)
        self.anomaly_count = grow(g(self, "anomaly_count", None), (cap,), np.int64, 0)
        self.b_second = grow(g(self, "b_second", None), (cap, b), np.int64, -1)
        self.b_sum = grow(g(self, "b_sum", None), (cap, b, f), np.float32, 0.0)
        self.b_n = grow(g(self, "b_n", None), (cap, b), np.int32, 0)
        self.b_score = grow(g(self, "b_score", None), (cap, b), np.float32, 0.0)
        self.b_anom = grow(g(self, "b_anom", None), (cap, b), np.int32, 0)
        self._cap = cap
        del old

    def _ensure(self, ids: np.ndarray[Any, Any], ctx: StepContext, df: pl.DataFrame) -> None:
        top = int(ids.max()) + 1
        known = len(self.names)
        if top <= known:
            return
        if top > self._cap:
            self._alloc(max(top, 2 * self._cap))
        new = pl.Series(np.arange(known, top), dtype=pl.UInt32)
        self.names.extend(str(v) for v in ctx.keys.decode(new).to_list())
        self.types.extend([""] * (top - known))
        if "sensor_type" in df.columns:
            first = df.filter(pl.col(KEY_ID) >= known).unique(KEY_ID, keep="first").select(KEY_ID, "sensor_type")
            for i, t in first.iter_rows():
                self.types[int(i)] = "" if t is None else str(t)

    def _found_fields(self, df: pl.DataFrame, ctx: StepContext) -> None:
        skip = {ctx.key_column, ctx.time_column, *_NOT_FIELDS}
        self.fields = [c for c, t in df.schema.items() if t.is_numeric() and c not in skip
                       and not c.startswith(("_tg_", "truth_"))][:_MAX_FIELDS]
        self._find_fields = False
        self._alloc(self._cap)  # no sensor yet: only the field dimension changes
        logger.info("dashboard fields: %s", ", ".join(self.fields) or "none (no numeric column)")

    # -- feeding ---------------------------------------------------------------------------------
    def update(self, df: pl.DataFrame, ctx: StepContext) -> None:
        """Fold one scored batch (with the flow's ``_tg_key`` ids) into the state.

        numpy on the batch's columns (a handful of polars calls cost more than the arithmetic at
        ~1,000-row batches): latest values by fancy assignment (the last row of a sensor wins), the
        per-second buckets by ``np.unique`` + ``np.bincount`` over (sensor, second).
        """
        if not df.height:
            return
        if self._find_fields:
            with self.lock:
                self._found_fields(df, ctx)
        has = set(df.columns)
        ids = df[KEY_ID].to_numpy().astype(np.int64)
        ts = _micros(df[ctx.time_column])
        score = np.nan_to_num(_floats(df["score"]), nan=0.0) if "score" in has else np.zeros(df.height)
        anom = _bools(df["is_anomaly"]) if "is_anomaly" in has else np.zeros(df.height, bool)
        values = {f: _floats(df[f]) for f in self.fields if f in has}
        with self.lock:
            self._ensure(ids, ctx, df)
            self._latest(df, ids, ts, score, anom, values)
            self._buckets(ids, ts, score, anom, values)
            self._fleet(df, ctx, int(anom.sum()), has, anom)

    def _latest(self, df: pl.DataFrame, ids: np.ndarray[Any, Any], ts: np.ndarray[Any, Any],
                score: np.ndarray[Any, Any], anom: np.ndarray[Any, Any], values: dict[str, Any]) -> None:
        for j, f in enumerate(self.fields):
            if f in values:
                self.last[ids, j] = values[f]
        self.last_score[ids] = score
        self.last_seen[ids] = ts
        if "latitude" in df.columns and "longitude" in df.columns:
            self.lat[ids] = _floats(df["latitude"])
            self.lon[ids] = _floats(df["longitude"])
        if "operational_status" in df.columns:
            status = df["operational_status"].to_numpy()
            self.op_status[ids] = np.where(status == "alert", 2, np.where(status == "warning", 1, 0))
        if anom.any():
            k, t = ids[anom], ts[anom]
            np.add.at(self.anomaly_count, k, 1)
            np.maximum.at(self.last_anomaly, k, t)

    def _buckets(self, ids: np.ndarray[Any, Any], ts: np.ndarray[Any, Any], score: np.ndarray[Any, Any],
                 anom: np.ndarray[Any, Any], values: dict[str, Any]) -> None:
        b = self.history_s
        sec = ts // 1_000_000
        newest = self._newest = max(int(sec.max()), self._newest)
        keep = sec > newest - b  # older than the ring: dropped, never overwriting newer slots
        if not keep.all():
            ids, sec, score, anom = ids[keep], sec[keep], score[keep], anom[keep]
            values = {f: v[keep] for f, v in values.items()}
            if not len(ids):
                return
        pair, inv = np.unique(ids * (2**40) + sec, return_inverse=True)
        ps = pair % (2**40)
        flat = (pair // (2**40)) * b + ps % b  # (sensor, slot) as one index into the flattened rings
        second, n, anoms = self.b_second.reshape(-1), self.b_n.reshape(-1), self.b_anom.reshape(-1)
        top_score, sums = self.b_score.reshape(-1), self.b_sum.reshape(-1, len(self.fields))
        stale = second[flat] != ps
        if stale.any():
            old = flat[stale]
            sums[old] = 0.0
            n[old] = anoms[old] = 0
            top_score[old] = 0.0
            second[old] = ps[stale]
        m = len(pair)
        n[flat] += np.bincount(inv, minlength=m).astype(np.int32)
        anoms[flat] += np.bincount(inv, weights=anom, minlength=m).astype(np.int32)
        top = np.zeros(m)
        np.maximum.at(top, inv, score)
        top_score[flat] = np.maximum(top_score[flat], top.astype(np.float32))
        add = np.zeros((m, len(self.fields)), dtype=np.float32)
        for j, f in enumerate(self.fields):
            if f in values:
                v = values[f]
                add[:, j] = np.bincount(inv, weights=np.where(np.isfinite(v), v, 0.0), minlength=m)
        sums[flat] += add

    def _fleet(self, df: pl.DataFrame, ctx: StepContext, n_anom: int, has: set[str],
               anom: np.ndarray[Any, Any]) -> None:
        sec = ctx.now_us // 1_000_000
        slot = sec % _FLEET_S
        if self.fleet_second[slot] != sec:
            self.fleet_second[slot] = sec
            self.fleet_readings[slot] = self.fleet_anomalies[slot] = 0
            self.fleet_latency[slot, :] = 0
        self.fleet_readings[slot] += df.height
        self.fleet_anomalies[slot] += n_anom
        self.readings_total += df.height
        self.anomalies_total += n_anom
        if "truth_anomaly" in has:
            truth = _bools(df["truth_anomaly"])
            self.injected_total += int(truth.sum())
            self.true_positives += int((truth & anom).sum())
        if "latency_ms" in has:
            lat = df["latency_ms"].to_numpy()
            idx = np.clip(np.searchsorted(_LAT_BOUNDS, lat), 0, len(_LAT_BOUNDS) - 1)
            counts = np.bincount(idx, minlength=len(_LAT_BOUNDS))
            self.fleet_latency[slot] += counts
            self.latency_total += counts

    def update_windows(self, df: pl.DataFrame, key: str) -> None:
        """Keep the latest window row of each sensor (``df``: closed windows, in the user's schema)."""
        if not df.height or key not in df.columns:
            return
        with self.lock:
            self.window_key = key
            both = df if self.windows is None else pl.concat([self.windows, df], how="diagonal_relaxed")
            self.windows = both.unique(key, keep="last", maintain_order=False)

    def update_dead_letters(self, df: pl.DataFrame) -> None:
        """Count dead letters by the stage that rejected them."""
        if not df.height or "stage" not in df.columns:
            return
        with self.lock:
            for stage, n in df.group_by("stage").len().iter_rows():
                self.dead_by_stage[str(stage)] = self.dead_by_stage.get(str(stage), 0) + int(n)

    # -- reading ---------------------------------------------------------------------------------
    def statuses(self, now_us: int | None = None) -> np.ndarray[Any, Any]:
        """Status code per sensor (index order): 0 normal, 1 warning, 2 alert."""
        now = int(self.clock() * 1e6) if now_us is None else now_us
        with self.lock:
            n = len(self.names)
            recent = (now - self.last_anomaly[:n]) <= self.alert_hold_us
            warn = (self.op_status[:n] >= 1) | (self.last_score[:n] >= self.warning_score)
            out = np.where(recent | (self.op_status[:n] == 2), 2, np.where(warn, 1, 0))
        return out.astype(np.int8)

    def status_counts(self, codes: np.ndarray[Any, Any] | None = None) -> dict[str, int]:
        codes = self.statuses() if codes is None else codes
        counts = np.bincount(codes.astype(np.int64), minlength=3) if len(codes) else np.zeros(3, dtype=np.int64)
        return {name: int(counts[i]) for i, name in enumerate(STATUSES)}

    def fleet_series(self, seconds: int = 300) -> dict[str, list[Any]]:
        """Per-second readings, anomaly rate and latency p50/p99 over the last complete ``seconds``."""
        now = int(self.clock())
        out: dict[str, list[Any]] = {"t": [], "readings": [], "anomaly_rate": [], "p50_ms": [], "p99_ms": []}
        with self.lock:
            for sec in range(now - min(seconds, _FLEET_S - 1), now):
                if sec < int(self.started):
                    continue
                slot = sec % _FLEET_S
                fresh = self.fleet_second[slot] == sec
                n = int(self.fleet_readings[slot]) if fresh else 0
                out["t"].append(sec * 1000)
                out["readings"].append(n)
                out["anomaly_rate"].append(int(self.fleet_anomalies[slot]) / n if fresh and n else 0.0)
                hist = self.fleet_latency[slot] if fresh else np.zeros(1, dtype=np.int64)
                out["p50_ms"].append(_quantile(hist, 0.5))
                out["p99_ms"].append(_quantile(hist, 0.99))
        return out

    def recent_latency(self, seconds: int = 10) -> tuple[float | None, float | None]:
        """Latency p50/p99 (ms) over the last ``seconds`` complete seconds."""
        now = int(self.clock())
        with self.lock:
            slots = [s % _FLEET_S for s in range(now - seconds, now) if self.fleet_second[s % _FLEET_S] == s]
            hist = self.fleet_latency[slots].sum(axis=0) if slots else np.zeros(1, dtype=np.int64)
        return _quantile(hist, 0.5), _quantile(hist, 0.99)

    def run_latency(self) -> tuple[float | None, float | None]:
        """Latency p50/p99 (ms) over the whole run."""
        with self.lock:
            return _quantile(self.latency_total, 0.5), _quantile(self.latency_total, 0.99)

    def sensor_index(self, name: str) -> int | None:
        with self.lock:
            try:
                return self.names.index(name)
            except ValueError:
                return None

    def totals(self) -> dict[str, Any]:
        """Run totals: readings, anomalies, injected and caught anomalies (simulator labels), dead letters by
        the stage that rejected them."""
        with self.lock:
            return {"readings": self.readings_total, "anomalies": self.anomalies_total,
                    "injected": self.injected_total, "true_positives": self.true_positives,
                    "dead_by_stage": dict(self.dead_by_stage)}

    def sensor_detail(self, i: int, key: str | None = None) -> dict[str, Any]:
        """One sensor: latest values, status, per-second series (oldest first) and its latest window (found
        by ``key``, by default the window stream's key column)."""
        codes = self.statuses()
        with self.lock:
            key = key or self.window_key
            order = np.argsort(self.b_second[i])
            secs = self.b_second[i][order]
            valid = secs >= 0
            order, secs = order[valid], secs[valid]
            n = self.b_n[i][order]
            means = self.b_sum[i][order] / np.maximum(n, 1)[:, None]
            series: dict[str, Any] = {"t": (secs * 1000).tolist(),
                                      "score": np.round(self.b_score[i][order], 4).tolist(),
                                      "anomalies": self.b_anom[i][order].tolist(), "n": n.tolist()}
            series["fields"] = {f: [None if not math.isfinite(v) else round(float(v), 4) for v in means[:, j]]
                                for j, f in enumerate(self.fields)}
            last = {f: (None if not math.isfinite(v) else float(v)) for f, v in zip(self.fields, self.last[i],
                                                                                   strict=True)}
            window = None
            if self.windows is not None:
                row = self.windows.filter(pl.col(key) == self.names[i])
                if row.height:
                    window = {k: (v.isoformat() if hasattr(v, "isoformat") else v)
                              for k, v in row.row(0, named=True).items()}
            return {"id": self.names[i], "sensor_type": self.types[i] if i < len(self.types) else "",
                    "latitude": _num(self.lat[i]), "longitude": _num(self.lon[i]),
                    "status": STATUSES[int(codes[i])], "score": float(self.last_score[i]),
                    "last_seen": int(self.last_seen[i] // 1000), "anomalies_total": int(self.anomaly_count[i]),
                    "last": last, "series": series, "window": window}

    def sensors(self) -> dict[str, Any]:
        """Every sensor's id, type and position (index order, which the status strings follow)."""
        with self.lock:
            n = len(self.names)
            return {"ids": list(self.names), "types": list(self.types[:n]),
                    "lat": [_num(v) for v in self.lat[:n]], "lon": [_num(v) for v in self.lon[:n]]}


# Series -> numpy without polars expressions: each expression on a Series runs a small query, which costs
# more than the arithmetic on a ~1,000-row batch
def _floats(s: pl.Series) -> np.ndarray[Any, Any]:
    out = s.to_numpy() if s.dtype == pl.Float64 else s.cast(pl.Float64).to_numpy()
    return np.asarray(out, dtype=np.float64)  # nulls arrive as NaN


def _bools(s: pl.Series) -> np.ndarray[Any, Any]:
    if s.null_count():
        s = s.fill_null(False)
    return np.asarray(s.to_numpy(), dtype=bool)


def _micros(s: pl.Series) -> np.ndarray[Any, Any]:
    if s.dtype == pl.Datetime("us", "UTC") or s.dtype == pl.Datetime("us"):
        return np.asarray(s.to_numpy(), dtype="datetime64[us]").view(np.int64)
    return np.asarray(s.dt.epoch("us").to_numpy(), dtype=np.int64)


def _num(v: Any) -> float | None:
    f = float(v)
    return round(f, 5) if math.isfinite(f) else None


class _Feed:
    """Step logic that feeds a :class:`LiveState` and emits nothing."""

    def __init__(self, fn: Callable[[pl.DataFrame, StepContext], None]) -> None:
        self.fn = fn

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        try:
            self.fn(df, ctx)
        except Exception:  # the live view must never stop the flow; the history store stays complete
            logger.exception("live state update failed on a batch of %d rows", df.height)
        return None

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        return None

    def snapshot(self) -> Any:
        return None


class LiveStep:
    """Step feeding scored readings to ``state`` (terminal: emits nothing; not checkpointed).

    ``latency``: ``"column"`` takes each reading's latency from its ``latency_ms`` column (a
    :class:`LatencyStep` upstream); ``"arrival"`` measures it here when the column is missing (wall clock at
    this step minus event time), without adding a column to the stream.
    """

    snapshot_type = None
    observes_only = True
    """emits nothing and keeps no state: not part of the flow's checkpoint fingerprint"""

    def __init__(self, state: LiveState, *, latency: Literal["column", "arrival"] = "column") -> None:
        if latency not in ("column", "arrival"):
            raise ValueError(f"latency={latency!r}: use 'column' or 'arrival'")
        self.state = state
        self.latency = latency

    def build(self, resume_state: Any | None) -> _Feed:
        if self.latency == "column":
            return _Feed(self.state.update)
        def feed(df: pl.DataFrame, ctx: StepContext) -> None:
            self.state.update(df if "latency_ms" in df.columns else _with_latency(df, ctx), ctx)

        return _Feed(feed)


class LiveWindowsStep:
    """Step keeping the latest window row per key in ``state``."""

    snapshot_type = None
    observes_only = True

    def __init__(self, state: LiveState) -> None:
        self.state = state

    def build(self, resume_state: Any | None) -> _Feed:
        return _Feed(lambda df, ctx: self.state.update_windows(df, ctx.key_column))


class LiveDeadLettersStep:
    """Step counting dead letters by stage in ``state``."""

    snapshot_type = None
    observes_only = True

    def __init__(self, state: LiveState) -> None:
        self.state = state

    def build(self, resume_state: Any | None) -> _Feed:
        return _Feed(lambda df, ctx: self.state.update_dead_letters(df))


def _with_latency(df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame:
    now = time.time_ns() // 1000  # wall clock, not the flow clock: latency is a real-time measure
    return df.with_columns(((now - pl.col(ctx.time_column).dt.epoch("us")) / 1000.0).alias("latency_ms"))


class _Latency:
    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        return _with_latency(df, ctx)

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        return None

    def snapshot(self) -> Any:
        return None


class LatencyStep:
    """Adds ``latency_ms``: wall-clock time of this step minus each reading's event time, in milliseconds.

    Put it right after the detect step: its figure is the time from a reading's timestamp to its score.
    """

    snapshot_type = None

    def build(self, resume_state: Any | None) -> _Latency:
        return _Latency()

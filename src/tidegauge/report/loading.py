"""Reading one run of the history store, cut to a time range.

A run directory (``<data-dir>/run-<UTC %Y%m%dT%H%M%S>/``) holds, each optional:

``readings.parquet``
    every scored reading (``score``, ``is_anomaly``, ``truth_*``, ``latency_ms`` when the run wrote them);
    while the run is going, its committed parts are in ``readings.parquet.parts/part-*.parquet``;
``windows_1m.parquet``, ``windows_5m.parquet``
    window results (``sensor_id, window_start, window_end, <field>_<agg>``);
``dead_letters.jsonl``
    rejected records (``reason, stage, payload, rejected_at``);
``alerts.sqlite``
    the alert manager's store, read through :class:`~tidegauge.alerting.store.AlertStore`;
``edge.parquet``
    edge heartbeats (``node_id, timestamp, status, availability, battery_pct, cpu_pct, memory_pct, outbox_depth``).

A part that is absent, empty or unreadable becomes a :class:`Part` with ``data=None`` and a ``note`` saying
why, so the report can say so in place of the figure.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Generic, TypeVar

import polars as pl

from tidegauge._time import to_micros
from tidegauge.alerting.lifecycle import Alert
from tidegauge.errors import TidegaugeError

__all__ = ["Part", "RunData", "as_of", "find_run", "load_run", "read_table"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_RUN = re.compile(r"^run-\d{8}T\d{6}$")
_PART = re.compile(r"^part-\d{10}-\d{5}\.(parquet|jsonl|csv)$")
WINDOW_FILES = ("windows_1m", "windows_5m")
FIELDS = ("temperature", "humidity", "pressure", "vibration", "power_consumption")
"""The reading's value columns, plotted per sensor when present."""
READING_COLUMNS = ("sensor_id", "sensor_type", "timestamp", *FIELDS, "operational_status", "score", "is_anomaly",
                   "truth_anomaly", "truth_type", "latency_ms")
"""The reading columns the report uses (the rest, e.g. latitude/longitude, stay on disk)."""


@dataclass(frozen=True)
class Part(Generic[T]):
    """One optional part of a run: its data cut to the range, or ``None`` and the reason in ``note``."""

    data: T | None
    note: str = ""
    source: str = ""
    exists: bool = True
    """whether the run has this part at all (an existing but empty part counts zero, not "missing")"""


@dataclass(frozen=True)
class RunData:
    """Everything the report reads from one run, already cut to ``[start, end)``."""

    run_dir: Path
    start: datetime | None
    end: datetime | None
    readings: Part[pl.DataFrame]
    windows: dict[str, Part[pl.DataFrame]]
    dead_letters: Part[pl.DataFrame]
    alerts: Part[list[Alert]]
    edge: Part[pl.DataFrame]


def find_run(data_dir: str | Path, run: str | None = None) -> Path:
    """The run directory ``run`` under ``data_dir`` (a name or a path), or the newest run there.

    Raises
    ------
    TidegaugeError
        No such run, or no run at all under ``data_dir``.
    """
    base = Path(data_dir)
    if run is not None:
        for candidate in (Path(run), base / run):
            if candidate.is_dir():
                return candidate
        raise TidegaugeError(f"run {run!r}: no such directory (looked at {run} and {base / run}); "
                             f"list the runs with `ls {base}`")
    if not base.is_dir():
        raise TidegaugeError(f"{base}: no history store here; run `tidegauge demo` first or pass --data-dir")
    runs = sorted(p for p in base.iterdir() if p.is_dir() and _RUN.match(p.name))
    if not runs:
        raise TidegaugeError(f"{base}: no run-<time> directories in it; run `tidegauge demo` first or pass --run")
    return runs[-1]


def _parts(final: Path) -> list[Path]:
    parts_dir = final.with_name(final.name + ".parts")
    if not parts_dir.is_dir():
        return []
    return sorted(p for p in parts_dir.iterdir() if _PART.match(p.name))


def read_table(final: Path) -> tuple[pl.LazyFrame | None, str]:
    """A FileSink output as one lazy frame: the final file after a clean stop, else its committed parts.

    The final file is the concatenation of the parts written at close; it is used when it is at least as
    new as every part (a run still going, or one that died, has parts newer than any final file).
    Returns ``(frame, where it came from)``, or ``(None, why)`` when there is nothing to read.
    """
    parts = _parts(final)
    use_final = final.is_file() and (not parts or final.stat().st_mtime >= max(p.stat().st_mtime for p in parts))
    files = [final] if use_final else parts
    if not files:
        return None, f"{final.name} is not in this run"
    frames = []
    skipped = []
    for f in files:
        try:
            if f.suffix == ".jsonl":
                if f.stat().st_size == 0:
                    continue
                lf = pl.scan_ndjson(f)
            else:
                lf = pl.scan_parquet(f)
            if lf.collect_schema().len():
                frames.append(lf)
        except (pl.exceptions.PolarsError, OSError) as exc:
            logger.warning("%s: unreadable, skipped: %s", f, exc)
            skipped.append(f.name)
    where = final.name if use_final else f"{len(parts)} committed parts of {final.name} (run still going or not closed)"
    if skipped:
        where += f"; {len(skipped)} unreadable, left out: {', '.join(skipped[:5])}"
    if not frames:
        return None, f"{final.name} is unreadable ({where})" if skipped else f"{final.name} is empty"
    return (frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")), where


def _utc(schema: pl.Schema, column: str) -> pl.Expr:
    """``column`` as a UTC microsecond datetime (naive values are taken as UTC, strings parsed)."""
    dtype = schema[column]
    if isinstance(dtype, pl.Datetime):
        expr = pl.col(column).dt.cast_time_unit("us")
        return expr.dt.replace_time_zone("UTC") if dtype.time_zone is None else expr.dt.convert_time_zone("UTC")
    return pl.col(column).cast(pl.String).str.to_datetime(time_unit="us", time_zone="UTC", strict=False)


def _table(run_dir: Path, name: str, time_column: str, start: datetime | None, end: datetime | None,
           required: tuple[str, ...] = (), columns: tuple[str, ...] | None = None) -> Part[pl.DataFrame]:
    """``name`` cut to ``start <= time_column < end``, collected (only ``columns`` of it, when given)."""
    lf, where = read_table(run_dir / name)
    exists = lf is not None or (run_dir / name).exists()
    if lf is None:
        return Part(None, where, exists=exists)
    schema = lf.collect_schema()
    missing = [c for c in (time_column, *required) if c not in schema]
    if missing:
        return Part(None, f"{name} has no {', '.join(missing)} column (columns: {', '.join(schema.names())})",
                    where, exists)
    if columns is not None:
        lf = lf.select([c for c in schema.names() if c in columns or c in required or c == time_column])
    lf = lf.with_columns(_utc(schema, time_column))
    cond = pl.lit(True)
    if start is not None:
        cond = cond & (pl.col(time_column) >= start)
    if end is not None:
        cond = cond & (pl.col(time_column) < end)
    try:
        cut = lf.filter(cond).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:  # a file damaged past its footer
        logger.warning("%s: unreadable: %s", name, exc)
        return Part(None, f"{name} is unreadable: {exc}", where, exists)
    if cut.height == 0:
        if start is None and end is None:
            return Part(None, f"{name} has no rows", where, exists)
        total = lf.select(pl.len()).collect().item()
        return Part(None, f"{name} has no rows in this time range ({total:,} outside it)", where, exists)
    return Part(cut, "", where, exists)


def _alerts(run_dir: Path, start: datetime | None, end: datetime | None) -> Part[list[Alert]]:
    path = run_dir / "alerts.sqlite"
    if not path.is_file():
        return Part(None, "alerts.sqlite is not in this run (no alerting in it)", exists=False)
    from tidegauge.alerting.store import AlertStore

    store = AlertStore(path)
    try:
        alerts = store.load_alerts()
    finally:
        store.close()
    lo = to_micros(start) if start is not None else None
    hi = to_micros(end) if end is not None else None
    # an alert belongs to the range when its episode overlaps it: it became active before the end and
    # lasted (until it resolved, or until the manager last updated it while still open) past the start
    kept = [a for a in alerts
            if (hi is None or a.active_since < hi)
            and (lo is None or (a.resolved_at if a.resolved_at is not None else a.updated_at) >= lo)]
    if not kept:
        return Part([], f"no alerts in this time range ({len(alerts)} outside it)" if alerts else "no alerts raised",
                    "alerts.sqlite")
    if hi is not None:
        kept = [as_of(a, hi) for a in kept]
    return Part(kept, "", "alerts.sqlite")


def as_of(alert: Alert, at_us: int) -> Alert:
    """``alert`` as it stood at ``at_us``: a later resolution or firing is undone (the store keeps only each
    alert's latest episode, so an earlier episode of the same alert cannot be recovered)."""
    if alert.resolved_at is not None and alert.resolved_at >= at_us:
        alert = replace(alert, state="firing", resolved_at=None)
    if alert.fired_at is not None and alert.fired_at >= at_us:
        alert = replace(alert, state="pending", fired_at=None)
    return alert


def load_run(run_dir: Path, start: datetime | None = None, end: datetime | None = None) -> RunData:
    """Read every part of ``run_dir`` cut to ``[start, end)`` (event time; alerts by their episode)."""
    for name, t in (("start", start), ("end", end)):
        if t is not None and t.tzinfo is None:
            raise ValueError(f"{name}={t!r} is naive; pass a timezone-aware datetime (e.g. tzinfo=UTC)")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end {end.isoformat()} is not after start {start.isoformat()}; swap them or widen the range")
    readings = _table(run_dir, "readings.parquet", "timestamp", start, end, required=("sensor_id",),
                      columns=READING_COLUMNS)
    windows = {w: _table(run_dir, f"{w}.parquet", "window_start", start, end) for w in WINDOW_FILES}
    dead = _table(run_dir, "dead_letters.jsonl", "rejected_at", start, end, required=("reason",))
    edge = _table(run_dir, "edge.parquet", "timestamp", start, end, required=("node_id",))
    if not edge.exists:
        edge = Part(None, "edge.parquet is not in this run (no edge agents reported)", exists=False)
    return RunData(run_dir, start, end, readings, windows, dead, _alerts(run_dir, start, end), edge)

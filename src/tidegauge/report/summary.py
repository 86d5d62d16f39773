"""The numbers of a report: a summary table per part, the time series the figures plot, the top sensors.

Everything is computed with polars from :class:`~tidegauge.report.loading.RunData`; the figures and the HTML
only present it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from tidegauge.report.loading import RunData

__all__ = ["Section", "Stat", "choose_bucket", "summarize", "time_series", "top_sensors"]

logger = logging.getLogger(__name__)

_NICE_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
"""Bucket sizes a reader takes in at a glance (seconds)."""
_TARGET_BUCKETS = 150  # enough points for a smooth line, few enough that each bar stays visible


@dataclass(frozen=True)
class Stat:
    """One row of a summary table: ``value`` is the raw number (tests read it), ``text`` what people read."""

    key: str
    label: str
    value: int | float | str | None
    text: str


@dataclass
class Section:
    """A titled group of stats; ``note`` says why it is empty when the part is missing."""

    title: str
    stats: list[Stat] = field(default_factory=list)
    note: str = ""

    def add(self, key: str, label: str, value: int | float | str | None, text: str | None = None) -> None:
        if text is None:
            if value is None:
                text = "n/a"
            elif isinstance(value, bool):
                text = str(value)
            elif isinstance(value, int):
                text = f"{value:,}"
            elif isinstance(value, float):
                text = f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
            else:
                text = value
        self.stats.append(Stat(key, label, value, text))


def choose_bucket(span_us: int) -> int:
    """A round bucket size (microseconds) cutting ``span_us`` into at most about 150 buckets.

    >>> choose_bucket(75_000_000) // 1_000_000  # a 75 s run: 1 s buckets
    1
    >>> choose_bucket(3_600_000_000) // 1_000_000  # an hour: 30 s buckets
    30
    """
    for s in _NICE_S:
        if span_us / (s * 1_000_000) <= _TARGET_BUCKETS:
            return s * 1_000_000
    return _NICE_S[-1] * 1_000_000


def time_series(readings: pl.DataFrame, bucket_us: int) -> pl.DataFrame:
    """Per bucket of event time from the first reading: ``bucket`` (start), ``readings``, ``anomalous``,
    ``injected`` (when labelled), ``seconds`` (the time the bucket covers) and ``rate`` (readings/s).

    Buckets with no readings are present with zero counts. The last bucket usually covers less than
    ``bucket_us``; its rate is over the part it covers, so the line does not dip at the end.
    """
    us = pl.col("timestamp").dt.epoch("us")
    t0 = int(readings.select(us.min()).item())
    t1 = int(readings.select(us.max()).item())
    aggs = [pl.len().alias("readings")]
    if "is_anomaly" in readings.columns:
        aggs.append(pl.col("is_anomaly").fill_null(False).sum().alias("anomalous"))
    if "truth_anomaly" in readings.columns:
        aggs.append(pl.col("truth_anomaly").fill_null(False).sum().alias("injected"))
    counts = (readings.group_by(((us - t0) // bucket_us).alias("i")).agg(aggs))
    n = (t1 - t0) // bucket_us + 1
    grid = pl.DataFrame({"i": pl.int_range(0, n, eager=True, dtype=pl.Int64)})
    out = grid.join(counts.with_columns(pl.col("i").cast(pl.Int64)), on="i", how="left").fill_null(0).sort("i")
    # mean spacing between readings: the last bucket covers up to the last reading plus one such step
    step = (t1 - t0) / max(readings.height - 1, 1)
    last_cover = min(float(bucket_us), (t1 - t0) - (n - 1) * bucket_us + step)
    if last_cover <= 0:  # one reading, or all at one instant: no spacing to measure; count it over a bucket
        last_cover = float(bucket_us)
    seconds = pl.when(pl.col("i") == n - 1).then(pl.lit(last_cover)).otherwise(pl.lit(float(bucket_us))) / 1e6
    return out.with_columns(
        (pl.col("i") * bucket_us + t0).cast(pl.Datetime("us", "UTC")).alias("bucket"),
        seconds.alias("seconds"),
    ).with_columns((pl.col("readings") / pl.col("seconds")).alias("rate")).drop("i")


def top_sensors(readings: pl.DataFrame, n: int) -> pl.DataFrame:
    """The ``n`` most anomalous sensors: most readings flagged, then highest score, then by id.

    Columns ``sensor_id``, ``anomalous`` (when flagged), ``max_score`` (when scored), ``readings``.
    """
    aggs = [pl.len().alias("readings")]
    order = []
    if "is_anomaly" in readings.columns:
        aggs.append(pl.col("is_anomaly").fill_null(False).sum().alias("anomalous"))
        order.append("anomalous")
    if "score" in readings.columns:
        aggs.append(pl.col("score").max().alias("max_score"))
        order.append("max_score")
    per = readings.group_by("sensor_id").agg(aggs)
    return per.sort([*order, "sensor_id"], descending=[True] * len(order) + [False], nulls_last=True).head(n)


def _quantile(s: pl.Series, q: float) -> float | None:
    v = s.quantile(q, interpolation="linear")
    return None if v is None else float(v)


def _readings(run: RunData, series: pl.DataFrame | None) -> list[Section]:
    r = run.readings.data
    sec = Section("Readings")
    ano = Section("Anomalies")
    lat = Section("Latency")
    if r is None or series is None:
        sec.note = ano.note = lat.note = run.readings.note
        return [sec, ano, lat]
    us = r["timestamp"].dt.epoch("us")
    lo, hi = int(us.min()), int(us.max())  # type: ignore[arg-type]
    first, last = (datetime.fromtimestamp(t / 1e6, tz=UTC) for t in (lo, hi))
    span_s = (hi - lo) / 1e6
    sec.add("readings", "readings", r.height)
    sec.add("sensors", "sensors", r["sensor_id"].n_unique())
    sec.add("first", "first reading (UTC)", first.isoformat(), f"{first:%Y-%m-%d %H:%M:%S}")
    sec.add("last", "last reading (UTC)", last.isoformat(), f"{last:%Y-%m-%d %H:%M:%S}")
    sec.add("span_s", "span (s)", round(span_s, 3), f"{span_s:,.1f}")
    # n readings evenly spaced over span_s arrive at (n - 1) / span_s per second (the figure's mean agrees)
    mean_rate = (r.height - 1) / span_s if span_s > 0 else None
    sec.add("mean_rate", "mean readings/s", mean_rate, None if mean_rate is None else f"{mean_rate:,.0f}")
    peak = float(series["rate"].max()) if series.height else None  # type: ignore[arg-type]
    sec.add("peak_rate", "peak readings/s (one bucket)", peak, None if peak is None else f"{peak:,.0f}")
    sec.add("source", "read from", run.readings.source)
    if "is_anomaly" in r.columns:
        flagged = int(r["is_anomaly"].fill_null(False).sum())
        ano.add("anomalous", "readings flagged anomalous", flagged)
        ano.add("normal", "readings not flagged", r.height - flagged)
        ano.add("anomaly_rate", "share flagged", flagged / r.height, f"{flagged / r.height:.2%}")
        ano.add("anomalous_sensors", "sensors with a flagged reading",
                r.filter(pl.col("is_anomaly").fill_null(False))["sensor_id"].n_unique())
    else:
        ano.note = "the readings have no is_anomaly column (no detector in this run)"
    if "truth_anomaly" in r.columns:
        truth = r["truth_anomaly"].fill_null(False)
        ano.add("injected", "readings in injected episodes (simulator labels)", int(truth.sum()))
        if "is_anomaly" in r.columns:
            hit = int((truth & r["is_anomaly"].fill_null(False)).sum())
            flagged = int(r["is_anomaly"].fill_null(False).sum())
            ano.add("true_positive", "flagged and injected", hit)
            ano.add("precision", "precision (per reading)", hit / flagged if flagged else None,
                    f"{hit / flagged:.1%}" if flagged else "n/a")
            ano.add("recall", "recall (per reading)", hit / int(truth.sum()) if truth.sum() else None,
                    f"{hit / int(truth.sum()):.1%}" if truth.sum() else "n/a")
    scores = r["score"].drop_nulls() if "score" in r.columns else pl.Series([], dtype=pl.Float64)
    if scores.len():
        ano.add("score_mean", "mean score", float(scores.mean()))  # type: ignore[arg-type]
        ano.add("score_p99", "score p99", _quantile(scores, 0.99))
    if "latency_ms" in r.columns and r["latency_ms"].drop_nulls().len():
        ms = r["latency_ms"].drop_nulls()
        lat.add("latency_n", "readings with a latency", ms.len())
        for q, key in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
            v = _quantile(ms, q)
            lat.add(f"latency_{key}", f"{key} (ms)", v, "n/a" if v is None else f"{v:,.2f}")
        mx = float(ms.max())  # type: ignore[arg-type]
        lat.add("latency_max", "max (ms)", mx, f"{mx:,.2f}")
    else:
        lat.note = "the readings have no latency_ms column (this run did not record processing latency)"
    return [sec, ano, lat]


def _alerts(run: RunData) -> Section:
    sec = Section("Alerts")
    alerts = run.alerts.data
    if alerts is None or not alerts:
        sec.note = run.alerts.note
        if alerts is not None:
            sec.add("alerts", "alerts", 0)
        return sec
    sec.add("alerts", "alerts", len(alerts))
    for state in ("firing", "pending", "resolved"):
        sec.add(f"alerts_{state}", state, sum(a.state == state for a in alerts))
    for sev, k in sorted(Counter(a.severity for a in alerts).items()):
        sec.add(f"severity_{sev}", f"severity {sev}", k)
    for rule, k in sorted(Counter(a.rule for a in alerts).items()):
        sec.add(f"rule_{rule}", f"rule {rule}", k)
    return sec


def _others(run: RunData) -> list[Section]:
    win = Section("Windows")
    for name, part in run.windows.items():
        if part.data is not None:
            win.add(name, f"{name} results", part.data.height)
        elif part.exists:
            win.add(name, f"{name} results", 0, f"0 ({part.note})")
        else:
            win.add(name, f"{name} results", None, part.note)
    dead = Section("Dead letters")
    d = run.dead_letters.data
    if d is not None:
        dead.add("dead_letters", "dead letters", d.height)
        by = d.group_by("reason").len().sort(["len", "reason"], descending=[True, False])
        for reason, k in by.head(8).iter_rows():
            dead.add(f"reason_{reason}", str(reason), int(k))
    elif run.dead_letters.exists:
        dead.add("dead_letters", "dead letters", 0)
    else:
        dead.note = run.dead_letters.note
    edge = Section("Edge nodes")
    e = run.edge.data
    if e is None:
        edge.note = run.edge.note
    else:
        edge.add("edge_nodes", "nodes", e["node_id"].n_unique())
        edge.add("heartbeats", "heartbeats", e.height)
        if "status" in e.columns:
            latest = e.sort("timestamp").group_by("node_id").last()
            for status, k in sorted(Counter(latest["status"].cast(pl.String).to_list()).items()):
                edge.add(f"edge_status_{status}", f"nodes {status} at their last heartbeat", k)
        if "availability" in e.columns:
            mean = e["availability"].mean()
            v = None if mean is None else float(mean)  # type: ignore[arg-type]
            edge.add("edge_availability", "mean availability", v, "n/a" if v is None else f"{v:.1%}")
    return [win, dead, edge]


def summarize(run: RunData, series: pl.DataFrame | None) -> list[Section]:
    """The summary tables of ``run`` (each section notes why it is empty when its part is missing)."""
    return [*_readings(run, series), _alerts(run), *_others(run)]

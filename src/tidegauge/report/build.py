"""``build_report``: read a run, compute the summary, draw every figure, write the PNGs, the HTML page and a
JSON summary into one directory."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from tidegauge.report import figures as F
from tidegauge.report import figures_detail as D
from tidegauge.report.html import FigureEntry, frame_table, render_html
from tidegauge.report.loading import RunData, find_run, load_run
from tidegauge.report.summary import Section, choose_bucket, summarize, time_series, top_sensors

__all__ = ["ReportConfig", "ReportResult", "build_report"]

logger = logging.getLogger(__name__)

_MAX_TOP = 50  # one PNG per sensor: beyond a few dozen the page stops being a report
_MAX_ALERT_ROWS = 50  # rows of the alert table; the figure and the summary count all of them


def _utc(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, tz=UTC)


class ReportConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What to report on.

    Parameters
    ----------
    data_dir:
        The history store (the demo's ``--data-dir``).
    run:
        A run directory name under ``data_dir`` (or a path); default the newest ``run-*``.
    start, end:
        The event-time range ``[start, end)``, timezone-aware; default the whole run.
    out:
        Where the HTML and PNGs go; default ``<run>/report``.
    top:
        How many of the most anomalous sensors get their own series figure.
    """

    data_dir: str = "tidegauge-data"
    run: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    out: str | None = None
    top: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.top, bool) or not isinstance(self.top, int) or not 0 <= self.top <= _MAX_TOP:
            raise ValueError(f"top={self.top!r}: give a number of sensors from 0 to {_MAX_TOP}")
        for name in ("start", "end"):
            t = getattr(self, name)
            if t is not None and (not isinstance(t, datetime) or t.tzinfo is None):
                raise ValueError(f"{name}={t!r}: pass a timezone-aware datetime (e.g. 2026-01-01T12:00:00Z)")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")


@dataclass(frozen=True)
class ReportResult:
    """Where the report went: the page, each drawn figure's PNG, and why the others were not drawn."""

    html: Path
    pngs: dict[str, Path]
    missing: dict[str, str]
    sections: list[Section]
    run_dir: Path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]


def _clear_previous(out: Path) -> None:
    """Remove the PNGs a previous report in ``out`` listed (its top sensors may differ from this one's)."""
    manifest = out / "report.json"
    if not manifest.is_file():
        return
    try:
        old = json.loads(manifest.read_text(encoding="utf-8")).get("figures", {})
    except (json.JSONDecodeError, OSError):
        return
    for entry in old.values():
        png = entry.get("png") if isinstance(entry, dict) else None
        if isinstance(png, str) and "/" not in png and png.endswith(".png"):
            (out / png).unlink(missing_ok=True)


def _draw(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png", facecolor="white")


def _figures(run: RunData, series: pl.DataFrame | None, bucket_us: int, top: pl.DataFrame | None
             ) -> list[tuple[str, str, str, Any]]:
    """``(name, title, caption, figure or note)`` for every figure, in page order."""
    r = run.readings.data
    no_readings = f"no readings: {run.readings.note}"
    out: list[tuple[str, str, str, Any]] = []
    out.append(("throughput", "Throughput", "Readings per second of event time, per bucket; dashed: the mean.",
                F.throughput_figure(series, bucket_us) if r is not None and series is not None else no_readings))
    out.append(("latency", "Processing latency", "Histogram of each reading's processing latency (latency_ms).",
                F.latency_figure(r) if r is not None else no_readings))
    out.append(("anomalies", "Normal vs anomalous readings",
                "Left: readings per bucket, not flagged vs flagged by the detector (log scale), and the readings "
                "the simulator injected as anomalous. Right: the share flagged and injected per sensor type.",
                F.anomalies_figure(r, series, bucket_us) if r is not None and series is not None else no_readings))
    out.append(("scores", "Anomaly score distribution",
                "Histogram of the detector's score per reading (log count scale), by simulator label when present.",
                F.scores_figure(r) if r is not None else no_readings))
    alerts = run.alerts.data
    out.append(("alerts", "Alerts by rule and severity",
                "Alerts whose episode overlaps the range, by rule (type) and by their state at the end of the "
                "range, coloured by severity (the store keeps each alert's latest episode).",
                F.alerts_figure(alerts) if alerts else f"no alerts figure: {run.alerts.note}"))
    if r is not None and top is not None:
        for sensor in top["sensor_id"].to_list():
            out.append((f"sensor-{_safe(sensor)}", f"Sensor {sensor}",
                        "Each field over time; red points: readings flagged anomalous; shaded: injected episodes.",
                        D.sensor_figure(r, sensor)))
    elif r is None:
        out.append(("sensors", "Most anomalous sensors", "", no_readings))
    elif not ("is_anomaly" in r.columns or "score" in r.columns):
        out.append(("sensors", "Most anomalous sensors", "",
                    "no sensor figures: the readings have no score or is_anomaly column to rank sensors by"))
    e = run.edge.data
    out.append(("edge", "Edge nodes", "Status, availability, battery, CPU/memory and outbox depth per node.",
                D.edge_figure(e) if e is not None else f"no edge figure: {run.edge.note}"))
    return out


def _tables(run: RunData, top: pl.DataFrame | None) -> list[str]:
    tables = []
    if top is not None and top.height:
        tables.append("<h2>Most anomalous sensors</h2>" + frame_table(top, f"top {top.height} by readings flagged",
                                                                       css_id="top-sensors"))
    alerts = run.alerts.data
    if alerts:
        rank = {s: i for i, s in enumerate(("critical", "major", "minor", "warning", "info"))}
        shown = sorted(alerts, key=lambda a: (rank.get(a.severity, 9), -a.active_since))[:_MAX_ALERT_ROWS]
        rows = pl.DataFrame({
            "rule": [a.rule for a in shown], "severity": [a.severity for a in shown],
            "state": [a.state for a in shown],
            "labels": [", ".join(f"{k}={v}" for k, v in sorted(a.labels.items())
                                 if k not in ("alertname", "severity")) for a in shown],
            "active_since": [_utc(a.active_since) for a in shown],
            "resolved_at": [_utc(a.resolved_at) for a in shown],
            "summary": [a.annotations.get("summary", "") for a in shown],
        }, schema_overrides={"active_since": pl.Datetime("us", "UTC"), "resolved_at": pl.Datetime("us", "UTC")})
        more = f" (the first {_MAX_ALERT_ROWS} of {len(alerts)})" if len(alerts) > _MAX_ALERT_ROWS else ""
        tables.append("<h2>Alerts</h2>" + frame_table(rows, f"by severity, newest first{more}", css_id="alerts"))
    e = run.edge.data
    if e is not None:
        cols = [c for c in ("node_id", "timestamp", "status", "availability", "battery_pct", "cpu_pct",
                            "memory_pct", "outbox_depth") if c in e.columns]
        latest = e.sort("timestamp").group_by("node_id").last().select(cols).sort("node_id")
        tables.append("<h2>Edge nodes at their last heartbeat</h2>"
                      + frame_table(latest.rename({"timestamp": "last_heartbeat"}), "latest heartbeat per node",
                                    css_id="edge-nodes"))
    return tables


def build_report(config: ReportConfig, *, now: datetime | None = None) -> ReportResult:
    """Write the report of one run; see :class:`ReportConfig`. ``now`` stamps the page (default: the clock)."""
    run_dir = find_run(config.data_dir, config.run)
    run = load_run(run_dir, config.start, config.end)
    out = Path(config.out) if config.out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    series: pl.DataFrame | None = None
    top: pl.DataFrame | None = None
    bucket_us = 1_000_000
    r = run.readings.data
    if r is not None:
        us = r["timestamp"].dt.epoch("us")
        bucket_us = choose_bucket(int(us.max()) - int(us.min()))  # type: ignore[arg-type]
        series = time_series(r, bucket_us)
        ranked = "is_anomaly" in r.columns or "score" in r.columns
        top = top_sensors(r, config.top) if config.top and ranked else None
    sections = summarize(run, series)
    pngs: dict[str, Path] = {}
    missing: dict[str, str] = {}
    entries: list[FigureEntry] = []
    for name, title, caption, fig in _figures(run, series, bucket_us, top):
        if isinstance(fig, str):
            missing[name] = fig
            entries.append(FigureEntry(name, title, caption, None, fig))
            logger.info("report: %s", fig)
            continue
        path = out / f"{name}.png"
        _draw(fig, path)
        pngs[name] = path
        entries.append(FigureEntry(name, title, caption, path))
    stamp = (now or datetime.now(UTC)).astimezone(UTC)
    shown = (f"{config.start.isoformat() if config.start else 'start of run'} to "
             f"{config.end.isoformat() if config.end else 'end of run'}")
    meta = [f"run {run_dir.name} ({run_dir})", f"range: {shown} (event time, UTC)",
            f"generated {stamp:%Y-%m-%d %H:%M:%S} UTC"]
    page = render_html(title=f"tidegauge report: {run_dir.name}", meta=meta, sections=sections, figures=entries,
                       tables=_tables(run, top))
    html_path = out / "report.html"
    tmp = html_path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(html_path)
    manifest = {
        "run": str(run_dir), "start": config.start.isoformat() if config.start else None,
        "end": config.end.isoformat() if config.end else None, "generated": stamp.isoformat(),
        "summary": [asdict(s) for s in sections],
        "figures": {e.name: {"title": e.title, "png": e.png.name if e.png else None, "note": e.note}
                    for e in entries},
    }
    (out / "report.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    return ReportResult(html_path, pngs, missing, sections, run_dir)

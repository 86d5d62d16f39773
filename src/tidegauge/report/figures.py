"""The fleet-wide figures of a report, drawn with matplotlib's object API (Agg canvas, no display, no pyplot
global state): throughput, latency, normal vs anomalous readings, score distribution, alerts.

Each function returns a :class:`~matplotlib.figure.Figure`, or a string saying why the figure cannot be
drawn from this run (the report prints it in the figure's place).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from tidegauge.alerting.lifecycle import Alert
from tidegauge.errors import MissingDependencyError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["COLORS", "alerts_figure", "anomalies_figure", "latency_figure", "new_figure", "scores_figure",
           "throughput_figure", "time_axis"]

logger = logging.getLogger(__name__)

COLORS = {"normal": "#4c72b0", "anomalous": "#c44e52", "injected": "#dd8452", "line": "#333333",
          "grid": "#dddddd"}
SEVERITY_COLORS = {"critical": "#b2182b", "major": "#e66101", "minor": "#fdb863", "warning": "#f1c232",
                   "info": "#5e9ed6"}
_SEVERITY_ORDER = ("critical", "major", "minor", "warning", "info")


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas (``constrained`` layout keeps labels from overlapping)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "report") from exc
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax: Axes) -> None:
    ax.grid(True, color=COLORS["grid"], linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def time_axis(ax: Axes, *, label: bool = True) -> None:
    """Concise date ticks (``12:05``, ``:10``, ...) that never overlap, and the axis label."""
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=4, maxticks=9)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    if label:
        ax.set_xlabel("event time (UTC)")


def _bucket_text(bucket_us: int) -> str:
    s = bucket_us // 1_000_000
    return f"{s // 3600} h" if s % 3600 == 0 and s >= 3600 else f"{s // 60} min" if s % 60 == 0 and s >= 60 \
        else f"{s} s"


def _steps(series: pl.DataFrame, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step-plot coordinates of per-bucket ``values``: the last bucket's value repeated at its end, so the
    last (or only) bucket is drawn over its width too."""
    x = series["bucket"].to_numpy()
    end = x[-1] + np.timedelta64(int(series["seconds"][-1] * 1e6), "us")
    return np.append(x, end), np.append(values, values[-1])


def throughput_figure(series: pl.DataFrame, bucket_us: int) -> Figure:
    """Readings per second over event time, per bucket, with the mean over the range."""
    fig = new_figure(10, 3.6)
    ax = fig.add_subplot()
    x, rate = _steps(series, series["rate"].to_numpy())
    ax.step(x, rate, where="post", color=COLORS["normal"], linewidth=1.4, label="readings/s")
    ax.fill_between(x, rate, step="post", color=COLORS["normal"], alpha=0.15)
    ax.set_xlim(x[0], x[-1])
    total, seconds = float(series["readings"].sum()), float(series["seconds"].sum())
    mean = total / seconds if seconds else 0.0
    ax.axhline(mean, color=COLORS["line"], linestyle="--", linewidth=1, label=f"mean {mean:,.0f}/s")
    ax.set_ylim(0, max(float(rate.max()) * 1.15, 1.0))
    ax.set_ylabel("readings per second")
    ax.set_title(f"Throughput ({_bucket_text(bucket_us)} buckets of event time)")
    ax.yaxis.set_major_formatter(_thousands())
    time_axis(ax)
    ax.legend(loc="lower right", frameon=False)
    _style(ax)
    return fig


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:,.0f}" if abs(v) >= 1000 or v == int(v) else f"{v:g}")


def latency_figure(readings: pl.DataFrame) -> Figure | str:
    """Histogram of per-reading processing latency (``latency_ms``), p50 and p99 marked."""
    if "latency_ms" not in readings.columns:
        return "no latency figure: the readings have no latency_ms column (this run did not record latency)"
    ms = readings["latency_ms"].drop_nulls().drop_nans().to_numpy()
    ms = ms[np.isfinite(ms) & (ms >= 0)]
    if ms.size == 0:
        return "no latency figure: latency_ms is empty in this range"
    fig = new_figure(10, 3.6)
    ax = fig.add_subplot()
    lo = float(ms[ms > 0].min()) if (ms > 0).any() else 1e-3
    hi = float(ms.max())
    log = hi / lo > 100
    bins = (np.geomspace(lo, hi * 1.0001, 60) if log else np.linspace(0, max(hi, 1e-3) * 1.0001, 60)).tolist()
    ax.hist(np.clip(ms, lo, None) if log else ms, bins=bins, color=COLORS["normal"], alpha=0.85)
    if log:
        ax.set_xscale("log")
    for q, style in ((50, "--"), (99, ":")):
        v = float(np.percentile(ms, q))
        ax.axvline(v, color=COLORS["anomalous"], linestyle=style, linewidth=1.5, label=f"p{q} {v:,.2f} ms")
    ax.set_xlabel("processing latency per reading (ms" + (", log scale)" if log else ")"))
    ax.set_ylabel("readings")
    ax.yaxis.set_major_formatter(_thousands())
    ax.set_title(f"Processing latency ({ms.size:,} readings)")
    ax.legend(frameon=False)
    _style(ax)
    return fig


def anomalies_figure(readings: pl.DataFrame, series: pl.DataFrame, bucket_us: int) -> Figure | str:
    """Normal vs anomalous readings over time (log scale, so the few anomalies stay visible), and the
    share flagged per sensor type beside the share injected by the simulator."""
    if "is_anomaly" not in readings.columns:
        return "no normal/anomalous figure: the readings have no is_anomaly column (no detector in this run)"
    fig = new_figure(12, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=[2.2, 1])
    seconds = series["seconds"].to_numpy()
    lines = [("readings", "normal", "-", "normal"), ("anomalous", "anomalous", "-", "flagged anomalous"),
             ("injected", "injected", "--", "injected (simulator)")]
    for col, color, style, label in lines:
        if col not in series.columns:
            continue
        v = series[col].to_numpy() - (series["anomalous"].to_numpy() if col == "readings" else 0)
        x, y = _steps(series, v / seconds)
        left.step(x, np.where(y > 0, y, np.nan), where="post", color=COLORS[color], linestyle=style, label=label)
    left.set_xlim(x[0], x[-1])
    left.set_yscale("log")
    left.set_ylabel("readings per second (log)")
    left.set_title(f"Normal vs anomalous readings over time ({_bucket_text(bucket_us)} buckets)")
    time_axis(left)
    left.legend(frameon=False, loc="lower right", fontsize=9)
    _style(left)
    group = "sensor_type" if "sensor_type" in readings.columns else None
    aggs = [pl.col("is_anomaly").fill_null(False).mean().alias("flagged")]
    if "truth_anomaly" in readings.columns:
        aggs.append(pl.col("truth_anomaly").fill_null(False).mean().alias("injected"))
    per = (readings.group_by(group).agg(aggs).sort(group) if group
           else readings.select(aggs).with_columns(pl.lit("all").alias("sensor_type")))
    names = per["sensor_type"].cast(pl.String).to_list()
    y = np.arange(len(names))
    h = 0.38 if "injected" in per.columns else 0.7
    bars = right.barh(y - (h / 2 if "injected" in per.columns else 0), per["flagged"].to_numpy() * 100, height=h,
                      color=COLORS["anomalous"], label="flagged")
    right.bar_label(bars, fmt="%.1f%%", fontsize=8, padding=2)
    if "injected" in per.columns:
        bars = right.barh(y + h / 2, per["injected"].to_numpy() * 100, height=h, color=COLORS["injected"],
                          label="injected")
        right.bar_label(bars, fmt="%.1f%%", fontsize=8, padding=2)
    right.set_yticks(y, names)
    right.invert_yaxis()
    right.set_xlabel("share of readings (%)")
    right.set_xlim(0, max(float(per.select(pl.exclude("sensor_type")).max_horizontal().max()) * 100 * 1.3,  # type: ignore[arg-type]
                          1.0))
    right.set_title("Anomalous share by sensor type")
    right.legend(frameon=False, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2)
    _style(right)
    return fig


def scores_figure(readings: pl.DataFrame) -> Figure | str:
    """Distribution of the detector's ``score`` (log count scale), split by the simulator's label when
    present, else by the detector's flag; the lowest flagged score marked."""
    if "score" not in readings.columns:
        return "no score figure: the readings have no score column (no detector in this run)"
    df = readings.filter(pl.col("score").is_not_null() & pl.col("score").is_finite())
    if df.height == 0:
        return "no score figure: every score is null in this range"
    by = "truth_anomaly" if "truth_anomaly" in df.columns else "is_anomaly" if "is_anomaly" in df.columns else None
    labels = {"truth_anomaly": ("normal (simulator label)", "injected anomaly"),
              "is_anomaly": ("not flagged", "flagged anomalous")}
    fig = new_figure(10, 3.8)
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 51).tolist()
    if by is None:
        ax.hist(df["score"].to_numpy(), bins=bins, color=COLORS["normal"], label="all readings")
    else:
        # overlaid, not stacked: on a log scale the few anomalous readings would vanish on top of the rest
        flag = df[by].fill_null(False)
        ax.hist(df["score"].filter(~flag).to_numpy(), bins=bins, color=COLORS["normal"], alpha=0.75,
                label=labels[by][0])
        ax.hist(df["score"].filter(flag).to_numpy(), bins=bins, histtype="step", linewidth=1.8,
                color=COLORS["anomalous"], label=labels[by][1])
    ax.set_yscale("log")
    if "is_anomaly" in df.columns and df["is_anomaly"].fill_null(False).any():
        low = float(df.filter(pl.col("is_anomaly"))["score"].min())  # type: ignore[arg-type]
        ax.axvline(low, color=COLORS["line"], linestyle="--", linewidth=1, label=f"lowest flagged score {low:.2f}")
    ax.set_ylim(top=ax.get_ylim()[1] * 12)  # headroom above the tallest bar for the legend
    ax.set_xlim(0, 1)
    ax.set_xlabel("anomaly score (0 = normal, 1 = most anomalous)")
    ax.set_ylabel("readings (log)")
    ax.set_title(f"Anomaly score distribution ({df.height:,} readings)")
    ax.legend(frameon=False, loc="upper center", ncols=3)
    _style(ax)
    return fig


def _severity_order(severities: set[str]) -> list[str]:
    return [s for s in _SEVERITY_ORDER if s in severities] + sorted(severities.difference(_SEVERITY_ORDER))


def alerts_figure(alerts: list[Alert]) -> Figure | str:
    """Alerts by rule (type), stacked by severity; and by state, stacked by severity."""
    if not alerts:
        return "no alerts figure: no alerts in this time range"
    sev = _severity_order({a.severity for a in alerts})
    rules = sorted({a.rule for a in alerts}, key=lambda r: (-sum(a.rule == r for a in alerts), r))
    states = [s for s in ("firing", "pending", "resolved") if any(a.state == s for a in alerts)]
    by_rule: Counter[tuple[str, str]] = Counter((a.rule, a.severity) for a in alerts)
    by_state: Counter[tuple[str, str]] = Counter((str(a.state), a.severity) for a in alerts)
    fig = new_figure(12, max(3.2, 0.45 * len(rules) + 1.6))
    left, right = fig.subplots(1, 2, width_ratios=[2, 1])
    for ax, cats, counts, title in ((left, rules, by_rule, "Alerts by rule"),
                                    (right, states, by_state, "Alerts by state at the end of the range")):
        y = np.arange(len(cats))
        base = np.zeros(len(cats))
        for s in sev:
            v = np.array([counts.get((c, s), 0) for c in cats], dtype=np.float64)
            if v.any():
                ax.barh(y, v, left=base, color=SEVERITY_COLORS.get(s, "#999999"),
                        label=s if ax is left else None, height=0.6)
            base += v
        for yi, total in zip(y, base, strict=True):
            ax.annotate(f"{int(total):,}", (total, yi), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=9)
        ax.set_yticks(y, cats)
        ax.invert_yaxis()
        ax.set_xlim(0, max(base.max() * 1.15, 1))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("alerts")
        ax.set_title(title)
        _style(ax)
    left.legend(title="severity", frameon=False, loc="lower right", fontsize=9)
    return fig

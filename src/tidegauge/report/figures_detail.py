"""The detailed figures of a report: one sensor's series with its anomalies marked, and the edge nodes.

Like :mod:`tidegauge.report.figures`, each function returns a figure or a string saying why it cannot be drawn.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from tidegauge.report.figures import COLORS, new_figure, time_axis
from tidegauge.report.loading import FIELDS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["MAX_POINTS", "edge_figure", "sensor_figure"]

logger = logging.getLogger(__name__)

MAX_POINTS = 1_200
"""Readings drawn as a plain line in a sensor panel (about the ~950 pixels of its width); a denser series
is drawn as its min-max band over :data:`ENVELOPE_BINS` slices, with the mean. Flagged readings are always
drawn, each as a point."""
ENVELOPE_BINS = 400
_MAX_SPANS = 400  # shaded injected episodes per panel; beyond that they are merged into wider spans
_MAX_NODES = 12  # edge nodes drawn one line each (with a legend); more would be an unreadable tangle
_STATUS_COLORS = {"online": "#2ca02c", "up": "#2ca02c", "ok": "#2ca02c", "healthy": "#2ca02c",
                  "degraded": "#f1c232", "syncing": "#5e9ed6", "offline": "#c44e52", "down": "#c44e52"}
_UNITS = {"temperature": "°C", "humidity": "%", "pressure": "hPa", "vibration": "g", "power_consumption": "W"}


def _style(ax: Axes) -> None:
    ax.grid(True, color=COLORS["grid"], linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _envelope(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(time, min, max, mean)`` of ``v`` in :data:`ENVELOPE_BINS` equal slices of the readings (sorted by
    time), nulls dropped: the band a dense series fills, with its extremes kept."""
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    edges = np.linspace(0, t.size, ENVELOPE_BINS + 1).astype(np.int64)[:-1]
    edges = np.unique(edges)
    return (t[edges], np.minimum.reduceat(v, edges), np.maximum.reduceat(v, edges),
            np.add.reduceat(v, edges) / np.diff(np.append(edges, t.size)))


def _series(ax: Axes, t: np.ndarray, v: np.ndarray) -> None:
    """A line when the points fit the width; otherwise the min-max band with the mean through it."""
    if t.size <= MAX_POINTS:
        ax.plot(t, v, color=COLORS["normal"], linewidth=0.8)
        return
    tb, lo, hi, mean = _envelope(t, v)
    ax.fill_between(tb, lo, hi, step="post", color=COLORS["normal"], alpha=0.3, linewidth=0)
    ax.step(tb, mean, where="post", color=COLORS["normal"], linewidth=0.8)


def _spans(times: np.ndarray, flag: np.ndarray) -> list[tuple[np.datetime64, np.datetime64]]:
    """``(start, end)`` of each run of consecutive flagged readings (sorted by time)."""
    if not flag.any():
        return []
    f = flag.astype(np.int8)
    edges = np.diff(np.concatenate([[0], f, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    if len(starts) > _MAX_SPANS:  # merge neighbours so the figure stays drawable
        step = -(-len(starts) // _MAX_SPANS)
        starts, ends = starts[::step], np.append(ends[step - 1::step], ends[-1])[: len(starts[::step])]
    return [(times[s], times[e]) for s, e in zip(starts, ends, strict=True)]


def sensor_figure(readings: pl.DataFrame, sensor_id: str) -> Figure | str:
    """Every value field of one sensor over time, the score below; flagged readings as red points and the
    simulator's injected episodes shaded."""
    df = readings.filter(pl.col("sensor_id") == sensor_id).sort("timestamp")
    if df.height == 0:
        return f"no readings of {sensor_id} in this range"
    fields = [f for f in FIELDS if f in df.columns and df[f].drop_nulls().len()]
    rows = fields + (["score"] if "score" in df.columns else [])
    if not rows:
        return f"{sensor_id}: no value columns to plot"
    flagged = df["is_anomaly"].fill_null(False) if "is_anomaly" in df.columns else pl.Series([False] * df.height)
    truth = df["truth_anomaly"].fill_null(False).to_numpy() if "truth_anomaly" in df.columns else None
    times = df["timestamp"].to_numpy()
    spans = _spans(times, truth) if truth is not None else []
    marks = df.filter(flagged)
    fig = new_figure(11, 1.45 * len(rows) + 1.2)
    axes = fig.subplots(len(rows), 1, sharex=True, squeeze=False)[:, 0]
    for i, (ax, col) in enumerate(zip(axes, rows, strict=True)):
        for s, e in spans:
            ax.axvspan(s, e, color=COLORS["injected"], alpha=0.22, linewidth=0,
                       label="injected episode" if i == 0 and (s, e) == spans[0] else None)
        _series(ax, times, df[col].cast(pl.Float64).fill_null(np.nan).to_numpy())
        if marks.height:
            ax.scatter(marks["timestamp"].to_numpy(), marks[col].to_numpy(), s=12, color=COLORS["anomalous"],
                       zorder=3, label="flagged anomalous" if i == 0 else None)
        unit = _UNITS.get(col)
        ax.set_ylabel(col.replace("_", " ") + (f"\n({unit})" if unit else ""), fontsize=9)
        if col == "score":
            ax.set_ylim(-0.05, 1.05)
        _style(ax)
    time_axis(axes[-1])
    kind = f" ({df['sensor_type'][0]})" if "sensor_type" in df.columns else ""
    title = f"{sensor_id}{kind}: {int(flagged.sum()):,} of {df.height:,} readings flagged"
    if "score" in df.columns and df["score"].drop_nulls().len():
        title += f", max score {float(df['score'].max()):.2f}"  # type: ignore[arg-type]
    axes[0].set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper right", ncols=2, frameon=False, fontsize=9)
    return fig


def _status_panel(ax: Axes, e: pl.DataFrame, nodes: list[str]) -> None:
    """One bar per node, coloured by the status each heartbeat reported until the next one."""
    from matplotlib.lines import Line2D

    seen: dict[str, str] = {}
    for y, node in enumerate(nodes):
        d = e.filter(pl.col("node_id") == node).sort("timestamp")
        t = d["timestamp"].to_numpy()
        if t.size == 0:
            continue
        gap = np.median(np.diff(t)) if t.size > 1 else np.timedelta64(1, "s")
        status = d["status"].cast(pl.String).fill_null("unknown").to_list()
        # one segment per run of equal status, from its first heartbeat to the next run's first
        starts = [0] + [i for i in range(1, len(status)) if status[i] != status[i - 1]]
        for k, i in enumerate(starts):
            s = status[i]
            end = t[starts[k + 1]] if k + 1 < len(starts) else t[-1] + gap
            color = seen.setdefault(s, _STATUS_COLORS.get(s.lower(), f"C{len(seen) % 10}"))
            ax.hlines(y, t[i], end, colors=color, linewidth=10)
    ax.set_yticks(range(len(nodes)), nodes, fontsize=8)
    ax.set_ylim(len(nodes) - 0.5, -0.5)
    ax.set_ylabel("status", fontsize=9)
    ax.legend([Line2D([], [], color=c, linewidth=6) for c in seen.values()], list(seen), frameon=False,
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    _style(ax)
    ax.grid(False, axis="y")


def edge_figure(edge: pl.DataFrame) -> Figure | str:
    """Edge nodes over time: status, availability, battery, CPU/memory and outbox depth (the panels the
    heartbeats have columns for)."""
    panels = [c for c in ("status", "availability", "battery_pct", "cpu_pct", "memory_pct", "outbox_depth")
              if c in edge.columns and edge[c].drop_nulls().len()]
    if not panels:
        return "no edge figure: edge.parquet has none of status, availability, battery_pct, cpu_pct, " \
               "memory_pct, outbox_depth"
    nodes = sorted(edge["node_id"].cast(pl.String).unique().to_list())
    note = ""
    if len(nodes) > _MAX_NODES:
        if "availability" in edge.columns:
            worst = edge.group_by("node_id").agg(pl.col("availability").mean()).sort(["availability", "node_id"])
            nodes = sorted(worst["node_id"].head(_MAX_NODES).to_list())
        else:
            nodes = nodes[:_MAX_NODES]
        note = f" ({_MAX_NODES} of {edge['node_id'].n_unique()} nodes: lowest availability)"
    e = edge.filter(pl.col("node_id").is_in(nodes))
    fig = new_figure(11, 1.7 * len(panels) + 1.0)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    labels = {"availability": "availability (%)", "battery_pct": "battery (%)", "cpu_pct": "CPU (%)",
              "memory_pct": "memory (%)", "outbox_depth": "outbox depth\n(records)"}
    for ax, col in zip(axes, panels, strict=True):
        if col == "status":
            _status_panel(ax, e, nodes)
            continue
        scale = 100.0 if col == "availability" else 1.0
        for i, node in enumerate(nodes):
            d = e.filter(pl.col("node_id") == node).sort("timestamp")
            ax.plot(d["timestamp"].to_numpy(), d[col].to_numpy() * scale, linewidth=1.1, color=f"C{i % 10}",
                    label=node)
        ax.set_ylabel(labels[col], fontsize=9)
        if col != "outbox_depth":
            ax.set_ylim(-3, 103)
        _style(ax)
    first_line = next((ax for ax, c in zip(axes, panels, strict=True) if c != "status"), None)
    if first_line is not None:
        first_line.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    time_axis(axes[-1])
    axes[0].set_title(f"Edge nodes{note}")
    return fig

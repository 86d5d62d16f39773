"""Static reports of a run from the history store: one HTML page with its figures embedded, and the PNGs
beside it.

The contract: :func:`build_report` reads one ``run-*`` directory (see :mod:`tidegauge.report.loading` for
its files) cut to an event-time range and draws throughput over time, the latency histogram, normal vs
anomalous readings, the anomaly score distribution, alerts by rule and severity, the series of the ``top``
most anomalous sensors with their anomalies marked, and the edge nodes' status. A part the run lacks (no
latency column, no alert store, no edge heartbeats, an older run) is named on the page in place of its
figure; it never fails the report. Figures need matplotlib: ``pip install 'tidegauge[report]'``.

From the command line: ``tidegauge report [--data-dir DIR] [--run RUN] [--start ISO] [--end ISO] [--out DIR]``.
"""

from __future__ import annotations

from tidegauge.report.build import ReportConfig, ReportResult, build_report
from tidegauge.report.loading import Part, RunData, find_run, load_run, read_table
from tidegauge.report.summary import Section, Stat

__all__ = [
    "Part",
    "ReportConfig",
    "ReportResult",
    "RunData",
    "Section",
    "Stat",
    "build_report",
    "find_run",
    "load_run",
    "read_table",
]

"""``tidegauge report``: a static HTML report (figures embedded, PNGs beside it) of one run of the history
store, for an event-time range."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tidegauge.cli import app

__all__ = ["parse_time", "report"]

logger = logging.getLogger(__name__)


def parse_time(text: str | None, *, name: str) -> datetime | None:
    """An ISO 8601 time (``2026-03-01T12:05:00Z``, ``2026-03-01 12:05``); UTC when it has no offset.

    >>> parse_time("2026-03-01T13:05:00+01:00", name="--start").isoformat()
    '2026-03-01T12:05:00+00:00'
    """
    if text is None or not text.strip():
        return None
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not an ISO 8601 time; write e.g. 2026-03-01T12:05:00Z") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@app.command()
def report(
    data_dir: Annotated[Path, typer.Option(help="The history store (the demo's --data-dir).",
                                           envvar="TIDEGAUGE_DATA_DIR", show_envvar=True)] = Path("tidegauge-data"),
    run: Annotated[str | None, typer.Option(help="Run directory name under --data-dir, or a path "
                                                 "(default: the newest run).",
                                            envvar="TIDEGAUGE_REPORT_RUN", show_envvar=True)] = None,
    start: Annotated[str | None, typer.Option(help="Report from this event time (ISO 8601; UTC when no offset) "
                                                   "(default: the start of the run).",
                                              envvar="TIDEGAUGE_REPORT_START", show_envvar=True)] = None,
    end: Annotated[str | None, typer.Option(help="Report up to this event time, excluded "
                                                 "(default: the end of the run).",
                                            envvar="TIDEGAUGE_REPORT_END", show_envvar=True)] = None,
    out: Annotated[Path | None, typer.Option(help="Directory for report.html and the PNGs (default: <run>/report).",
                                             envvar="TIDEGAUGE_REPORT_OUT", show_envvar=True)] = None,
    top: Annotated[int, typer.Option(help="Series figures for this many of the most anomalous sensors.",
                                     envvar="TIDEGAUGE_REPORT_TOP", show_envvar=True)] = 5,
) -> None:
    """Write a static report of a run: throughput, latency, anomalies, scores, alerts, sensors, edge."""
    from tidegauge.report import ReportConfig, build_report

    config = ReportConfig(data_dir=str(data_dir), run=run, start=parse_time(start, name="--start"),
                          end=parse_time(end, name="--end"), out=None if out is None else str(out), top=top)
    result = build_report(config)
    console = Console()
    console.print(f"report of {result.run_dir}: {result.html}", highlight=False, soft_wrap=True)
    console.print(f"{len(result.pngs)} PNGs in {result.html.parent}: "
                  + ", ".join(p.name for p in result.pngs.values()), highlight=False, soft_wrap=True)
    notes: dict[str, list[str]] = {}
    for name, why in result.missing.items():
        notes.setdefault(why, []).append(name)
    for why, names in notes.items():
        console.print(f"  not drawn ({', '.join(names)}): {why}", highlight=False, soft_wrap=True)

"""``tidegauge simulate``: write a simulated IoT fleet to a CSV, JSONL or Parquet file, or publish it
(``--to mqtt://...``, ``nats://...``, ``redis://...``, ``http(s)://...``) at ``--rate``."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tidegauge._time import parse_duration
from tidegauge.cli import app
from tidegauge.simulate import FaultConfig, FleetConfig, write_readings

__all__ = ["parse_start", "simulate"]

logger = logging.getLogger(__name__)

_PROGRESS_MIN_ROWS = 1_000_000
"""Below this a run takes well under a second: a progress bar would only flicker."""


def _env(name: str) -> str:
    return f"TIDEGAUGE_SIM_{name}"


def parse_start(text: str) -> datetime:
    """``"now"`` or an ISO 8601 time with a zone (``2024-01-01T00:00:00Z``) as an aware UTC datetime."""
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--start {text!r} is not a time; pass 'now' or ISO 8601 like 2024-01-01T00:00:00Z"
        ) from None
    if value.tzinfo is None:
        raise ValueError(f"--start {text!r} has no time zone; add one, e.g. {text}Z or {text}+00:00")
    return value.astimezone(UTC)


@app.command()
def simulate(
    sensors: Annotated[
        int, typer.Option(envvar=_env("SENSORS"), show_envvar=True, help="Number of sensors.")
    ] = 200,
    rate: Annotated[
        float,
        typer.Option(envvar=_env("RATE"), show_envvar=True, help="Readings per second across the fleet."),
    ] = 2000.0,
    duration: Annotated[
        str | None,
        typer.Option(
            envvar=_env("DURATION"), show_envvar=True, help="Event time to cover, e.g. 60s, 5m (default 60s)."
        ),
    ] = None,
    rows: Annotated[
        int | None,
        typer.Option(envvar=_env("ROWS"), show_envvar=True, help="Rows to write (instead of --duration)."),
    ] = None,
    anomaly_rate: Annotated[
        float,
        typer.Option(
            envvar=_env("ANOMALY_RATE"), show_envvar=True, help="Share of each sensor's time in anomalies."
        ),
    ] = 0.02,
    seed: Annotated[int, typer.Option(envvar=_env("SEED"), show_envvar=True, help="Random seed.")] = 0,
    start: Annotated[
        str,
        typer.Option(
            envvar=_env("START"), show_envvar=True, help="First event time: 'now' or ISO 8601 with zone."
        ),
    ] = "now",
    output: Annotated[
        Path,
        typer.Option(envvar=_env("OUTPUT"), show_envvar=True, help="Output file: .parquet, .csv or .jsonl."),
    ] = Path("readings.parquet"),
    out_of_order: Annotated[
        float,
        typer.Option(envvar=_env("OUT_OF_ORDER"), show_envvar=True, help="Fraction out of order (< 5s)."),
    ] = 0.0,
    late: Annotated[
        float, typer.Option(envvar=_env("LATE"), show_envvar=True, help="Fraction late by 10-20 minutes.")
    ] = 0.0,
    duplicates: Annotated[
        float,
        typer.Option(envvar=_env("DUPLICATES"), show_envvar=True, help="Fraction of readings sent twice."),
    ] = 0.0,
    malformed: Annotated[
        float, typer.Option(envvar=_env("MALFORMED"), show_envvar=True, help="Fraction made unparsable.")
    ] = 0.0,
    future: Annotated[
        float, typer.Option(envvar=_env("FUTURE"), show_envvar=True, help="Fraction stamped 1-2 hours ahead.")
    ] = 0.0,
    realtime: Annotated[
        bool, typer.Option(envvar=_env("REALTIME"), show_envvar=True, help="Pace writing to --rate.")
    ] = False,
    to: Annotated[
        str | None,
        typer.Option(
            "--to", envvar=_env("TO"), show_envvar=True,
            help="Publish instead of writing a file, paced to --rate: mqtt://host:port/topic-template, "
            "nats://host:port/subject, redis://host:port/stream-key or http(s)://host:port/api/v1/ingest.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar=_env("TOKEN"), show_envvar=True,
                     help="Bearer token for http(s) targets (NATS token / Redis password otherwise)."),
    ] = None,
    batch: Annotated[
        int, typer.Option(envvar=_env("BATCH"), show_envvar=True, help="Readings per message/request with --to.")
    ] = 500,
) -> None:
    """Simulate an IoT fleet with labelled anomalies (and injected faults) into a file."""
    faults = FaultConfig(
        out_of_order=out_of_order, late=late, duplicates=duplicates, malformed=malformed, future=future
    )
    config = FleetConfig(
        sensors=sensors,
        rate=rate,
        anomaly_rate=anomaly_rate,
        seed=seed,
        start=parse_start(start),
        faults=faults,
    )
    if rows is not None and duration is not None:
        raise ValueError("pass either --rows or --duration, not both")
    if rows is None:
        parse_duration(duration or "60s", name="--duration")  # the name of the flag in the message
        total = config.readings_for(duration or "60s")
    elif rows < 0:
        raise ValueError(f"--rows {rows} must be >= 0")
    else:
        total = rows
    if to is not None:
        from tidegauge.simulate.publish import publish_readings

        sent = publish_readings(to, config, rows=total, rate=rate, batch=batch, token=token)
        Console(soft_wrap=True, highlight=False).print(sent.line())
        return
    show = sys.stdout.isatty() and (total >= _PROGRESS_MIN_ROWS or realtime)
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not show,
        transient=True,
    ) as bar:
        task = bar.add_task("rows", total=total)
        summary = write_readings(
            output,
            config,
            rows=total,
            paced=realtime,
            progress=lambda done: bar.update(task, completed=done),
        )
    Console(soft_wrap=True, highlight=False).print(summary.line())

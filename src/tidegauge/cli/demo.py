"""``tidegauge demo``: a simulated fleet through the engine, live, in one command.

The simulator (paced to ``--rate``) feeds a flow that scores every reading with the default anomaly
detector (when the detectors are installed), computes 1-minute and 5-minute windows, and writes
readings, windows and dead letters under ``--data-dir``. Stops on Ctrl-C or after ``--duration`` and
prints a summary.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live

from tidegauge._time import parse_duration
from tidegauge.cli import app

logger = logging.getLogger(__name__)

FIELDS = ["temperature", "vibration", "power_consumption"]


@app.command()
def demo(
    sensors: Annotated[int, typer.Option(help="Simulated sensors.", envvar="TIDEGAUGE_DEMO_SENSORS",
                                         show_envvar=True)] = 200,
    rate: Annotated[float, typer.Option(help="Readings per second across the fleet.",
                                        envvar="TIDEGAUGE_DEMO_RATE", show_envvar=True)] = 2000.0,
    duration: Annotated[str, typer.Option(help="Stop after this long (e.g. 30s); 0 runs until Ctrl-C.",
                                          envvar="TIDEGAUGE_DEMO_DURATION", show_envvar=True)] = "0",
    data_dir: Annotated[Path, typer.Option(help="Where readings, windows and dead letters are written.",
                                           envvar="TIDEGAUGE_DATA_DIR", show_envvar=True)] = Path("tidegauge-data"),
    seed: Annotated[int, typer.Option(help="Simulator seed.", envvar="TIDEGAUGE_DEMO_SEED",
                                      show_envvar=True)] = 42,
) -> None:
    """Run a simulated fleet through windows and anomaly detection, live."""
    from tidegauge.connectors.files import FileSink
    from tidegauge.connectors.simulator import SimulatorSource
    from tidegauge.dataflow import CheckpointConfig, Flow, Runner, WatermarkConfig
    from tidegauge.simulate import FleetConfig
    from tidegauge.windows import Tumbling

    stop_after = parse_duration(duration, name="--duration") / 1e6
    run_dir = data_dir / datetime.now(UTC).strftime("run-%Y%m%dT%H%M%S")
    fleet = FleetConfig(sensors=sensors, rate=rate, seed=seed, start=datetime.now(UTC))
    flow = Flow("demo", watermark=WatermarkConfig.of(max_delay="2s", idle_timeout="5s"))
    readings = flow.source(SimulatorSource(fleet, paced=True))
    detector = _default_detector()
    if detector is not None:
        readings = readings.detect(detector, name="detect")
    readings.sink(FileSink(run_dir / "readings.parquet"), name="readings")
    aggs: dict[str, Any] = {f: ["count", "mean", "min", "max", "p99"] for f in FIELDS}
    if detector is not None:
        aggs["score"] = ["max", "mean"]
    readings.window(Tumbling("1m"), aggs, name="window_1m").sink(FileSink(run_dir / "windows_1m.parquet"),
                                                                 name="windows_1m")
    readings.window(Tumbling("5m"), aggs, name="window_5m").sink(FileSink(run_dir / "windows_5m.parquet"),
                                                                 name="windows_5m")
    flow.dead_letters().sink(FileSink(run_dir / "dead_letters.jsonl"), name="dead_letter_file")
    run_dir.mkdir(parents=True, exist_ok=True)
    # checkpoints every 5 s also commit the sinks, so the files under run_dir fill up while it runs
    runner = Runner(flow, max_delay="20ms", checkpoint=CheckpointConfig(run_dir / "state", interval="5s"))
    console = Console()
    console.print(f"tidegauge demo: {sensors} sensors at {rate:,.0f} readings/s -> {run_dir}  (Ctrl-C to stop)")

    def _stop(signum: int, frame: object) -> None:
        runner.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    started = time.monotonic()

    async def main() -> Any:
        task = asyncio.create_task(runner.run_async())
        with Live(console=console, refresh_per_second=2, transient=True) as live:
            while not task.done():
                await asyncio.sleep(0.5)
                m = runner.metrics
                elapsed = time.monotonic() - started
                n = sum(m.records_in.values())
                live.update(f"{elapsed:6.1f}s  {n:,} readings ({n / max(elapsed, 1e-9):,.0f}/s)  "
                            f"windows {m.records_out['windows_1m']:,}  dead letters {m.dead_letters_total:,}")
                if stop_after and elapsed >= stop_after:
                    runner.stop()
        return await task

    result = asyncio.run(main())
    _summary(console, result, run_dir, time.monotonic() - started)


def _default_detector() -> Any:
    try:
        from tidegauge.detectors import default_detector
    except ImportError:
        return None
    return default_detector(fields=FIELDS)


def _summary(console: Console, result: Any, run_dir: Path, elapsed: float) -> None:
    import polars as pl

    readings_path = run_dir / "readings.parquet"
    found = injected = None
    if readings_path.exists():
        df = pl.read_parquet(readings_path)
        injected = int(df["truth_anomaly"].sum()) if "truth_anomaly" in df.columns else None
        found = int(df["is_anomaly"].sum()) if "is_anomaly" in df.columns else None
    console.print(f"[bold]summary[/] after {elapsed:.1f}s: {result.records_in:,} readings "
                  f"({result.records_in / max(elapsed, 1e-9):,.0f}/s), "
                  f"{result.records_out.get('windows_1m', 0):,} 1-minute windows, "
                  f"{result.records_out.get('windows_5m', 0):,} 5-minute windows, "
                  f"{sum(result.dead_letters.values()):,} dead letters", highlight=False)
    if found is not None:
        console.print(f"anomalous readings flagged: {found:,} (injected: {injected:,})", highlight=False)
    console.print(f"data: {run_dir}", highlight=False)

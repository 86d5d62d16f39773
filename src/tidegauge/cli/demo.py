"""``tidegauge demo``: a simulated fleet through the engine, with the server and live dashboard, in one command.

The simulator (paced to ``--rate``) feeds a flow that scores every reading with the default anomaly
detector, computes 1-minute and 5-minute windows, evaluates the default alert rules and writes the
history store under ``--data-dir`` (layout: :mod:`tidegauge.server.demo`), while the server serves the
dashboard and the API on ``http://--host:--port``. Stops on Ctrl-C or after ``--duration`` and prints a
summary.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
import webbrowser
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live

from tidegauge._time import parse_duration
from tidegauge.cli import app

logger = logging.getLogger(__name__)


def _opt(help: str, env: str) -> Any:
    return typer.Option(help=help, envvar=env, show_envvar=True)


@app.command()
def demo(
    sensors: Annotated[int, _opt("Simulated sensors.", "TIDEGAUGE_DEMO_SENSORS")] = 200,
    rate: Annotated[float, _opt("Readings per second across the fleet.", "TIDEGAUGE_DEMO_RATE")] = 2000.0,
    duration: Annotated[str, _opt("Stop after this long (e.g. 30s); 0 runs until Ctrl-C.",
                                  "TIDEGAUGE_DEMO_DURATION")] = "0",
    data_dir: Annotated[Path, _opt("Where the history store (one run-* directory per run) is written.",
                                   "TIDEGAUGE_DATA_DIR")] = Path("tidegauge-data"),
    host: Annotated[str, _opt("Address the server listens on.", "TIDEGAUGE_DEMO_HOST")] = "127.0.0.1",
    port: Annotated[int, _opt("Port of the server and dashboard (0: any free port).", "TIDEGAUGE_DEMO_PORT")] = 8080,
    token: Annotated[str | None, _opt("Access token of the dashboard and API (default: a random one, printed).",
                                      "TIDEGAUGE_DEMO_TOKEN")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the dashboard in a web browser.",
                                               envvar="TIDEGAUGE_DEMO_OPEN", show_envvar=True)] = False,
    anomaly_rate: Annotated[float, _opt("Share of each sensor's time in anomaly episodes.",
                                        "TIDEGAUGE_DEMO_ANOMALY_RATE")] = 0.02,
    seed: Annotated[int, _opt("Simulator seed.", "TIDEGAUGE_DEMO_SEED")] = 42,
) -> None:
    """Run a simulated fleet through detection, windows and alerts, with the live dashboard."""
    from tidegauge.server.app import serve
    from tidegauge.server.demo import TOKEN_ENV, DemoConfig, build_demo

    stop_after = 0.0 if duration.strip() in ("", "0") else parse_duration(duration, name="--duration") / 1e6
    secret = token or secrets.token_urlsafe(18)
    port = _check_port(host, port)
    d = build_demo(DemoConfig(sensors=sensors, rate=rate, seed=seed, anomaly_rate=anomaly_rate,
                              data_dir=str(data_dir), host=host, port=port))
    console = Console()
    console.print(f"tidegauge demo: {sensors:,} sensors at {rate:,.0f} readings/s -> {d.run_dir}", highlight=False)
    started_at = time.monotonic()
    reading: dict[str, float] = {}  # when the flow stopped reading and how many it had read then
    stopping: list[bool] = []

    async def main() -> Any:
        started = asyncio.Event()
        task = asyncio.create_task(serve(d.runner, d.server, environ={**os.environ, TOKEN_ENV: secret},
                                         alerts=d.alerts, live=d.live, started=started))
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            return await task
        url = f"http://{_url_host(host)}:{d.server.port}/"
        # the one place the token is shown: the terminal of whoever started the demo (never a log or a URL)
        console.print(f"dashboard: [bold]{url}[/]  token: [bold]{secret}[/]  (Ctrl-C to stop)", highlight=False)
        if open_browser:
            webbrowser.open(url)
        with Live(console=console, refresh_per_second=2, transient=True) as live:
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                elapsed = time.monotonic() - started_at
                n = d.live.readings_total
                live.update(f"{elapsed:6.1f}s  {n:,} readings ({n / max(elapsed, 1e-9):,.0f}/s)  "
                            f"anomalies {d.live.anomalies_total:,}  "
                            f"dead letters {d.runner.metrics.dead_letters_total:,}")
                if stopping:
                    continue
                if n > reading.get("n", 0):  # on Ctrl-C the rate's time base ends with the last new readings
                    reading["to"], reading["n"] = time.monotonic(), n
                if stop_after and elapsed >= stop_after:
                    stopping.append(True)
                    reading["to"], reading["n"] = time.monotonic(), n
                    d.runner.stop()
        return await task

    try:
        result = asyncio.run(main())
    finally:
        d.alerts.close()
    _summary(console, d, result, time.monotonic() - started_at, reading)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _check_port(host: str, port: int) -> int:
    """``port`` if it is free on ``host`` (any free port for 0); a clear error if it is taken.

    uvicorn would otherwise exit the process from inside the event loop, after the flow has started.
    """
    import socket

    from tidegauge.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}): is another demo running? "
                              "Pick another port with --port (0: any free port)") from None
        return int(s.getsockname()[1])


def _summary(console: Console, d: Any, result: Any, elapsed: float, reading: dict[str, float]) -> None:
    live = d.live
    p50, p99 = live.run_latency()
    alerts = d.alerts.list_alerts()
    by_sev: dict[str, int] = {}
    for a in alerts:
        by_sev[a.severity] = by_sev.get(a.severity, 0) + 1
    fired = sum(1 for a in alerts if a.fired_at is not None)
    # rows fall due at --rate from the moment the simulator started: keeping up means reading them all
    began = d.source.started_at
    span = reading.get("to", 0.0) - began if began is not None else 0.0
    rate = reading.get("n", 0.0) / span if span > 0 else 0.0
    # the simulator's readings (the flow also reads its own health records, one a second)
    sim = next(nid for nid, n in d.runner.flow.nodes.items() if n.definition is d.source)
    readings = result.metrics.records_in.get(sim, 0)
    console.print(f"[bold]summary[/] after {elapsed:.1f}s: {readings:,} readings "
                  f"({rate:,.0f}/s over {span:.1f}s of reading), "
                  f"{result.records_out.get('windows_1m', 0):,} 1-minute windows, "
                  f"{result.records_out.get('windows_5m', 0):,} 5-minute windows, "
                  f"{sum(result.dead_letters.values()):,} dead letters", highlight=False)
    console.print(f"anomalies: {live.anomalies_total:,} readings flagged, {live.injected_total:,} injected "
                  f"(simulator labels), {live.true_positives:,} of the flagged were injected", highlight=False)
    sev = ", ".join(f"{k} {v}" for k, v in sorted(by_sev.items())) or "none"
    console.print(f"alerts: {len(alerts):,} ({fired:,} fired; by severity: {sev})", highlight=False)
    lat = "n/a" if p50 is None or p99 is None else f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    console.print(f"latency (event time to score): {lat}", highlight=False)
    console.print(f"data: {d.run_dir}", highlight=False)

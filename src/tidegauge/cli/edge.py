"""``tidegauge edge agents|assignments``: the coordinator's view of the edge, read from an upstream server."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tidegauge.cli import app
from tidegauge.errors import ConnectorError, MissingDependencyError

__all__ = ["edge_app"]

logger = logging.getLogger(__name__)

edge_app = typer.Typer(help="Edge agents and sensor assignments, from an upstream tidegauge server.",
                       no_args_is_help=True)
app.add_typer(edge_app, name="edge")
console = Console()

_TIMEOUT_S = 10.0  # a listing is one small JSON answer; longer means the server is not answering

UpstreamOpt = Annotated[str, typer.Option("--upstream", help="Base URL of the upstream server.",
                                          envvar="TIDEGAUGE_UPSTREAM", show_envvar=True)]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Bearer token with the read scope.",
                                              envvar="TIDEGAUGE_TOKEN", show_envvar=True)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.", envvar="TIDEGAUGE_JSON",
                                       show_envvar=True)]


def fetch(upstream: str, path: str, token: str | None) -> Any:
    """GET ``upstream + path`` as JSON (a clear error for HTTP and connection failures)."""
    try:
        import httpx
    except ImportError as exc:
        raise MissingDependencyError("httpx", "edge") from exc
    url = upstream.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(url, headers=headers, timeout=_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise ConnectorError(f"{url}: {exc}") from None
    if r.status_code != 200:
        try:
            why = r.json().get("error", r.text)
        except ValueError:
            why = r.text
        raise ConnectorError(f"{url}: HTTP {r.status_code}: {why}")
    return r.json()


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"


@edge_app.command("agents")
def agents(upstream: UpstreamOpt = "http://127.0.0.1:8080", token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List the agents: state, availability, resources, outbox, sensors."""
    rows = fetch(upstream, "/api/v1/edge/agents", token)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} edge agents at {upstream}")
    for col in ("node", "status", "last seen", "avail.", "sensors", "gen", "load/s", "cpu", "mem", "disk",
                "battery", "outbox", "link", "detection", "version"):
        table.add_column(col)
    for r in rows:
        status = "[green]online[/]" if r["status"] == "online" else "[red]offline[/]"
        table.add_row(r["node_id"], status, r["last_seen"], f"{r['availability']:.1%}", str(r["sensors"]),
                      str(r["generation"]), f"{r['load']:.0f}", _pct(r["cpu_pct"]), _pct(r["memory_pct"]),
                      _pct(r["disk_pct"]), _pct(r["battery_pct"]),
                      f"{r['outbox_depth']} ({r['outbox_age_s']:.0f}s)", r["link"],
                      r["detection"] + (f" ({r['detection_reason']})" if r.get("detection_reason") else ""),
                      r["version"])
    console.print(table)


@edge_app.command("assignments")
def assignments(
    upstream: UpstreamOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's sensors.", envvar="TIDEGAUGE_EDGE_AGENT",
                                              show_envvar=True)] = None,
    as_json: JsonOpt = False,
) -> None:
    """List sensor -> agent assignments with their handover state and detection side."""
    rows = fetch(upstream, "/api/v1/edge/assignments", token)
    if agent is not None:
        rows = [r for r in rows if r["agent"] == agent]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} sensors at {upstream}")
    for col in ("sensor", "agent", "target", "state", "detection"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["sensor_id"], r["agent"] or "-", r["target"] or "-", r["state"], r["detection"])
    console.print(table)

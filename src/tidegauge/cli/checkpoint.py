"""``tidegauge checkpoint ls|inspect``: look inside a checkpoint directory without the pipeline."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from tidegauge.checkpoint import CheckpointStore
from tidegauge.checkpoint.store import MANIFEST
from tidegauge.cli import app
from tidegauge.errors import CheckpointError

__all__ = ["checkpoint_app", "inspect", "ls", "summarize"]

logger = logging.getLogger(__name__)

checkpoint_app = typer.Typer(help="List and inspect checkpoints.", no_args_is_help=True)
app.add_typer(checkpoint_app, name="checkpoint")

DirArg = Annotated[
    Path,
    typer.Argument(
        help="Checkpoint directory (the pipeline's checkpoint.dir).",
        envvar="TIDEGAUGE_CHECKPOINT_DIR",
        show_envvar=True,
    ),
]


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size, unit = float(n), "B"
    for unit in ("KiB", "MiB", "GiB"):  # noqa: B007 (the last unit reached is the one printed)
        size /= 1024
        if size < 1024:
            break
    return f"{size:.1f} {unit}"


def summarize(value: Any, depth: int = 0) -> Any:
    """A short, JSON-able description of a generically decoded msgpack value."""
    if isinstance(value, bytes):
        if value[:6] == b"ARROW1":
            return f"<Arrow IPC table, {len(value)} bytes>"
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        if {"dtype", "shape", "data"} <= value.keys() and isinstance(value.get("data"), bytes):
            return f"<array {value['dtype']} shape {value['shape']}>"
        if depth >= 2:
            return f"<map of {len(value)}>"
        return {str(k): summarize(v, depth + 1) for k, v in list(value.items())[:20]}
    if isinstance(value, list):
        if depth >= 2 or len(value) > 5:
            return f"<list of {len(value)}>"
        return [summarize(v, depth + 1) for v in value]
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    return value


@checkpoint_app.command()
def ls(directory: DirArg) -> None:
    """List the checkpoints in DIRECTORY (newest last), verifying each."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass the pipeline's checkpoint.dir")
    infos = CheckpointStore(directory).list()
    table = Table(title=f"checkpoints in {directory}")
    for col in ("epoch", "created", "complete", "size", "entries"):
        table.add_column(col, justify="right" if col in ("epoch", "size") else "left")
    for i in infos:
        created = i.created_at.isoformat(timespec="seconds") if i.created_at else "-"
        complete = "yes" if i.complete else f"[red]no[/]: {i.problem}"
        table.add_row(str(i.epoch), created, complete, _size(i.total_bytes), ", ".join(i.entries) or "-")
    Console(width=200).print(table)
    if not infos:
        typer.echo("no checkpoints")


@checkpoint_app.command()
def inspect(
    directory: DirArg,
    epoch: Annotated[
        int | None,
        typer.Option(
            help="Checkpoint to show (default: the newest complete one).",
            envvar="TIDEGAUGE_CHECKPOINT_EPOCH",
            show_envvar=True,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print JSON instead of text.", envvar="TIDEGAUGE_CHECKPOINT_JSON", show_envvar=True
        ),
    ] = False,
) -> None:
    """Show a checkpoint's manifest, meta and entries (sizes, struct types, decoded summaries)."""
    store = CheckpointStore(directory)
    if epoch is None:
        cp = store.latest()
        if cp is None:
            raise CheckpointError(f"no complete checkpoint in {directory}; `tidegauge checkpoint ls` shows why")
    else:
        cp = store.read(epoch)
    entries: dict[str, Any] = {}
    for name, e in cp.manifest.entries.items():
        try:
            summary = summarize(msgspec.msgpack.decode(cp.raw(name)))
        except msgspec.DecodeError as exc:  # never fail on what we cannot read generically
            summary = f"<undecodable: {exc}>"
        entries[name] = {"file": e.file, "bytes": e.bytes, "type": e.type, "sha256": e.sha256, "summary": summary}
    doc = {
        "epoch": cp.epoch,
        "created_at": cp.created_at.isoformat(),
        "format": cp.manifest.format,
        "path": str(cp.path),
        "manifest": str(cp.path / MANIFEST),
        "meta": cp.meta,
        "entries": entries,
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    console = Console(width=200)
    console.print(f"[bold]checkpoint {cp.epoch}[/]  created {doc['created_at']}  format {cp.manifest.format}")
    console.print(f"path: {cp.path}")
    for k, v in cp.meta.items():
        console.print(f"meta {k} = {v!r}", highlight=False)
    table = Table()
    for col in ("entry", "type", "size", "summary"):
        table.add_column(col)
    for name, e in entries.items():
        table.add_row(name, e["type"] or "None", _size(e["bytes"]), json.dumps(e["summary"], default=str)[:120])
    console.print(table)

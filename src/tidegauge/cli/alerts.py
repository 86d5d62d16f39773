"""``tidegauge alerts ls`` and ``tidegauge silence add|ls|expire`` on the persisted alert state.

``--db`` is the pipeline's alert store: a SQLite file (``alerts.db``) or a ``postgresql://`` URL (needs
``pip install 'tidegauge[postgres]'``), the ``store`` of the pipeline file's ``alerts:`` section. The
commands work while the pipeline runs: a silence added here is seen by the running pipeline within one
evaluation.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tidegauge._time import parse_duration
from tidegauge.alerting.lifecycle import iso
from tidegauge.alerting.store import AlertStore, open_store
from tidegauge.cli import app

__all__ = ["alerts_app", "silence_app"]

logger = logging.getLogger(__name__)

alerts_app = typer.Typer(help="List and acknowledge alerts.", no_args_is_help=True)
silence_app = typer.Typer(help="Create, list and expire silences.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")
app.add_typer(silence_app, name="silence")
console = Console()

DbOpt = Annotated[str, typer.Option("--db", help="Alert store: a SQLite file or a postgresql:// URL (the "
                                    "pipeline's alerts.store).", envvar="TIDEGAUGE_ALERTS_DB", show_envvar=True)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.",
                                       envvar="TIDEGAUGE_JSON", show_envvar=True)]


def _now() -> int:
    return time.time_ns() // 1_000


def _is_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def _store(db: str, *, create: bool = False) -> AlertStore:
    """The store at ``db``; a SQLite file must exist unless ``create`` (a typo would make an empty one)."""
    if not _is_url(db) and not create and not Path(db).exists():
        raise FileNotFoundError(f"{db}: no alert database here; pass --db with the pipeline's alerts.store")
    return open_store(db)


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"--label {p!r}: write name=value")
        k, v = p.split("=", 1)
        out[k] = v
    return out


@alerts_app.command("ls")
def alerts_ls(
    db: DbOpt = "alerts.db",
    state: Annotated[str | None, typer.Option(help="pending, firing or resolved.", envvar="TIDEGAUGE_ALERT_STATE",
                                              show_envvar=True)] = None,
    severity: Annotated[str | None, typer.Option(help="critical, major, minor, warning or info.",
                                                 envvar="TIDEGAUGE_ALERT_SEVERITY", show_envvar=True)] = None,
    label: Annotated[list[str] | None, typer.Option(help="name=value (repeatable).", envvar="TIDEGAUGE_ALERT_LABEL",
                                                    show_envvar=True)] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the alerts in the store."""
    store = _store(db)
    want = _labels(label or [])
    alerts = [a for a in store.load_alerts()
              if (state is None or a.state == state) and (severity is None or a.severity == severity)
              and all(a.labels.get(k) == v for k, v in want.items())]
    alerts.sort(key=lambda a: (a.rule, sorted(a.labels.items())))
    store.close()
    if as_json:
        typer.echo(json.dumps([a.to_dict() for a in alerts], indent=2))
        return
    table = Table(title=f"{len(alerts)} alerts in {store.path}")
    for col in ("fingerprint", "rule", "state", "severity", "labels", "since", "ack", "summary"):
        table.add_column(col)
    for a in alerts:
        extra = {k: v for k, v in a.labels.items() if k not in ("alertname", "severity")}
        table.add_row(a.fingerprint, a.rule, a.state + (" (flapping)" if a.flapping else ""), a.severity,
                      " ".join(f"{k}={v}" for k, v in extra.items()), iso(a.fired_at or a.active_since),
                      a.ack_by or "", a.annotations.get("summary", ""))
    console.print(table)


@silence_app.command("add")
def silence_add(
    matcher: Annotated[list[str], typer.Argument(help="Matchers: name=value, name!=value, name=~regex, name!~regex.")],
    duration: Annotated[str, typer.Option(help="How long it lasts (a silence always ends).",
                                          envvar="TIDEGAUGE_SILENCE_DURATION", show_envvar=True)] = "2h",
    by: Annotated[str, typer.Option("--by", help="Who creates it.", envvar="USER", show_envvar=True)] = "cli",
    comment: Annotated[str, typer.Option(help="Why.", envvar="TIDEGAUGE_SILENCE_COMMENT", show_envvar=True)] = "",
    db: DbOpt = "alerts.db",
) -> None:
    """Silence the alerts matching every MATCHER for --duration."""
    store = _store(db, create=True)  # a silence may be made before the pipeline first runs
    now = _now()
    s = store.add_silence(matcher, starts_at=now, ends_at=now + parse_duration(duration, name="--duration"),
                          created_by=by, comment=comment, now_us=now)
    store.close()
    typer.echo(s.id)


@silence_app.command("ls")
def silence_ls(
    db: DbOpt = "alerts.db",
    show_expired: Annotated[bool, typer.Option("--expired", help="Include expired silences.",
                                               envvar="TIDEGAUGE_SILENCE_EXPIRED", show_envvar=True)] = False,
    as_json: JsonOpt = False,
) -> None:
    """List silences (active and pending; --expired for all)."""
    store = _store(db)
    now = _now()
    rows = [s for s in store.silences() if show_expired or s.state(now) != "expired"]
    store.close()
    if as_json:
        typer.echo(json.dumps([{"id": s.id, "matchers": [str(m) for m in s.matchers], "state": s.state(now),
                                "starts_at": iso(s.starts_at), "ends_at": iso(s.ends_at),
                                "created_by": s.created_by, "comment": s.comment} for s in rows], indent=2))
        return
    table = Table(title=f"{len(rows)} silences in {store.path}")
    for col in ("id", "state", "matchers", "ends", "by", "comment"):
        table.add_column(col)
    for s in rows:
        table.add_row(s.id, s.state(now), " ".join(str(m) for m in s.matchers), iso(s.ends_at), s.created_by,
                      s.comment)
    console.print(table)


@silence_app.command("expire")
def silence_expire(
    silence_id: Annotated[str, typer.Argument(help="The silence id (from `tidegauge silence ls`).")],
    db: DbOpt = "alerts.db",
) -> None:
    """End a silence now."""
    store = _store(db)
    ok = store.expire_silence(silence_id, now_us=_now())
    store.close()
    if not ok:
        raise ValueError(f"no active or pending silence {silence_id!r}; list them with `tidegauge silence ls`")
    typer.echo(f"expired {silence_id}")

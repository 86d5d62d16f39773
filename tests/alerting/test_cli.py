from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

import tidegauge.cli.alerts  # noqa: F401  (registers the commands)
from tests.alerting.helpers import T0, Recorder, batch
from tidegauge._time import ManualClock
from tidegauge.alerting import AlertManager, parse_config
from tidegauge.cli import app


def test_alerts_ls_and_silences(store_target: str) -> None:
    """The same commands on a SQLite file and on PostgreSQL (a postgresql:// URL as --db)."""
    db = store_target
    cfg = parse_config({"rules": [{"name": "hot", "expr": "temperature > 40", "severity": "critical"}],
                        "route": {"receiver": "log"}, "receivers": [{"name": "log", "kind": "log"}]})
    clock = ManualClock(T0)
    m = AlertManager(cfg, store=db, clock=clock, notifiers={"log": Recorder("log", clock)})
    m.evaluate(batch({"a": 50.0, "b": 10.0}, t_us=T0))
    m.close()
    r = CliRunner()
    out = r.invoke(app, ["alerts", "ls", "--db", str(db), "--json", "--state", "firing"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert [(a["rule"], a["labels"]["sensor_id"], a["severity"]) for a in rows] == [("hot", "a", "critical")]
    out = r.invoke(app, ["silence", "add", "sensor_id=a", "--duration", "1h", "--db", str(db), "--comment", "x"])
    assert out.exit_code == 0, out.output
    sid = out.output.strip()
    listed = json.loads(r.invoke(app, ["silence", "ls", "--db", str(db), "--json"]).output)
    assert [s["id"] for s in listed] == [sid] and listed[0]["state"] == "active"
    assert r.invoke(app, ["silence", "expire", sid, "--db", str(db)]).exit_code == 0
    assert json.loads(r.invoke(app, ["silence", "ls", "--db", str(db), "--json"]).output) == []
    assert r.invoke(app, ["silence", "expire", sid, "--db", str(db)]).exit_code != 0
    # a silence made with the CLI is seen by a manager on the same store
    out = r.invoke(app, ["silence", "add", "sensor_id=a", "--duration", "1h", "--db", str(db)])
    m = AlertManager(cfg, store=db, clock=clock, notifiers={"log": Recorder("log", clock)})
    try:  # the CLI stamps silences with the wall clock
        assert m.muted(time.time_ns() // 1000) == {rows[0]["fingerprint"]: f"silence:{out.output.strip()}"}
    finally:
        m.close()


def test_missing_sqlite_file_is_an_error(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["alerts", "ls", "--db", str(tmp_path / "typo.db")])
    assert out.exit_code != 0 and not (tmp_path / "typo.db").exists()

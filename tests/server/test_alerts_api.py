"""The alert API: a real flow (HttpIngestSource -> AlertStep -> MemorySink) sharing one AlertManager with the
server, on a ManualClock; acknowledgements and silences made over HTTP are seen by the manager and the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

import tidegauge.cli.alerts  # noqa: F401  (registers the commands)
from tests.alerting.helpers import T0, Recorder
from tests.connectors.servers import require_promtool
from tests.server.helpers import TOKENS, auth, server_config
from tidegauge._time import ManualClock
from tidegauge.alerting import AlertManager, AlertStep, parse_config
from tidegauge.cli import app as cli
from tidegauge.connectors.http import HttpIngestSource
from tidegauge.dataflow import CheckpointConfig, Flow, Runner
from tidegauge.server import build_app
from tidegauge.testing import MemorySink

HOT = b'[{"sensor_id":"S1","timestamp":"2026-01-01T00:00:00Z","temperature":55.0},' \
      b'{"sensor_id":"S2","timestamp":"2026-01-01T00:00:00Z","temperature":20.0}]'


@dataclass
class AlertHarness:
    client: httpx.AsyncClient
    manager: AlertManager
    clock: ManualClock
    rec: Recorder
    runner: Runner
    source: HttpIngestSource
    db: Path

    async def send(self, body: bytes) -> None:
        r = await self.client.post("/api/v1/ingest", content=body,
                                   headers={**auth("ingest"), "content-type": "application/json"})
        assert r.status_code == 200, r.text
        log = self.source.open_log()
        for _ in range(2000):  # a bound on polling, not a timing assertion
            pos = self.runner.positions().get("http")
            if (log.start if pos is None else pos.offset) >= log.end:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the flow did not catch up with the intake log")

    def cli(self, *args: str) -> Any:
        out = CliRunner().invoke(cli, [*args, "--db", str(self.db), "--json"])
        assert out.exit_code == 0, out.output
        return json.loads(out.output)


@asynccontextmanager
async def alert_harness(tmp: Path, **overrides: Any) -> AsyncIterator[AlertHarness]:
    cfg = parse_config({
        "rules": [{"name": "hot", "expr": "temperature > 40", "severity": "critical",
                   "annotations": {"summary": "{sensor_id} at {temperature}"}}],
        "route": {"receiver": "rec", "group_wait": "0s", "group_interval": "1m", "repeat_interval": "10m"},
        "receivers": [{"name": "rec", "kind": "log"}],
    })
    clock = ManualClock(T0)
    rec = Recorder("rec", clock)
    db = tmp / "alerts.db"
    manager = AlertManager(cfg, store=db, clock=clock, notifiers={"rec": rec}, delivery="inline")
    source = HttpIngestSource(tmp / "intake", durability="os")
    flow = Flow("t")
    flow.source(source).then(AlertStep(cfg, manager=manager), name="alerts").sink(MemorySink(), name="out")
    runner = Runner(flow, checkpoint=CheckpointConfig(tmp / "cp", interval="200ms"), max_delay="2ms", tick="20ms",
                    clock=clock)
    app = build_app(runner, server_config(**overrides), environ={"TG_TEST_ADMIN": TOKENS["admin"]}, alerts=manager)
    task = asyncio.create_task(runner.run_async())
    while source.logic is None:
        await asyncio.sleep(0.001)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tg") as client:
        try:
            yield AlertHarness(client, manager, clock, rec, runner, source, db)
        finally:
            runner.stop()
            await task
            manager.close()


def run(tmp: Path, body: Callable[[AlertHarness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with alert_harness(tmp) as h:
            await body(h)

    asyncio.run(main())


def test_list_and_filter_alerts(tmp_path: Path) -> None:
    async def body(h: AlertHarness) -> None:
        assert (await h.client.get("/api/v1/alerts")).status_code == 401
        await h.send(HOT)
        r = await h.client.get("/api/v1/alerts", params={"state": "firing"}, headers=auth("read"))
        assert r.status_code == 200, r.text
        (a,) = r.json()["alerts"]
        assert (a["rule"], a["labels"]["sensor_id"], a["severity"]) == ("hot", "S1", "critical")
        assert a["annotations"]["summary"] == "S1 at 55.0" and a["acknowledged"] is False and a["muted_by"] is None
        for params, n in ((("severity", "critical"),), 1), ((("severity", "warning"),), 0), \
                         ((("label", "sensor_id=S1"), ("label", "alertname=hot")), 1), \
                         ((("label", "sensor_id=S2"),), 0), ((("state", "pending"),), 0):
            r = await h.client.get("/api/v1/alerts", params=list(params), headers=auth("read"))
            assert len(r.json()["alerts"]) == n, params
        r = await h.client.get("/api/v1/alerts", params={"state": "burning"}, headers=auth("read"))
        assert r.status_code == 400 and "pending, firing, resolved" in r.json()["error"]
        r = await h.client.get("/api/v1/alerts", params={"label": "sensor_id"}, headers=auth("read"))
        assert r.status_code == 400 and "label=<name>=<value>" in r.json()["error"]

    run(tmp_path, body)


def test_ack_and_unack_change_the_state_seen_by_the_manager_and_the_cli(tmp_path: Path) -> None:
    async def body(h: AlertHarness) -> None:
        await h.send(HOT)
        (alert,) = h.manager.list_alerts(state="firing")
        fp = alert.fingerprint
        assert [t for t, _ in h.rec.sent] == [T0]
        url = f"/api/v1/alerts/{fp}/ack"
        assert (await h.client.post(url, json={"comment": "x"}, headers=auth("read"))).status_code == 403
        assert (await h.client.post(url, json={"comment": "x"}, headers=auth("ingest"))).status_code == 403
        r = await h.client.post(url, json={"comment": "on it"}, headers=auth("admin"))
        assert r.status_code == 200, r.text
        assert r.json()["ack"]["by"] == "ops" and r.json()["ack"]["comment"] == "on it"
        assert h.manager.list_alerts()[0].ack_by == "ops"
        (row,) = h.cli("alerts", "ls")
        assert row["ack"]["by"] == "ops" and row["ack"]["comment"] == "on it"
        # acknowledged: past repeat_interval (10m) the flow's own ticks send no repeat
        h.clock.advance("11m")
        await h.send(HOT)
        assert [t for t, _ in h.rec.sent] == [T0]
        r = await h.client.post(f"/api/v1/alerts/{fp}/unack", headers=auth("admin"))
        assert r.status_code == 200 and r.json()["ack"] is None
        assert h.manager.list_alerts()[0].ack_by is None and h.cli("alerts", "ls")[0]["ack"] is None
        h.clock.advance("1m")  # the next group flush repeats the (no longer acknowledged) alert
        await h.send(HOT)
        assert len(h.rec.sent) == 2
        r = await h.client.post("/api/v1/alerts/0000000000000000/ack", headers=auth("admin"))
        assert r.status_code == 404 and "0000000000000000" in r.json()["error"]
        r = await h.client.post(url, content=b"[1]", headers=auth("admin"))
        assert r.status_code == 400 and "JSON object" in r.json()["error"]
        r = await h.client.post(url, json={"comment": 3}, headers=auth("admin"))
        assert r.status_code == 400

    run(tmp_path, body)


def test_silence_crud_mutes_and_expires(tmp_path: Path) -> None:
    async def body(h: AlertHarness) -> None:
        new = {"matchers": ["sensor_id=S1"], "duration": "1h", "comment": "maintenance"}
        assert (await h.client.post("/api/v1/silences", json=new, headers=auth("read"))).status_code == 403
        r = await h.client.post("/api/v1/silences", json=new, headers=auth("admin"))
        assert r.status_code == 201, r.text
        s = r.json()
        assert (s["state"], s["created_by"], s["matchers"], s["ends_at"]) == (
            "active", "ops", ['sensor_id="S1"'], "2026-01-01T01:00:00.000000Z")
        await h.send(HOT)
        assert h.rec.sent == []
        (a,) = (await h.client.get("/api/v1/alerts", headers=auth("read"))).json()["alerts"]
        assert a["muted_by"] == f"silence:{s['id']}"
        listed = (await h.client.get("/api/v1/silences", headers=auth("read"))).json()["silences"]
        assert [x["id"] for x in listed] == [s["id"]]
        # the CLI judges silence states by the wall clock, not this test's ManualClock: compare end times
        assert [(x["id"], x["ends_at"]) for x in h.cli("silence", "ls", "--expired")] == [(s["id"], s["ends_at"])]
        r = await h.client.delete(f"/api/v1/silences/{s['id']}", headers=auth("admin"))
        assert r.status_code == 200 and r.json()["state"] == "expired"
        assert (await h.client.delete(f"/api/v1/silences/{s['id']}", headers=auth("admin"))).status_code == 404
        assert [x["ends_at"] for x in h.cli("silence", "ls", "--expired")] == ["2026-01-01T00:00:00.000000Z"]
        r = await h.client.get("/api/v1/silences", params={"state": "expired"}, headers=auth("read"))
        assert [x["id"] for x in r.json()["silences"]] == [s["id"]]
        h.clock.advance("1m")  # unmuted: the next group flush notifies
        await h.send(HOT)
        assert [p["alerts"][0]["labels"]["sensor_id"] for _, p in h.rec.sent] == ["S1"]
        until = {"matchers": ["sensor_id=S1"], "ends_at": "2026-01-01T03:00:00Z"}
        r = await h.client.post("/api/v1/silences", json=until, headers=auth("admin"))
        assert r.status_code == 201 and r.json()["ends_at"] == "2026-01-01T03:00:00.000000Z"
        for bad, why in (({"matchers": ["sensor_id=S1"]}, "exactly one of"),
                         ({"matchers": "sensor_id=S1", "duration": "1h"}, "list of strings"),
                         ({"matchers": [], "duration": "1h"}, "at least one matcher"),
                         ({"matchers": ["a=b"], "duration": "soon"}, "soon"),
                         ({"matchers": ["a=b"], "ends_at": "2026-01-01T03:00:00"}, "zone"),
                         ({"matchers": ["a=b"], "duration": "1h", "ends_at": "2026-01-01T03:00:00Z"}, "exactly one")):
            r = await h.client.post("/api/v1/silences", json=bad, headers=auth("admin"))
            assert r.status_code == 400 and why in r.json()["error"], (bad, r.text)

    run(tmp_path, body)


def test_alerting_metrics_on_the_metrics_endpoint(tmp_path: Path) -> None:
    text = ""

    async def body(h: AlertHarness) -> None:
        nonlocal text
        await h.send(HOT)
        r = await h.client.get("/metrics", headers=auth("read"))
        assert r.status_code == 200
        text = r.text

    run(tmp_path, body)
    assert 'tidegauge_alerts{state="firing"} 1.0' in text and 'tidegauge_alerts{state="pending"} 0.0' in text
    assert 'tidegauge_alert_notifications_sent_total{receiver="rec"} 1.0' in text
    assert 'tidegauge_alert_notifications_failed_total{receiver="rec"} 0.0' in text
    assert 'tidegauge_alert_rule_evaluation_seconds_count{rule="hot"} 1.0' in text
    assert 'tidegauge_alert_rule_evaluation_seconds_bucket{le="+Inf",rule="hot"} 1.0' in text
    promtool = require_promtool()
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_alert_routes_without_a_manager(tmp_path: Path) -> None:
    from tests.server.helpers import harness

    async def main() -> None:
        async with harness(tmp_path) as h:
            assert (await h.client.get("/api/v1/alerts", headers=auth("read"))).status_code == 404
            assert "tidegauge_alerts" not in (await h.client.get("/metrics", headers=auth("read"))).text

    asyncio.run(main())

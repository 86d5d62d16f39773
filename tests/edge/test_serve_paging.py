"""``tidegauge serve --edge-db`` with an ``alerts:`` section pages edge alerts through its routes and receivers.

The upstream is the CLI-served pipeline (a real process); its rules file routes alerts with
``edge_node="gw-a"`` to a webhook this test serves. The agent runs in this process (real alert rules,
outbox and uplink) behind the killable TCP proxy. While the link is down, one alert fires and resolves
(recorded upstream, never paged) and another fires and stays firing (paged after the reconnect, with its
original start time); one that fired while the link was up pages at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.edge.procs import LinkProxy, free_port, wait_for
from tests.edge.test_offline_alerts import QueueSource, Webhook, _until, reading
from tidegauge.alerting import AlertStep, parse_config
from tidegauge.dataflow import Flow, WatermarkConfig
from tidegauge.edge.agent import AgentConfig, run_agent
from tidegauge.edge.outbox import Outbox, StreamPolicy
from tidegauge.edge.sink import OutboxSink
from tidegauge.server import hash_token

TOKEN = "tok-gw-a"
ALERT_SCHEMA = ("{at: timestamp, fingerprint: str, rule: str, severity: str, state: str, labels: str, "
                "edge_page: bool, edge_node: str, edge_stream: str, edge_seq: int, edge_replay: bool}")


def _upstream_files(tmp: Path, port: int, hook: str) -> Path:
    (tmp / "rules.yaml").write_text(f"""
rules:
  - {{name: upstream-hot, expr: "temperature > 1000"}}  # dormant here: the edge alert records have no temperature
route:
  receiver: log
  group_wait: 0s
  group_interval: 1s
  routes:
    - {{matchers: ['edge_node="gw-a"'], receiver: edge-hook}}
receivers:
  - {{name: log, kind: log}}
  - {{name: edge-hook, kind: webhook, url: "{hook}", backoff: 200ms}}
""")
    path = tmp / "upstream.yaml"
    path.write_text(f"""
name: upstream
source:
  - {{http: {{log_dir: intake, durability: os, schema: {ALERT_SCHEMA}}}, name: edge_alerts, key: fingerprint,
     time: at}}
sink: {{file: out/edge_alerts.jsonl}}
checkpoint: {{dir: cp, interval: 500ms}}
alerts: {{rules: rules.yaml, store: alerts.db, streams: [readings]}}
server:
  port: {port}
  tokens: [{{name: gw-a, hash: "{hash_token(TOKEN)}", scopes: [ingest, read], nodes: [gw-a]}}]
""")
    return path


def test_served_pipeline_pages_edge_alerts_through_its_receivers(tmp_path: Path) -> None:
    hook = Webhook()
    port = free_port()
    pipeline = _upstream_files(tmp_path, port, hook.url)
    err = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen([sys.executable, "-m", "tidegauge", "serve", str(pipeline), "--edge-db",
                              str(tmp_path / "edge.db")], cwd=tmp_path, stdout=err, stderr=subprocess.STDOUT,
                             env={**os.environ, "TIDEGAUGE_LOG_LEVEL": "INFO"})
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {TOKEN}"})
    proxy = LinkProxy(port)
    rules = parse_config({"rules": [{"name": "hot", "expr": "temperature > 100", "for": "0s",
                                     "severity": "critical", "by": ["sensor_id"]}]})
    src = QueueSource()

    def flow(box: Outbox) -> Flow:
        f = Flow("edge-alerts", watermark=WatermarkConfig.of(max_delay="1s", idle_timeout="1s"))
        f.source(src).then(AlertStep(rules, store=str(tmp_path / "agent" / "alerts.db"), delivery="none"),
                           name="rules").sink(OutboxSink(box, "alerts"))
        return f

    config = AgentConfig(node_id="gw-a", upstream=f"http://127.0.0.1:{proxy.port}", token=TOKEN,
                         data_dir=str(tmp_path / "agent"), streams={"alerts": StreamPolicy(priority=8)},
                         heartbeat_interval="1s")
    times: dict[str, float] = {}

    def up() -> bool:
        try:
            return api.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_agent(config, flow=flow, stop=stop))
        await asyncio.sleep(1.0)
        times["live"] = time.time()
        await src.queue.put(reading("live", 150.0))  # the link is up: pages at once
        await _until(lambda: len(hook.pages) >= 1, 30)
        proxy.cut()
        await asyncio.sleep(1.5)
        times["s1"] = time.time()
        await src.queue.put(reading("s1", 150.0))  # fires while offline ...
        await asyncio.sleep(1.5)
        await src.queue.put(reading("s1", 20.0))  # ... and resolves while offline: recorded, not paged
        await asyncio.sleep(0.5)
        times["s2"] = time.time()
        await src.queue.put(reading("s2", 150.0))  # fires while offline and is still firing: pages
        await asyncio.sleep(3.0)  # checkpoints commit them to the outbox; the link is still down
        times["reconnect"] = time.time()
        proxy.restore()
        await _until(lambda: any(a["labels"].get("sensor_id") == "s2" for p in hook.pages for a in p["alerts"]),
                     60)
        await _until(lambda: {"live", "s1", "s2"} <= {a["labels"].get("sensor_id") for a in alerts()}, 30)
        await asyncio.sleep(1.0)  # room for a wrong page of s1 to arrive
        stop.set()
        await task

    def alerts() -> list[dict[str, Any]]:
        return list(api.get("/api/v1/alerts").json()["alerts"])

    try:
        wait_for(up, 60, "tidegauge serve")
        asyncio.run(scenario())
        paged = {(a["labels"]["sensor_id"], a["status"]): a for p in hook.pages for a in p["alerts"]}
        assert ("live", "firing") in paged and ("s2", "firing") in paged, paged
        assert not [k for k in paged if k[0] == "s1"], f"s1 resolved while offline, it must not page: {paged}"
        assert all(p["receiver"] == "edge-hook" for p in hook.pages), "routed by the rules file's edge_node route"
        s2 = paged[("s2", "firing")]
        assert s2["labels"]["edge_node"] == "gw-a" and s2["labels"]["alertname"] == "hot"
        # the original time on the edge, not the time it reached the upstream
        started = datetime.fromisoformat(s2["startsAt"]).timestamp()
        assert times["s2"] - 1 <= started <= times["s2"] + 1.5 and started < times["reconnect"] - 1, (started, times)
        # recorded upstream: the alert API shows all three, s1 resolved with its times on the edge
        by = {a["labels"]["sensor_id"]: a for a in alerts()}
        assert by["s1"]["state"] == "resolved" and by["s2"]["state"] == "firing" and by["live"]["state"] == "firing"
        fired = datetime.fromisoformat(by["s1"]["fired_at"]).timestamp()
        assert times["s1"] - 1 <= fired <= times["s1"] + 1.5
        assert datetime.fromisoformat(by["s1"]["resolved_at"]).timestamp() < times["reconnect"]
    finally:
        proxy.close()
        api.close()
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        err.close()
        hook.close()
    log = (tmp_path / "serve.log").read_text()
    assert "recorded, not paged" not in log, log

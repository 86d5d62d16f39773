"""The dashboard of ``tidegauge serve PIPELINE.yaml`` (a user's own pipeline file, not the demo) in a real
headless Chromium: its Sensors page lists the pipeline's sensors, and a sensor's page charts its fields."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.dashboard.helpers import ARTIFACTS, CHROMIUM_ARGS, free_port, require_chromium, wait_for
from tests.server.helpers import TOKENS
from tidegauge.server import hash_token

pytestmark = pytest.mark.slow

SENSORS = ["boiler-1", "boiler-2", "chiller-7"]


def test_the_sensors_page_of_a_served_pipeline_shows_its_sensors(tmp_path: Path) -> None:
    chromium = require_chromium()
    port = free_port()
    (tmp_path / "plant.yaml").write_text(f"""
name: plant
source: {{http: {{log_dir: intake, durability: os, schema: {{sensor_id: str, timestamp: timestamp,
          temperature: float, flow_rate: float}}}}}}
steps:
  - detect: {{type: zscore, fields: [temperature]}}
  - window: {{type: tumbling, size: 10s, aggregate: {{temperature: [mean]}}}}
sink: {{file: out/windows.parquet}}
server:
  port: {port}
  tokens:
    - {{name: gw, hash: "{hash_token(TOKENS['ingest'])}", scopes: [ingest]}}
    - {{name: ops, env: TG_OPS, scopes: [read]}}
""")
    log = tmp_path / "serve.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tidegauge", "serve", str(tmp_path / "plant.yaml")],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TG_OPS": TOKENS["read"]})
    url = f"http://127.0.0.1:{port}/"
    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(url + "healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=120, every=0.2, what="tidegauge serve to start")

        def send(seconds: int) -> None:
            now = time.time()
            lines = [json.dumps({"sensor_id": s, "timestamp": now - seconds + k, "temperature": 20.0 + j,
                                 "flow_rate": 3.5}) for k in range(seconds) for j, s in enumerate(SENSORS)]
            r = httpx.post(url + "api/v1/ingest", content="\n".join(lines),
                           headers={"authorization": f"Bearer {TOKENS['ingest']}"}, timeout=10)
            assert r.status_code in (200, 503), r.text
            return None if r.status_code == 200 else send(seconds)

        wait_for(lambda: httpx.post(url + "api/v1/ingest", content=b"",
                                    headers={"authorization": f"Bearer {TOKENS['ingest']}"}).status_code != 503,
                 timeout=60, what="the flow to read its source")
        send(30)

        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.goto(url)
                page.fill("#token", TOKENS["read"])
                page.click("#login-button")
                page.wait_for_selector("#app:not(.hidden)")
                page.goto(url + "#sensors")
                page.wait_for_function("document.getElementById('list-count').textContent === '3 of 3'",
                                       timeout=30_000)
                shown = sorted(page.eval_on_selector_all("#list-rows .vrow", "rows => rows.map(r => r.dataset.id)"))
                assert shown == SENSORS
                page.click('#list-rows .vrow[data-id="chiller-7"]')
                page.wait_for_selector("#d-live .main-svg")
                assert page.text_content("#d-title") == "chiller-7"
                traces = page.evaluate("document.getElementById('d-live').data.filter(t => t.mode === 'lines')"
                                       ".map(t => t.name)")
                assert {"temperature", "flow_rate"} <= set(traces), traces
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                shot = ARTIFACTS / "served-pipeline-sensors.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot: {shot}")
            finally:
                browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()
    assert "records in" in log.read_text()

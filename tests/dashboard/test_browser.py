"""The dashboard in a real headless Chromium against a running ``tidegauge demo``.

Screenshots of every page go to ``tests/artifacts/`` (git-ignored); the path is printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.helpers import ARTIFACTS, CHROMIUM_ARGS, RunningDemo, require_chromium, running_demo, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    require_chromium()
    # a small, anomaly-rich fleet: 40 readings/s per sensor gets the detector past its warm-up in seconds
    with running_demo(tmp_path_factory.mktemp("browser"), "--sensors", "60", "--rate", "2400",
                      "--anomaly-rate", "0.1", "--seed", "7") as d:
        yield d


@pytest.fixture(scope="module")
def browser(demo: RunningDemo) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=require_chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _logged_in(browser: Any, demo: RunningDemo) -> Any:
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(demo.url)
    page.fill("#token", demo.token)
    page.click("#login-button")
    page.wait_for_selector("#app:not(.hidden)")
    return page


def test_refuses_without_a_token(browser: Any, demo: RunningDemo) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(demo.url)
    page.wait_for_selector("#login:not(.hidden)")
    assert page.is_hidden("#app")
    # the API refuses the page's requests without a session
    assert page.request.get(demo.url + "api/v1/live/overview").status == 401
    page.fill("#token", "not-the-token")
    page.click("#login-button")
    page.wait_for_function("document.getElementById('login-error').textContent.length > 0")
    assert "not valid" in page.text_content("#login-error")
    assert page.is_hidden("#app")
    _shot(page, "login-refused")
    page.close()


def test_loads_with_a_token_and_live_figures_change(browser: Any, demo: RunningDemo) -> None:
    page = _logged_in(browser, demo)
    assert demo.token not in page.url
    # the session cookie is HttpOnly: the page's scripts never see it (nor the token)
    assert "tg_session" not in page.evaluate("document.cookie")
    page.wait_for_function("document.getElementById('t-rate').textContent !== '\\u2013'")
    page.wait_for_selector("#c-rate .main-svg")

    def totals() -> str:
        return str(page.text_content("#totals"))

    first, series_first = totals(), page.evaluate("document.getElementById('c-rate').data[0].x.length")
    wait_for(lambda: totals() != first, timeout=15, what="the overview totals to change")
    # the chart itself was redrawn with new points, without reloading the page
    wait_for(lambda: page.evaluate("document.getElementById('c-rate').data[0].x.length") != series_first,
             timeout=15, what="the readings chart to gain points")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert page.text_content("#conn") == "live"
    wait_for(lambda: page.evaluate("document.getElementById('c-latency').data[1].y.some(v => v !== null)"),
             timeout=15, what="latency p99 points")
    _shot(page, "overview")
    page.close()


def _sensor_with_anomalies(demo: RunningDemo) -> str | None:
    ids = demo.api("/api/v1/live/sensors").json()["ids"]
    for sid in ids:
        d = demo.api(f"/api/v1/live/sensors/{sid}").json()
        if sum(d["series"]["anomalies"]) > 0:
            return str(sid)
    return None


def test_clicking_a_sensor_shows_its_chart_with_anomaly_markers(browser: Any, demo: RunningDemo) -> None:
    sid = wait_for(lambda: _sensor_with_anomalies(demo), timeout=90, every=2, what="a sensor with anomalies")
    page = _logged_in(browser, demo)
    page.goto(demo.url + "#sensors")
    page.wait_for_selector("#list-rows .vrow")
    page.wait_for_selector("#map .main-svg")
    # virtualised: 60 sensors, only the visible rows are in the DOM
    assert 0 < page.locator("#list-rows .vrow").count() < 60
    page.fill("#search", sid)
    page.wait_for_function("document.getElementById('list-count').textContent.startsWith('1 of')")
    assert page.locator("#list-rows .vrow").count() == 1
    page.click(f'#list-rows .vrow[data-id="{sid}"]')
    page.wait_for_selector("#d-live .main-svg")
    assert page.text_content("#d-title") == sid
    markers = page.evaluate(
        "document.getElementById('d-live').data.filter(t => t.meta === 'anomaly')"
        ".reduce((n, t) => n + t.x.length, 0)")
    assert markers > 0, "the live chart shows no anomaly markers for a sensor with anomalies"
    fields = page.evaluate("document.getElementById('d-live').data.filter(t => t.mode === 'lines').length")
    assert fields >= 5  # each field plus the score
    # the chart follows the sensor live (pushed over the WebSocket), without reloading
    newest = "(() => { const x = document.getElementById('d-live').data[0].x; return String(x[x.length - 1]); })()"
    before = page.evaluate(newest)
    wait_for(lambda: page.evaluate(newest) != before, timeout=15, what="the sensor chart to move on")
    page.select_option("#h-range", "900")
    page.click("#h-load")
    page.wait_for_function("document.getElementById('h-note').textContent.includes('buckets')", timeout=30_000)
    _shot(page, "sensors")
    page.close()


def test_acknowledging_an_alert_in_the_page_changes_it_in_the_api(browser: Any, demo: RunningDemo) -> None:
    def firing() -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = demo.api("/api/v1/alerts", params={"state": "firing"}).json()["alerts"]
        return [a for a in alerts if not a["acknowledged"]]

    wait_for(firing, timeout=90, every=1, what="a firing alert")
    page = _logged_in(browser, demo)
    page.goto(demo.url + "#alerts")
    button = page.wait_for_selector("#alerts-firing button[data-ack]")
    fp = button.get_attribute("data-ack")
    assert fp
    button.click()
    page.wait_for_selector(f'#alerts-firing tr[data-fingerprint="{fp}"] .acked')
    (alert,) = [a for a in demo.api("/api/v1/alerts").json()["alerts"] if a["fingerprint"] == fp]
    assert alert["acknowledged"] and alert["ack"]["by"] == "demo"
    # and a silence made from the page shows up in the API
    before = {s["id"] for s in demo.api("/api/v1/silences").json()["silences"]}
    page.click(f'#alerts-firing tr[data-fingerprint="{fp}"] button[data-silence]')
    wait_for(lambda: {s["id"] for s in demo.api("/api/v1/silences").json()["silences"]} - before, timeout=10,
             what="the silence in the API")
    page.wait_for_selector("#silences button[data-expire]")
    _shot(page, "alerts")
    page.close()


def test_pipeline_and_edge_pages(browser: Any, demo: RunningDemo) -> None:
    page = _logged_in(browser, demo)
    page.goto(demo.url + "#pipeline")
    page.wait_for_selector("#pipeline tr >> text=detect")
    text = page.text_content("#pipeline") or ""
    for step in ("simulator", "detect", "window_1m", "readings", "alerts"):
        assert step in text
    _shot(page, "pipeline")
    page.goto(demo.url + "#edge")
    page.wait_for_selector("#edge-empty")  # this demo has no edge agents (the endpoint 404s)
    assert page.text_content("#edge-empty") == "no edge agents"
    page.close()


def test_edge_page_renders_the_agents_list(browser: Any, demo: RunningDemo) -> None:
    # the edge endpoint belongs to the edge coordinator; here the browser answers it with its documented shape
    agents = [{"node_id": f"gw-{i}", "status": "online" if i else "offline", "last_seen": "2026-01-01T00:00:00Z",
               "availability": 0.97 - i / 10, "location": "dock 4", "capacity": 500, "labels": {"site": "a"},
               "load": 0.4, "cpu_pct": 23.0, "memory_pct": 41.5, "disk_pct": 12.0, "battery_pct": 88.0,
               "outbox_depth": 120 * i, "outbox_age_s": 3.5, "link": "lte", "version": "0.1.0",
               "sensors": ["S1", "S2"], "generation": 2} for i in range(3)]
    page = _logged_in(browser, demo)
    page.route("**/api/v1/edge/agents", lambda route: route.fulfill(json=agents))
    page.goto(demo.url + "#edge")
    page.wait_for_selector("#edge table")
    rows = page.locator("#edge table tr")
    assert rows.count() == 1 + len(agents)
    text = page.text_content("#edge") or ""
    assert "gw-0" in text and "offline" in text and "online" in text and "240" in text
    _shot(page, "edge")
    page.close()

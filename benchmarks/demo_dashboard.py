"""``tidegauge demo`` at scale: does the flow keep up, and does the dashboard stay usable?

Runs the demo twice in this command, each in a fresh process: the reference (the default 200 sensors at
2,000 readings/s) and the target (``--sensors 10000 --rate 50000`` by default), each for ``--duration``,
with a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright) logged in to the
dashboard for the whole run. Measured for each:

- keep-up: readings/s from the demo's summary divided by the requested rate (goal: within 5%);
- processing latency p50/p99 (event time to score) from the summary;
- the WebSocket: seconds between overview pushes (median, max) and the size of one push;
- the page's main thread: long tasks (> 50 ms, Chromium's PerformanceObserver) per second of wall time
  on the Overview and on the Sensors page (map + virtualised list);
- interactions: search-to-list, click-to-chart and scroll-to-rows times (ms).

The target's figures are also given as ratios to the reference's. ``python benchmarks/demo_dashboard.py
[--duration 60] [--sensors 10000 --rate 50000]``; results also go to ``benchmarks/out/demo_dashboard.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LONGTASKS = """
window.__lt = []; window.__ws = [];
const _WS = window.WebSocket;
window.WebSocket = function (url, protocols) {
  const ws = new _WS(url, protocols);
  ws.addEventListener("message", (e) => {
    if (e.data.startsWith('{"type": "overview"')) window.__ws.push([performance.now(), e.data.length]);
  });
  return ws;
};
window.WebSocket.prototype = _WS.prototype;
new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__lt.push([e.startTime, e.duration]); })
  .observe({ type: "longtask", buffered: true });
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _longtasks(page: Any, since_ms: float) -> tuple[float, int]:
    tasks = page.evaluate("window.__lt")
    recent = [d for start, d in tasks if start >= since_ms]
    return sum(recent), len(recent)


def run_one(sensors: int, rate: float, duration: float, workdir: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    port, token = _port(), "bench-token"
    proc = subprocess.Popen([sys.executable, "-m", "tidegauge", "demo", "--sensors", str(sensors), "--rate",
                             str(rate), "--duration", f"{duration:.0f}s", "--port", str(port), "--data-dir",
                             str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "TIDEGAUGE_DEMO_TOKEN": token})
    assert proc.stdout is not None
    url = f"http://127.0.0.1:{port}/"
    out: dict[str, Any] = {"sensors": sensors, "rate": rate}
    try:
        while "dashboard:" not in (line := proc.stdout.readline()):
            if not line and proc.poll() is not None:
                raise SystemExit("the demo exited before serving")
        t_api = time.perf_counter()
        httpx.get(url + "api/v1/live/overview", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        out["api_overview_ms"] = (time.perf_counter() - t_api) * 1000
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.add_init_script(LONGTASKS)
            page.goto(url)
            page.fill("#token", token)
            page.click("#login-button")
            page.wait_for_function("document.getElementById('t-rate').textContent !== '\\u2013'", timeout=60_000)
            window = min(15.0, duration / 4)
            t0 = page.evaluate("performance.now()")
            time.sleep(window)
            busy, n = _longtasks(page, t0)
            out["overview_longtask_ms_per_s"], out["overview_longtasks"] = busy / window, n
            page.goto(url + "#sensors")
            page.wait_for_selector("#list-rows .vrow")
            page.wait_for_selector("#map .main-svg")
            t0 = page.evaluate("performance.now()")
            time.sleep(window)
            busy, n = _longtasks(page, t0)
            out["sensors_longtask_ms_per_s"], out["sensors_longtasks"] = busy / window, n
            target = f"sensor-{sensors - 1:05d}"
            t = time.perf_counter()
            page.fill("#search", target)
            page.wait_for_selector(f'#list-rows .vrow[data-id="{target}"]')
            out["search_ms"] = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            page.click(f'#list-rows .vrow[data-id="{target}"]')
            page.wait_for_selector("#d-live .main-svg")
            out["click_to_chart_ms"] = (time.perf_counter() - t) * 1000
            page.fill("#search", "")
            page.wait_for_function(f"document.getElementById('list-count').textContent.startsWith('{sensors:,}')")
            t = time.perf_counter()
            page.evaluate("document.getElementById('list').scrollTop = 1e9")
            page.wait_for_selector(f'#list-rows .vrow[data-id="{target}"]')
            out["scroll_to_end_ms"] = (time.perf_counter() - t) * 1000
            out["dom_rows"] = page.locator("#list-rows .vrow").count()
            shots = Path("benchmarks/out")
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / f"dashboard-sensors-{sensors}.png"))
            page.goto(url + "#overview")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(shots / f"dashboard-overview-{sensors}.png"))
            # arrival times in the page (ms); the sensors page too: navigation is by hash, no reload
            frames = [(t / 1000, n) for t, n in page.evaluate("window.__ws")]
            browser.close()
        text, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
    text = " ".join(text.split())
    m = re.search(r"readings \(([\d,]+)/s over", text)
    lat = re.search(r"p50 ([\d.]+) ms, p99 ([\d.]+) ms", text)
    out["readings_per_s"] = float(m.group(1).replace(",", "")) if m else None
    out["keep_up"] = out["readings_per_s"] / rate if m else None
    out["latency_p50_ms"], out["latency_p99_ms"] = (float(lat.group(1)), float(lat.group(2))) if lat else (None,
                                                                                                        None)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(frames)]
    out["ws_pushes"] = len(frames)
    out["ws_gap_median_s"] = statistics.median(gaps) if gaps else None
    out["ws_gap_max_s"] = max(gaps) if gaps else None
    out["ws_push_kb"] = statistics.median(n for _, n in frames) / 1024 if frames else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--sensors", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=50_000.0)
    args = ap.parse_args()
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as tmp:
        ref = run_one(200, 2000.0, args.duration, Path(tmp) / "ref")
        big = run_one(args.sensors, args.rate, args.duration, Path(tmp) / "big")
    keys = [k for k in big if k not in ("sensors", "rate")]
    print(f"{'figure':32} {'reference':>12} {'target':>12} {'ratio':>8}")
    print(f"{'sensors / rate':32} {'200 / 2000':>12} {f'{args.sensors} / {args.rate:.0f}':>12}")
    for k in keys:
        a, b = ref.get(k), big.get(k)
        ratio = f"{b / a:8.2f}" if isinstance(a, int | float) and isinstance(b, int | float) and a else ""
        fa = f"{a:12.3f}" if isinstance(a, float) else f"{a!s:>12}"
        fb = f"{b:12.3f}" if isinstance(b, float) else f"{b!s:>12}"
        print(f"{k:32} {fa} {fb} {ratio}")
    Path("benchmarks/out").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/out/demo_dashboard.json").write_text(json.dumps({"reference": ref, "target": big}, indent=2))


if __name__ == "__main__":
    main()

"""A running ``tidegauge demo`` for the dashboard tests, and the real headless Chromium that drives it.

The browser is Debian's ``chromium`` (``/usr/bin/chromium``) driven by Playwright for Python; nothing is
downloaded (never ``playwright install``). A missing Chromium skips the browser tests, or fails them
under ``TIDEGAUGE_REQUIRE_SERVERS=1`` (CI), like the broker servers in ``tests/connectors/servers.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.net import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def require_chromium() -> str:
    """Path of Debian's Chromium; skip, or fail under ``TIDEGAUGE_REQUIRE_SERVERS=1``."""
    if os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"Chromium not found at {CHROMIUM} (Debian: apt-get install -y chromium)"
    if os.environ.get("TIDEGAUGE_REQUIRE_SERVERS") == "1":
        pytest.fail(message + " (TIDEGAUGE_REQUIRE_SERVERS=1)")
    pytest.skip(message)


@dataclass
class RunningDemo:
    url: str
    token: str
    data_dir: Path
    proc: subprocess.Popen[str]
    log: Path

    def api(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(kw.pop("method", "GET"), self.url.rstrip("/") + path,
                             headers={"Authorization": f"Bearer {self.token}"}, timeout=10, **kw)


@contextmanager
def running_demo(data_dir: Path, *args: str, token: str = "test-token-7f3a") -> Iterator[RunningDemo]:
    """``tidegauge demo`` in a subprocess on a free port until the block ends (then Ctrl-C and wait)."""
    port = free_port()
    log = data_dir / "demo.out"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TIDEGAUGE_DEMO_TOKEN": token}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tidegauge", "demo", "--port", str(port), "--data-dir",
                                 str(data_dir / "history"), *args], stdout=out, stderr=subprocess.STDOUT,
                                text=True, env=env)
    demo = RunningDemo(f"http://127.0.0.1:{port}/", token, data_dir / "history", proc, log)
    try:
        deadline = time.monotonic() + 120  # start-up includes compiling the numba kernels
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the demo exited early:\n{log.read_text()}")
            try:
                if httpx.get(demo.url + "healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the demo did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield demo
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(predicate: Any, *, timeout: float, every: float = 0.5, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (bounds a broken run; not a speed check)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)

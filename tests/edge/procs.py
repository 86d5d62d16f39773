"""Helpers of the edge tests: a killable TCP proxy (the link), and the upstream/agent processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import polars as pl

from tests.net import free_port

HERE = Path(__file__).parent
TOKEN = "edge-test-token"


class LinkProxy:
    """A TCP proxy ``127.0.0.1:port -> 127.0.0.1:target`` in its own thread; ``cut()`` drops the link.

    ``cut()`` closes the listening socket and every open connection (clients see refused/reset
    connections); ``restore()`` listens again on the same port.
    """

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.restore()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._conns |= {writer, uw}
        await asyncio.gather(self._pipe(reader, uw), self._pipe(ur, writer))
        self._conns -= {writer, uw}

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._conns):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._conns.clear()

    def restore(self) -> None:
        self._call(self._start())

    def cut(self) -> None:
        self._call(self._stop())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class Proc:
    """A child process with its output in a log file; stopped for sure at teardown."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log, self.env = args, log, env
        self.p: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        out = open(self.log, "ab")
        env = {**os.environ, "TIDEGAUGE_LOG_LEVEL": "INFO", **(self.env or {})}
        self.p = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()

    def kill(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        if self.p is None:
            return None
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.p.returncode

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""


def upstream(root: Path, port: int, webhook: str | None = None) -> Proc:
    args = [sys.executable, str(HERE / "upstream_proc.py"), str(root), str(port), TOKEN]
    if webhook:
        args.append(webhook)
    p = Proc(args, root.parent / f"{root.name}.log")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 60, f"upstream on {port}", p)
    return p


def agent(data_dir: Path, upstream_port: int, listen: int, *extra: str) -> Proc:
    args = [sys.executable, "-m", "tidegauge", "agent", "--id", "gw-1", "--upstream",
            f"http://127.0.0.1:{upstream_port}", "--token", TOKEN, "--data-dir", str(data_dir),
            "--listen", f"127.0.0.1:{listen}", "--heartbeat-interval", "1s", *extra]
    p = Proc(args, data_dir.parent / f"{data_dir.name}.log")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{listen}/healthz"), 90, "agent", p)
    return p


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def status(listen: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{listen}/status", timeout=5) as r:
        return dict(json.loads(r.read()))


def metrics(url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def wait_for(cond: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and not proc.alive():
            raise AssertionError(f"{what}: process exited ({proc.p and proc.p.returncode})\n{proc.tail()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{proc.tail()}" if proc else ""))


def received(root: Path, stream: str) -> pl.DataFrame:
    """What the upstream flow wrote for ``stream`` (committed parts, in order)."""
    parts = sorted((root / "out" / stream).glob("part-*.jsonl"))
    frames = [pl.read_ndjson(p) for p in parts if p.stat().st_size]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


@contextlib.asynccontextmanager
async def running(intake: Any, *, connected: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    """An upstream intake (``JetStreamIntake``, ``MqttIntake``) running until the block ends; with
    ``connected``, the block starts once it is connected to its server."""
    stop = asyncio.Event()
    task = asyncio.create_task(intake.run(stop))
    try:
        if connected:
            await asyncio.wait_for(intake.connected.wait(), 10)
        yield task
    finally:
        stop.set()
        await task

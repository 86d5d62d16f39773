"""Waiting for test servers and conditions: a free port, a port that answers, a condition that holds."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, *, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None,
              log: Path | None = None, what: str = "server") -> None:
    """Until something accepts connections on 127.0.0.1:``port``; ``AssertionError`` when ``proc`` exits
    first (with ``log``'s text) or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                detail = f": {log.read_text()}" if log is not None and log.exists() else ""
                raise AssertionError(f"{what} exited with {proc.returncode}{detail}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: nothing listens on port {port} after {timeout:.0f} s") from None
            time.sleep(0.05)


async def until(cond: Callable[[], bool], *, timeout: float = 30.0, every: float = 0.01) -> bool:
    """Poll ``cond`` until it holds (``True``) or ``timeout`` seconds pass (``False``: the caller's
    assertions then say what was missing)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)
    return True

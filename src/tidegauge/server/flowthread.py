"""Running the flow beside the HTTP server: in the server's event loop, or in a thread of its own.

``server.flow: thread`` (the default) runs the runner in a dedicated thread with its own event loop, so
the flow's CPU work (building the batch from the records the server decoded, key encoding, windows,
detectors: mostly polars and numba, which release the GIL) runs on another core while the server's loop
keeps answering requests (see ``benchmarks/http_ingest.py``).
``server.flow: loop`` runs both in one event loop (one core; simpler to debug).

What the two threads share, and why it is safe: the intake log (appended by the server, read and
truncated by the flow: :class:`~tidegauge.connectors.http.IntakeLog` locks its segment list and its
in-memory queue of recent frames, and wakes a waiting reader in another loop with
``call_soon_threadsafe``; the decoded records it hands over are not changed after the append);
``runner.metrics`` and ``runner.positions()`` (read at scrape time: plain values and copies);
``runner.stop()`` (a flag the runner checks at least every tick); the
:class:`~tidegauge.alerting.AlertManager` and the dashboard's :class:`~tidegauge.server.live.LiveState`
(each locked by itself).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Literal

__all__ = ["FlowMode", "FlowThread"]

logger = logging.getLogger(__name__)

FlowMode = Literal["thread", "loop"]


class FlowThread:
    """Runs ``runner.run_async()`` in a thread of its own, with a fresh event loop (uvloop when installed).

    Awaiting :meth:`result` (from the server's loop) gives the runner's result or raises its error.
    """

    def __init__(self, runner: Any, *, name: str = "tidegauge-flow") -> None:
        self.runner = runner
        self.loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[Any] | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._caller: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the flow thread; call from the event loop that will await :meth:`result`."""
        self._caller = asyncio.get_running_loop()
        self._done = self._caller.create_future()
        self._thread.start()

    async def result(self) -> Any:
        if self._done is None:
            raise RuntimeError("FlowThread.start() was not called")
        return await self._done

    def stop(self) -> None:
        """Ask the runner to finish its batch, checkpoint and stop (from any thread)."""
        self.runner.stop()  # a flag: the runner sees it after its current batch or at its next tick

    def _main(self) -> None:
        loop = _new_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        outcome: tuple[bool, Any]
        try:
            outcome = (True, loop.run_until_complete(self.runner.run_async()))
        except BaseException as exc:  # handed to the awaiting loop, which re-raises it
            outcome = (False, exc)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
        caller = self._caller
        if caller is not None and not caller.is_closed():
            caller.call_soon_threadsafe(_settle, self._done, outcome)


def _settle(fut: asyncio.Future[Any] | None, outcome: tuple[bool, Any]) -> None:
    if fut is None or fut.done():
        return
    ok, value = outcome
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        uvloop: Any = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def start_flow(runner: Any, mode: FlowMode) -> tuple[asyncio.Future[Any], Callable[[], None]]:
    """Start ``runner`` as ``mode`` says: the future of its result and the function that stops it."""
    if mode == "loop":
        task: asyncio.Future[Any] = asyncio.ensure_future(_awaitable(runner.run_async()))
        return task, runner.stop
    ft = FlowThread(runner)
    ft.start()
    return asyncio.ensure_future(ft.result()), ft.stop


async def _awaitable(coro: Awaitable[Any]) -> Any:
    return await coro

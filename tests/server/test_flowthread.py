"""serve() with the flow in its own thread or in the server's loop: results, failures and stops come back."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.net import free_port
from tests.server.helpers import TOKENS, server_config
from tidegauge.dataflow import Flow, Runner
from tidegauge.errors import ConnectorError
from tidegauge.server import serve
from tidegauge.testing import MemorySink, MemorySource

ROWS = pl.DataFrame({"sensor_id": ["a", "b", "a"],
                     "timestamp": ["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"]})


class _Failing:
    """A source whose first batch raises (a broker gone for good)."""

    guarantee = "at-least-once"
    snapshot_type = None
    name = "failing"

    def build(self, resume_state: Any) -> _Failing:
        return self

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        raise OSError("the broker went away")

    def snapshot(self) -> None:
        return None

    async def ack(self, position: Any) -> None: ...
    async def close(self) -> None: ...


@pytest.mark.parametrize("mode", ["thread", "loop"])
def test_a_finite_flow_ends_serve_with_its_result(mode: str) -> None:
    seen: dict[str, Any] = {}

    class Spy(MemorySink):
        async def write_batch(self, df: pl.DataFrame) -> None:
            seen["thread"] = threading.current_thread().name
            await super().write_batch(df)

    flow2 = Flow("finite2")
    spy = Spy()
    flow2.source(MemorySource(ROWS)).sink(spy)
    config = server_config(port=free_port(), flow=mode)
    result = asyncio.run(serve(Runner(flow2), config, environ={"TG_TEST_ADMIN": TOKENS["admin"]},
                               handle_signals=False))
    assert result.records_in == 3 and spy.to_frame().height == 3
    assert (seen["thread"] == "tidegauge-flow") == (mode == "thread")


@pytest.mark.parametrize("mode", ["thread", "loop"])
def test_a_failing_flow_raises_out_of_serve(mode: str) -> None:
    flow = Flow("failing")
    flow.source(_Failing()).sink(MemorySink())  # type: ignore[arg-type]
    config = server_config(port=free_port(), flow=mode)
    with pytest.raises(ConnectorError, match="the broker went away"):
        asyncio.run(serve(Runner(flow), config, environ={"TG_TEST_ADMIN": TOKENS["admin"]},
                          handle_signals=False))


def test_stopping_serve_stops_the_flow_thread(tmp_path: Path) -> None:
    flow = Flow("endless")
    flow.source(MemorySource(ROWS, stay_open=True)).sink(MemorySink())
    runner = Runner(flow, tick="20ms")
    config = server_config(port=free_port())

    async def main() -> Any:
        started = asyncio.Event()
        task = asyncio.create_task(serve(runner, config, environ={"TG_TEST_ADMIN": TOKENS["admin"]},
                                         started=started, handle_signals=False))
        await asyncio.wait_for(started.wait(), 30)
        runner.stop()
        return await asyncio.wait_for(task, 30)

    result = asyncio.run(main())
    assert result.records_in == 3
    assert not [t for t in threading.enumerate() if t.name == "tidegauge-flow"]

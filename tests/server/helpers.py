"""A real flow (HttpIngestSource -> MemorySink, dead letters -> MemorySink) behind the ASGI app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tidegauge.connectors.http import HttpIngestSource
from tidegauge.dataflow import CheckpointConfig, Flow, Runner
from tidegauge.server import ServerConfig, TokenConfig, build_app, hash_token
from tidegauge.testing import MemorySink

TOKENS = {"ingest": "tok-ingest", "read": "tok-read", "admin": "tok-admin", "device": "tok-device"}


def server_config(**overrides: Any) -> ServerConfig:
    tokens = [
        TokenConfig("gateway", ["ingest"], hash=hash_token(TOKENS["ingest"])),
        TokenConfig("reader", ["read"], hash=hash_token(TOKENS["read"])),
        TokenConfig("ops", ["admin"], env="TG_TEST_ADMIN"),
        TokenConfig("device-7", ["ingest"], hash=hash_token(TOKENS["device"]), sensors=["S7"]),
    ]
    return ServerConfig(**{"tokens": tokens, **overrides})


def auth(scope: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[scope]}"}


@dataclass
class Harness:
    runner: Runner
    client: httpx.AsyncClient
    out: MemorySink
    dead: MemorySink
    source: HttpIngestSource
    app: Any

    async def drained(self) -> None:
        """Wait until the flow has processed everything in the intake log."""
        log = self.source.open_log()
        for _ in range(2000):
            pos = self.runner.positions().get("http")
            if (log.start if pos is None else pos.offset) >= log.end:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the flow did not catch up with the intake log")


@asynccontextmanager
async def harness(tmp: Path, *, max_lag_bytes: int = 16 << 20, **overrides: Any) -> AsyncIterator[Harness]:
    source = HttpIngestSource(tmp / "intake", durability="os", max_lag_bytes=max_lag_bytes)
    flow = Flow("t")
    out, dead = MemorySink(), MemorySink()
    flow.source(source).sink(out, name="out")
    flow.dead_letters().sink(dead, name="dead")
    runner = Runner(flow, checkpoint=CheckpointConfig(tmp / "cp", interval="200ms"), max_delay="2ms", tick="20ms")
    app = build_app(runner, server_config(**overrides), environ={"TG_TEST_ADMIN": TOKENS["admin"]})
    task = asyncio.create_task(runner.run_async())
    while source.logic is None:
        if task.done():  # the flow failed before reading: its error, not an endless wait
            task.result()
            raise AssertionError("the flow ended before it read its source")
        await asyncio.sleep(0.001)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tg") as client:
        try:
            yield Harness(runner, client, out, dead, source, app)
        finally:
            runner.stop()
            await task

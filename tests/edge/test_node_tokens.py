"""Tokens bound to edge node ids: an agent's token may only send heartbeats and batches as its own node(s)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.edge.test_receiver import batch
from tidegauge.cli.serve import build_served_pipeline
from tidegauge.edge import wire
from tidegauge.edge.heartbeat import Heartbeat
from tidegauge.edge.receiver import receiver_for_flow
from tidegauge.errors import ConfigError
from tidegauge.server import build_app, hash_token
from tidegauge.server.config import ServerConfig, TokenConfig

GW1, ANY, DEVICE = "tok-gw1", "tok-any-node", "tok-device"

PIPELINE = f"""
name: upstream
source: {{http: {{log_dir: intake, durability: os}}}}
sink: {{file: out/readings.parquet}}
checkpoint: {{dir: cp, interval: 100ms}}
coordinator:
  strategy: round_robin
  heartbeat_timeout: 5s
  settle: 0s
  sensors: {{ids: [s1, s2]}}
server:
  tokens:
    - {{name: gw-1, env: TG_TEST_TOKEN_GW1, scopes: [ingest], nodes: [gw-1]}}
    - {{name: fleet, hash: "{hash_token(ANY)}", scopes: [ingest, read]}}
    - {{name: device-7, hash: "{hash_token(DEVICE)}", scopes: [ingest], sensors: [s1]}}
"""


def _hb(node: str) -> bytes:
    return Heartbeat(node_id=node, sent_at_us=0, version="t").encode()


def test_a_node_bound_token_acts_only_as_its_node(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE)
    runner, config = build_served_pipeline(path)
    assert config.tokens[0].nodes == ["gw-1"]
    receiver = receiver_for_flow(runner.flow, tmp_path / "edge.db")
    # the clear token comes from the environment, as `tidegauge serve` passes os.environ
    app = build_app(runner, config, environ={"TG_TEST_TOKEN_GW1": GW1}, edge_receiver=receiver)
    coordinator = app.state.coordinator

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def main() -> None:
        task = asyncio.create_task(runner.run_async())
        while receiver.sources["readings"].logic is None:  # 503 until the flow reads the source
            assert not task.done(), task.result()
            await asyncio.sleep(0.005)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tg") as c:
            ok = await c.post("/api/v1/edge/heartbeat", content=_hb("gw-1"), headers=bearer(GW1))
            assert ok.status_code == 200, ok.text
            bad = await c.post("/api/v1/edge/heartbeat", content=_hb("gw-2"), headers=bearer(GW1))
            assert bad.status_code == 403
            assert bad.json()["error"] == "token 'gw-1' may not act as edge node 'gw-2' (it may act as gw-1)"
            assert "gw-2" not in coordinator.registry.agents, "a refused heartbeat must not register the agent"
            device = await c.post("/api/v1/edge/heartbeat", content=_hb("gw-1"), headers=bearer(DEVICE))
            assert device.status_code == 403 and "limited to sensors" in device.json()["error"]
            # a token without `nodes` may act as any node
            assert (await c.post("/api/v1/edge/heartbeat", content=_hb("gw-3"),
                                 headers=bearer(ANY))).status_code == 200

            body, headers = batch(1, 3, node="gw-1")
            r = await c.post(wire.PATH, content=body, headers={**headers, **bearer(GW1)})
            assert r.status_code == 200 and r.json()["acked"] == 3, r.text
            body, headers = batch(1, 3, node="gw-2")
            r = await c.post(wire.PATH, content=body, headers={**headers, **bearer(GW1)})
            assert r.status_code == 403 and "may not act as edge node 'gw-2'" in r.json()["error"]
            r = await c.post(wire.PATH, content=body, headers={**headers, **bearer(DEVICE)})
            assert r.status_code == 403 and "limited to sensors" in r.json()["error"]
            assert ("gw-2", "readings") not in receiver.acked, "a refused batch must not be acknowledged"
            r = await c.post(wire.PATH, content=body, headers={**headers, **bearer(ANY)})
            assert r.status_code == 200 and r.json()["acked"] == 3
        runner.stop()
        await task

    asyncio.run(main())
    log = receiver.sources["readings"].open_log()
    frames, _ = log.read(log.start, 10**6)
    nodes = [line.split(b'"edge_node":"')[1].split(b'"')[0] for _, p in frames for line in p.splitlines()]
    assert nodes == [b"gw-1"] * 3 + [b"gw-2"] * 3, "only the accepted batches reached the intake log"
    receiver.close()


@pytest.mark.parametrize(("token", "message"), [
    (TokenConfig("gw", ["ingest"], hash=hash_token("x"), nodes=[]), "nodes: list at least one"),
    (TokenConfig("gw", ["ingest"], hash=hash_token("x"), nodes=[" "]), "nodes: list at least one"),
    (TokenConfig("gw", ["ingest"], hash=hash_token("x"), nodes=["a"], sensors=["s"]), "not both"),
])
def test_bad_node_bindings_are_config_errors(token: TokenConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig(tokens=[token])


def test_a_misspelt_key_in_a_token_lists_nodes(tmp_path: Path) -> None:
    from tidegauge.pipeline import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text("source: {http: {}}\nserver: {tokens: [{name: a, env: X, scopes: [ingest], node: [gw]}]}\n")
    with pytest.raises(ConfigError, match="nodes"):
        load_pipeline(path)

"""The MQTT v5 uplink against real Mosquitto brokers: every record once, in order per stream, through outages.

- in process (:class:`MqttUplink` and :class:`MqttIntake` on one event loop): a broker's PUBACK does not take a
  batch out of the outbox, only the upstream's answer does; batches published while the upstream is away
  wait at the broker (its persistent session) and are applied when it returns; a batch or heartbeat whose
  topic names another agent is refused; heartbeats are answered by the coordinator, or 404 without one;
- real processes (``tidegauge agent --upstream mqtt://...`` and ``tidegauge serve --edge-mqtt ...``): an agent
  registers with the coordinator and delivers every reading once, in order; then the upstream killed while the
  agent publishes, the broker (without persistence: what it queued is gone) restarted, the upstream started
  again: still every reading once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pytest

from tests.connectors.servers import private_mosquitto, require, unique
from tests.edge.procs import Proc, http_ok, running, status, wait_for
from tests.edge.test_jetstream import FAST, STREAMS, exactly_once, fill, received, receiver_at, until
from tests.net import free_port
from tidegauge.edge.mqtt import MqttEdgeConfig, MqttIntake, MqttUplink, answer_topic_for, topic_for
from tidegauge.edge.outbox import Outbox, StreamPolicy
from tidegauge.edge.uplink import UplinkConfig, _Refused
from tidegauge.server import hash_token

SHARED = "mqtt://127.0.0.1:1883"
TOKEN = "tok-edge-mqtt"


def config() -> MqttEdgeConfig:
    """Topics and a session of the test's own on a shared broker."""
    return MqttEdgeConfig(prefix=f"{unique('tg')}/edge", durable=unique("upstream"))


@contextlib.contextmanager
def _v5_client() -> Iterator[Any]:
    """An MQTT v5 paho client on the shared broker, its network loop running (the agent's forger)."""
    import paho.mqtt.client as paho

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    try:
        yield c
    finally:
        c.disconnect()
        c.loop_stop()


# -- in process ---------------------------------------------------------------------------------------------------
@pytest.mark.server
def test_a_pubacked_batch_stays_in_the_outbox_until_the_upstream_answers(tmp_path: Path) -> None:
    """The broker takes every batch (PUBACK) while no upstream runs: the outbox keeps them all; the upstream
    starts, and its answers take them out: every record once, in order, over two streams."""
    with private_mosquitto(tmp_path) as port:
        url, cfg = f"mqtt://127.0.0.1:{port}", config()

        async def main() -> None:
            box = Outbox(tmp_path / "agent" / "outbox.db", {s: StreamPolicy() for s in STREAMS})
            up = MqttUplink(box, url, node_id="gw-1", config=FAST, mqtt=cfg)
            run = asyncio.create_task(up.run())
            for i in range(4):
                fill(box, "readings", 500, 500 * i)
                fill(box, "windows", 40, 40 * i)
            await until(lambda: up.errors.get("timeout", 0) >= 2, 30, lambda: f"timeouts: {up.figures()}")
            await asyncio.sleep(1.0)
            assert box.stats("readings").acked_seq == 0 and box.stats("windows").acked_seq == 0, \
                "a broker's PUBACK is not the upstream's acknowledgement"
            assert box.stats("readings").depth == 2000
            receiver = receiver_at(tmp_path / "up")
            stop = asyncio.Event()
            intake = MqttIntake(receiver, url, config=cfg)
            task = asyncio.create_task(intake.run(stop))
            await until(lambda: all(box.stats(s).depth == 0 for s in STREAMS), 60,
                        lambda: f"the outbox to drain: {up.figures()} {intake.counts}")
            stop.set()
            up.stop()
            await asyncio.gather(run, task)
            await up.close()
            exactly_once(received(receiver), {"readings": 2000, "windows": 160})
            assert up.link == "up" and intake.counts["rejected"] == 0
            receiver.close()
            box.close()

        asyncio.run(main())


@pytest.mark.server
def test_batches_published_while_the_upstream_is_away_wait_in_its_session(tmp_path: Path) -> None:
    """The upstream stops (its persistent session stays at the broker); batches published meanwhile are queued
    for it and applied, in order, when it comes back; the agent takes them out of its outbox on those answers."""
    require("mosquitto")
    cfg = config()
    slow = UplinkConfig(batch_records=300, timeout="30s", backoff_initial="50ms", backoff_max="300ms")

    async def main() -> None:
        receiver = receiver_at(tmp_path / "up")
        intake = MqttIntake(receiver, SHARED, config=cfg)
        async with running(intake):
            box = Outbox(tmp_path / "agent" / "outbox.db", {"readings": StreamPolicy()})
            up = MqttUplink(box, SHARED, node_id="gw-1", config=slow, mqtt=cfg)
            run = asyncio.create_task(up.run())
            fill(box, "readings", 600)
            await until(lambda: box.stats("readings").acked_seq == 600, 30, "the first batches answered")
        receiver.close()
        fill(box, "readings", 600, 600)  # published while nobody consumes: the broker queues them
        await until(lambda: up.sent_cursor["readings"] > 600, 10, "a batch published while the upstream is away")
        await asyncio.sleep(0.5)
        assert box.stats("readings").acked_seq == 600
        receiver = receiver_at(tmp_path / "up")
        stop = asyncio.Event()
        intake = MqttIntake(receiver, SHARED, config=cfg)
        task = asyncio.create_task(intake.run(stop))
        await until(lambda: box.stats("readings").acked_seq == 1200, 20, lambda: f"{up.figures()} {intake.counts}")
        assert not up.errors, "answered from the session's queue, within the first timeout"
        assert intake.counts["applied"] >= 2
        stop.set()
        up.stop()
        await asyncio.gather(task, run)
        await up.close()
        exactly_once(received(receiver), {"readings": 1200})
        receiver.close()
        box.close()

    asyncio.run(main())


@pytest.mark.server
def test_a_batch_on_another_agents_topic_is_refused(tmp_path: Path) -> None:
    """The broker's ACL binds an agent to ``<prefix>/<its id>/#``: a batch whose properties name another node
    than its topic is answered 403 (on the topic's agent's answer topic) and not applied."""
    require("mosquitto")
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    cfg = config()

    async def main() -> None:
        receiver = receiver_at(tmp_path / "up")
        intake = MqttIntake(receiver, SHARED, config=cfg)
        async with running(intake):
            answers: list[tuple[str, bytes, dict[str, str]]] = []
            with _v5_client() as pub:
                pub.on_message = lambda _c, _u, m: answers.append((m.topic, bytes(m.payload), {}))
                pub.subscribe(f"{cfg.prefix}-ack/#", qos=1)
                await asyncio.sleep(0.3)
                for node, topic_node in (("gw-victim", "gw-attacker"), ("gw-attacker", "gw-attacker")):
                    props = Properties(PacketTypes.PUBLISH)
                    props.UserProperty = [("x-edge-node", node), ("x-edge-stream", "readings"),
                                          ("x-edge-first-seq", "1"), ("x-edge-last-seq", "1"), ("x-edge-prev-seq", "0")]
                    props.CorrelationData = node.encode()
                    body = b'{"edge_node":"%s","edge_stream":"readings","edge_replay":false,"edge_seq":1,"v":0}\n' % (
                        node.encode())
                    pub.publish(topic_for(cfg, topic_node, "readings"), body, qos=1, properties=props)
                await until(lambda: len(answers) == 2, 10, lambda: f"two answers: {answers} {intake.counts}")
        assert {t for t, _, _ in answers} == {answer_topic_for(cfg, "gw-attacker")}
        bodies = [msgspec.json.decode(b) for _, b, _ in answers]
        assert any("an agent sends only its own" in str(b.get("error")) for b in bodies)
        assert any(b.get("acked") == 1 for b in bodies)
        assert intake.counts["rejected"] == 1 and intake.counts["applied"] == 1
        assert ("gw-victim", "readings") not in receiver.acked
        assert [who for who, _, _ in received(receiver)["readings"]] == ["gw-attacker"]
        receiver.close()

    asyncio.run(main())


@pytest.mark.server
def test_heartbeats_over_mqtt_get_the_coordinators_assignment(tmp_path: Path) -> None:
    """Heartbeats are answered with the coordinator's assignment; another agent's heartbeat is refused (403),
    a broken one 400; no upstream is a failed heartbeat (not 'no coordinator'); an upstream without a
    coordinator answers 404."""
    require("mosquitto")
    from tidegauge.edge.coordinator import Coordinator
    from tidegauge.edge.heartbeat import Assignment, Heartbeat
    from tidegauge.edge.strategies import SensorInfo

    cfg = config()
    coordinator = Coordinator("round_robin", settle="0s", sensors=[SensorInfo(f"s{i}") for i in range(4)])

    def beat(node: str) -> bytes:
        return Heartbeat(node_id=node, sent_at_us=0, version="t").encode()

    async def main() -> None:
        receiver = receiver_at(tmp_path / "up")
        intake = MqttIntake(receiver, SHARED, config=cfg, coordinator=coordinator)
        async with running(intake):
            box = Outbox(tmp_path / "o.db", {"readings": StreamPolicy()})
            up = MqttUplink(box, SHARED, node_id="gw-1", mqtt=cfg, config=UplinkConfig(timeout="3s"))
            st, answer = await up.heartbeat(beat("gw-1"))
            assert st == 200, answer
            assignment = msgspec.json.decode(answer, type=Assignment)
            assert assignment.node_id == "gw-1" and sorted(assignment.sensors) == ["s0", "s1", "s2", "s3"]
            st, answer = await up.heartbeat(beat("gw-2"))
            assert st == 403 and b"an agent sends only its own" in answer
            st, answer = await up.heartbeat(b"{not json")
            assert st == 400 and b"not a valid heartbeat" in answer
            assert [a["node_id"] for a in coordinator.agents()] == ["gw-1"]
            assert intake.counts["heartbeats"] == 1 and intake.counts["heartbeats_refused"] == 2
        with pytest.raises(_Refused, match="timeout: no answer"):
            await up.heartbeat(beat("gw-1"))
        intake = MqttIntake(receiver, SHARED, config=cfg)  # the same session, no coordinator now
        async with running(intake):
            st, answer = await up.heartbeat(beat("gw-1"))
            assert st == 404 and b"no coordinator" in answer
        await up.close()
        receiver.close()
        box.close()

    asyncio.run(main())


def test_urls_and_topics() -> None:
    from tidegauge.edge.agent import AgentConfig
    from tidegauge.edge.mqtt import connection_for, parse_mqtt_url

    assert parse_mqtt_url("mqtt://b") == (False, "b", 1883, None)
    assert parse_mqtt_url("mqtts://gw-1@b:8884") == (True, "b", 8884, "gw-1")
    with pytest.raises(ValueError, match="not in the URL"):
        parse_mqtt_url("mqtt://gw-1:secret@b")
    with pytest.raises(ValueError, match="not in the URL"):
        AgentConfig(node_id="gw", upstream="mqtt://gw:secret@b", data_dir="/tmp/x")
    conn = connection_for("mqtts://b", client_id="c", username="gw-1", password="pw", ca_file="/ca.pem",
                          reconnect_min=0.1, reconnect_max=1.0)
    assert (conn.username, conn.password, conn.port, conn.tls and conn.tls.ca_file) == ("gw-1", "pw", 8883, "/ca.pem")
    cfg = MqttEdgeConfig(prefix="site/edge")
    assert topic_for(cfg, "gw/1", "a+b#") == "site/edge/gw_1/a_b_"
    assert answer_topic_for(cfg, "gw-1") == "site/edge-ack/gw-1"
    with pytest.raises(ValueError, match="plain topic prefix"):
        MqttEdgeConfig(prefix="site/#")


# -- real processes -----------------------------------------------------------------------------------------------
def _pipeline(tmp: Path, port: int, *, coordinator: bool) -> Path:
    path = tmp / "pipeline.yaml"
    section = """coordinator:
  strategy: round_robin
  heartbeat_timeout: 5s
  settle: 0s
  sensors: {simulator: {sensors: 20, seed: 11}}
""" if coordinator else ""
    path.write_text(f"""
name: upstream
source: {{http: {{log_dir: intake, durability: os, schema: {{sensor_id: str, timestamp: timestamp,
                                                            temperature: float, edge_node: str, edge_seq: int}}}}}}
sink: {{file: out/readings.jsonl}}
checkpoint: {{dir: checkpoints, interval: 500ms}}
{section}server:
  port: {port}
  dashboard: false
  tokens: [{{name: edge, hash: "{hash_token(TOKEN)}", scopes: [ingest, read]}}]
""")
    return path


class _Upstream:
    """``tidegauge serve PIPELINE --edge-db ... --edge-mqtt URL`` as a process; ``kill()`` and ``start()``."""

    def __init__(self, tmp: Path, broker: str, cfg: MqttEdgeConfig, *, coordinator: bool) -> None:
        self.tmp, self.port = tmp, free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        pipeline = _pipeline(tmp, self.port, coordinator=coordinator)
        self.args = [sys.executable, "-m", "tidegauge", "serve", str(pipeline), "--edge-db", str(tmp / "edge.db"),
                     "--edge-mqtt", broker, "--edge-mqtt-prefix", cfg.prefix, "--edge-mqtt-durable", cfg.durable]
        self.proc: Proc | None = None
        self.start()

    def start(self) -> None:
        self.proc = Proc(self.args, self.tmp / "upstream.log")
        wait_for(lambda: http_ok(f"http://127.0.0.1:{self.port}/healthz"), 90, "upstream", self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None and self.proc.p is not None and self.proc.alive():
            self.proc.p.send_signal(signal.SIGINT)  # serve checkpoints and stops on SIGINT
            self.proc.stop(60)

    def get(self, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def readings(self) -> pl.DataFrame:
        """What the upstream flow wrote (committed parts, in order)."""
        parts = sorted((self.tmp / "out" / "readings.jsonl.parts").glob("part-*.jsonl"))
        frames = [pl.read_ndjson(p) for p in parts if p.stat().st_size]
        return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _agent(tmp: Path, broker: str, cfg: MqttEdgeConfig, limit: int, rate: int) -> tuple[Proc, int]:
    listen = free_port()
    args = [sys.executable, "-m", "tidegauge", "agent", "--id", "gw-1", "--upstream", broker,
            "--data-dir", str(tmp / "agent"), "--listen", f"127.0.0.1:{listen}", "--mqtt-prefix", cfg.prefix,
            "--heartbeat-interval", "1s", "--checkpoint-interval", "500ms", "--uplink-timeout", "2s",
            "--no-detect", "--forward", "readings", "--sensors", "20", "--seed", "11", "--rate", str(rate),
            "--limit", str(limit), "--batch-records", "250"]
    p = Proc(args, tmp / "agent.log")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{listen}/healthz"), 90, "agent", p)
    return p, listen


def _outbox(listen: int) -> dict[str, int]:
    return dict(status(listen)["outbox"]["readings"])


def _once_in_order(up: _Upstream, n: int) -> None:
    wait_for(lambda: up.readings().height >= n, 30, f"the upstream flow to write {n} readings", up.proc)
    time.sleep(1.5)  # a checkpoint more: nothing else comes
    got = up.readings()
    assert got["edge_node"].unique().to_list() == ["gw-1"]
    assert got["edge_seq"].to_list() == list(range(1, n + 1)), "every reading once, in order"


@contextlib.contextmanager
def _stopped(*procs: object) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()  # type: ignore[attr-defined]


@pytest.mark.server
def test_agent_process_over_mqtt_registers_and_delivers_every_reading_once(tmp_path: Path) -> None:
    require("mosquitto")
    cfg, n = config(), 3000
    up = _Upstream(tmp_path / "up", SHARED, cfg, coordinator=True)
    agent, listen = _agent(tmp_path, SHARED, cfg, limit=n, rate=1000)
    with _stopped(agent, up):
        # heartbeats over MQTT (the agent has no HTTP route to the upstream): online at the coordinator
        wait_for(lambda: any(a["node_id"] == "gw-1" and a["status"] == "online"
                             for a in up.get("/api/v1/edge/agents")), 30,
                 "gw-1 online at the upstream's coordinator", agent)
        wait_for(lambda: _outbox(listen)["acked_seq"] == n, 60, f"{n} readings answered", agent)
        assert _outbox(listen)["depth"] == 0 and status(listen)["link"] == "up"
        _once_in_order(up, n)
    assert agent.p is not None and agent.p.returncode == 0, agent.tail()


@pytest.mark.server
def test_upstream_and_broker_restarted_mid_run_every_reading_once_in_order(tmp_path: Path) -> None:
    """The upstream is killed while the agent publishes; then the broker, which had queued those batches for the
    upstream's session, is restarted without persistence (they are gone); the upstream starts again. The
    agent's outbox still has them (no answer came), so every reading arrives once, in order. The upstream has no
    coordinator: its 404 to heartbeats does not disturb the uplink."""
    require("mosquitto")
    port, cfg, n = free_port(), config(), 6000
    url = f"mqtt://127.0.0.1:{port}"
    broker = contextlib.ExitStack()
    broker.enter_context(private_mosquitto(tmp_path, port=port))
    with broker:
        up = _Upstream(tmp_path / "up", url, cfg, coordinator=False)
        agent, listen = _agent(tmp_path, url, cfg, limit=n, rate=300)
        with _stopped(agent, up):
            wait_for(lambda: _outbox(listen)["acked_seq"] >= 1000, 60, "the first readings answered", agent)
            up.kill()
            acked = _outbox(listen)["acked_seq"]
            wait_for(lambda: _outbox(listen)["last_seq"] >= acked + 750, 30, "readings written meanwhile", agent)
            time.sleep(1.0)
            assert _outbox(listen)["acked_seq"] <= acked + 500, "nothing is answered while the upstream is down"
            broker.close()  # what the broker queued for the upstream's session is gone (no persistence)
            time.sleep(1.0)
            broker.enter_context(private_mosquitto(tmp_path, port=port))
            up.start()
            wait_for(lambda: _outbox(listen)["acked_seq"] == n, 90, "every reading answered", agent)
            assert status(listen)["link"] == "up"
            _once_in_order(up, n)
            assert "has no coordinator (404 on heartbeats)" in agent.log.read_text()
        assert agent.p is not None and agent.p.returncode == 0, agent.tail()

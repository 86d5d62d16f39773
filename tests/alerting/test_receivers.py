"""Real receivers: an HTTP server, an SMTP server (aiosmtpd), Mosquitto and NATS."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

from tests.alerting.helpers import T0, batch
from tidegauge._time import ManualClock
from tidegauge.alerting import AlertManager, parse_config


def _cfg(receiver: dict[str, Any]) -> Any:
    return parse_config({
        "rules": [{"name": "hot", "expr": "temperature > 40", "annotations": {"summary": "{sensor_id} hot"}}],
        "route": {"receiver": receiver["name"], "group_wait": "0s", "group_interval": "1m"},
        "receivers": [receiver],
    })


def test_webhook_payload_is_alertmanager_compatible(tmp_path: Path, http_server: Any) -> None:
    url, got = http_server
    clock = ManualClock(T0)
    m = AlertManager(_cfg({"name": "hook", "kind": "webhook", "url": url}), store=tmp_path / "a.db", clock=clock)
    m.evaluate(batch({"a": 50.0, "b": 45.0}, t_us=T0))
    clock.advance("1m")
    m.evaluate(batch({"a": 20.0, "b": 20.0}, t_us=clock.now_us()))
    clock.advance("1m")
    m.tick()
    m.close()
    assert [p["status"] for p in got] == ["firing", "resolved"]
    p = got[0]
    assert set(p) == {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels", "commonLabels",
                      "commonAnnotations", "externalURL", "alerts"}
    assert p["receiver"] == "hook" and p["groupLabels"] == {"alertname": "hot"}
    assert [a["labels"]["sensor_id"] for a in p["alerts"]] == ["a", "b"]
    assert {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"} == set(
        p["alerts"][0])


def test_webhook_down_is_retried_and_does_not_block_others(tmp_path: Path, http_server: Any) -> None:
    url, got = http_server
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    cfg = parse_config({
        "rules": [{"name": "hot", "expr": "temperature > 40"}],
        "route": {"receiver": "dead", "group_wait": "0s", "continue": False,
                  "routes": [{"receiver": "dead", "continue": True}, {"receiver": "live"}]},
        "receivers": [{"name": "dead", "kind": "webhook", "url": dead, "timeout": "1s", "max_attempts": 2},
                      {"name": "live", "kind": "webhook", "url": url}],
    })
    clock = ManualClock(T0)
    m = AlertManager(cfg, store=tmp_path / "a.db", clock=clock)
    m.evaluate(batch({"a": 50.0}, t_us=T0))
    assert len(got) == 1
    clock.advance("1s")
    m.tick()
    assert m.metrics()["notifications_failed_total"] == {"dead": 1}
    states = {e.receiver: e.state for e in m.store.notifications()}
    assert states == {"dead": "failed", "live": "sent"}
    m.close()


def test_email_over_smtp(tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self) -> None:
            self.messages: list[bytes] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.messages.append(envelope.content)
            return "250 OK"

    handler = Handler()
    with socket.socket() as s:  # a free port (aiosmtpd's self-check cannot use port 0)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = Controller(handler, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        rec = {"name": "mail", "kind": "email", "smtp_host": "127.0.0.1", "smtp_port": port, "to": ["ops@x.org"]}
        m = AlertManager(_cfg(rec), store=tmp_path / "a.db", clock=ManualClock(T0))
        m.evaluate(batch({"a": 50.0}, t_us=T0))
        m.close()
    finally:
        ctl.stop()
    assert len(handler.messages) == 1
    text = handler.messages[0].decode()
    assert "Subject: tidegauge [FIRING:1/1] alertname=hot" in text and "a hot" in text


def test_mqtt_publish_to_mosquitto(tmp_path: Path) -> None:
    import paho.mqtt.client as paho

    from tests.connectors.servers import require

    require("mosquitto")
    got: list[dict[str, Any]] = []
    ready = threading.Event()
    arrived = threading.Event()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    sub.on_subscribe = lambda *a: ready.set()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        got.append(json.loads(msg.payload))
        arrived.set()

    sub.on_message = on_message
    topic = f"tidegauge-test/{os.getpid()}/alerts"
    sub.connect("127.0.0.1", 1883)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    try:
        assert ready.wait(5)
        m = AlertManager(_cfg({"name": "mq", "kind": "mqtt", "topic": topic}), store=tmp_path / "a.db",
                         clock=ManualClock(T0))
        m.evaluate(batch({"a": 50.0}, t_us=T0))
        m.close()
        assert arrived.wait(5)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert got[0]["status"] == "firing" and got[0]["alerts"][0]["labels"]["sensor_id"] == "a"


def test_nats_publish_to_the_real_server(tmp_path: Path) -> None:
    import asyncio

    import nats

    from tests.connectors.servers import require, unique

    require("nats")
    subject = unique("tidegauge-test.alerts").replace("_", ".")

    async def main() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            sub = await nc.subscribe(subject)
            await nc.flush()  # the subscription is registered before anything is published
            clock = ManualClock(T0)
            m = AlertManager(_cfg({"name": "bus", "kind": "nats", "url": "nats://127.0.0.1:4222",
                                   "subject": subject}), store=tmp_path / "a.db", clock=clock)
            # the notifier runs its own event loop: deliver from a worker thread, as background delivery does
            await asyncio.to_thread(m.evaluate, batch({"a": 50.0}, t_us=T0))
            clock.advance("1m")
            await asyncio.to_thread(m.evaluate, batch({"a": 20.0}, t_us=clock.now_us()))
            m.close()
            for _ in range(2):
                msg = await sub.next_msg(timeout=5)  # bounds a broken run; not a speed assertion
                got.append(json.loads(msg.data))
        finally:
            await nc.close()
        return got

    got = asyncio.run(main())
    assert [p["status"] for p in got] == ["firing", "resolved"]
    assert got[0]["receiver"] == "bus" and got[0]["alerts"][0]["labels"]["sensor_id"] == "a"
    assert got[1]["alerts"][0]["status"] == "resolved"

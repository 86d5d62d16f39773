"""The upstream end (``POST /api/v1/edge/batches``) in process, and the uplink's choices without a network."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import httpx
import msgspec
import pytest

from tidegauge.dataflow import Flow, Runner
from tidegauge.edge import wire
from tidegauge.edge.outbox import Outbox, StreamPolicy
from tidegauge.edge.receiver import EdgeReceiver, edge_sources
from tidegauge.edge.uplink import Uplink
from tidegauge.server import build_app
from tidegauge.server.config import ServerConfig, TokenConfig, hash_token

TOKEN = "t0ken"


def batch(first: int, last: int, *, node: str = "gw", stream: str = "readings",
          prev: int | None = None) -> tuple[bytes, dict[str, str]]:
    lines = [msgspec.json.encode({"sensor_id": f"s{i}", "timestamp": "2024-01-01T00:00:00Z", "temperature": 1.0,
                                  "edge_node": node, "edge_stream": stream, "edge_seq": i, "edge_replay": False})
             for i in range(first, last + 1)]
    headers = {"Authorization": f"Bearer {TOKEN}", wire.NODE: node, wire.STREAM: stream,
               wire.FIRST: str(first), wire.LAST: str(last), wire.PREV: str(first - 1 if prev is None else prev)}
    return b"\n".join(lines) + b"\n", headers


def make(tmp: Path, db: str = "edge.db") -> tuple[EdgeReceiver, Any]:
    sources = edge_sources(tmp / "intake", ["readings"], durability="os")
    flow = Flow("up")
    for src in sources.values():
        flow.source(src)
        src.build(None)  # as if the flow were reading: the receiver refuses batches nobody reads (503)
    receiver = EdgeReceiver(sources, tmp / db)
    config = ServerConfig(tokens=[TokenConfig(name="a", hash=hash_token(TOKEN), scopes=["ingest", "read"])])
    app = build_app(Runner(flow), config, edge_receiver=receiver)
    return receiver, app


async def post(app: Any, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://up") as c:
        return await c.post(wire.PATH, content=body, headers=headers)


def test_dedupes_replays_and_counts_gaps(tmp_path: Path) -> None:
    receiver, app = make(tmp_path)
    receiver.order_timeout_s = 0.2

    async def go() -> None:
        r = await post(app, *batch(1, 5))
        assert r.status_code == 200 and r.json() == {"acked": 5, "accepted": 5, "duplicates": 0}
        r = await post(app, *batch(1, 5))  # the same batch again (its answer was lost)
        assert r.json() == {"acked": 5, "accepted": 0, "duplicates": 5}
        r = await post(app, *batch(3, 8))  # overlapping
        assert r.json() == {"acked": 8, "accepted": 3, "duplicates": 3}
        r = await post(app, *batch(12, 12, prev=8))  # 9-11 were dropped by the agent's outbox
        assert r.json()["acked"] == 12
        assert receiver.counts["dropped_at_edge"][("gw", "readings")] == 3
        r = await post(app, *batch(20, 21))  # 13-19 never came: refused, the agent sends from 13
        assert r.status_code == 409 and r.json()["acked"] == 12
        # out of order on two connections: the second waits for the first
        second, first_ = await asyncio.gather(post(app, *batch(16, 18)), post(app, *batch(13, 15)))
        assert second.json()["acked"] == 18 and first_.json()["acked"] == 15
        body, headers = batch(19, 20)
        assert (await post(app, body, {**headers, wire.LAST: "15"})).status_code == 400
        assert (await post(app, body, {**headers, "Authorization": "Bearer nope"})).status_code == 401
        assert (await post(app, body, {**headers, wire.STREAM: "nosuch"})).status_code == 404
        assert (await post(app, body, {k: v for k, v in headers.items() if k != wire.FIRST})).status_code == 400
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://up") as c:
            m = (await c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
        assert 'tidegauge_edge_records_total{node="gw",stream="readings"} 15.0' in m
        assert 'tidegauge_edge_duplicates_total{node="gw",stream="readings"} 8.0' in m
    asyncio.run(go())
    log = receiver.sources["readings"].open_log()
    frames, _ = log.read(log.start, 10**6)
    seqs = [msgspec.json.decode(line)["edge_seq"] for _, p in frames for line in p.splitlines()]
    assert seqs == [1, 2, 3, 4, 5, 6, 7, 8, *range(12, 19)], "each record once in the intake log, in order"


def test_what_was_appended_survives_losing_the_ack_table(tmp_path: Path) -> None:
    """A crash between the intake append and the SQLite update: the log itself says what arrived."""
    receiver, app = make(tmp_path)
    asyncio.run(post(app, *batch(1, 4)))
    receiver.close()
    receiver.sources["readings"].open_log().close()
    fresh, app2 = make(tmp_path, db="other.db")  # an empty ack table, the same intake log
    assert fresh.acked[("gw", "readings")] == 4
    r = asyncio.run(post(app2, *batch(1, 6)))
    assert r.json() == {"acked": 6, "accepted": 2, "duplicates": 4}


def make_uplink(tmp: Path, streams: dict[str, StreamPolicy]) -> tuple[Outbox, Uplink]:
    box = Outbox(tmp / "o.db", streams)
    return box, Uplink(box, "http://127.0.0.1:9", node_id="gw", seed=1)


def test_weighted_round_robin_does_not_starve(tmp_path: Path) -> None:
    box, up = make_uplink(tmp_path, {"alerts": StreamPolicy(priority=8), "readings": StreamPolicy(priority=1)})
    for s in ("alerts", "readings"):
        box.append(s, [b'{"a":1}'] * 10)
        box.commit_seq(s, 10)
    picks = [up._next_stream() for _ in range(90)]
    assert picks.count("alerts") == 80 and picks.count("readings") == 10
    assert max(len(run) for run in "".join("a" if p == "alerts" else "r" for p in picks).split("r")) <= 8
    box.ack("alerts", 10)
    assert {up._next_stream() for _ in range(5)} == {"readings"}


def test_replayed_alert_that_resolved_does_not_page(tmp_path: Path) -> None:
    box, up = make_uplink(tmp_path, {"alerts": StreamPolicy()})
    at = up.clock.now_us() - 60_000_000  # written a minute ago: backlog

    def alert(fp: str, state: str) -> bytes:
        return msgspec.json.encode({"fingerprint": fp, "state": state, "at": "2024-01-01T00:00:00Z"})

    box.append("alerts", [alert("a", "pending"), alert("a", "firing"), alert("b", "firing")], at_us=at)
    box.append("alerts", [alert("a", "resolved"), alert("c", "firing")], at_us=at)
    box.commit_seq("alerts", 5)
    first = box.read("alerts", after=0, limit=3)
    assert up._pages("alerts", first, up._replay_cutoff()) == [False, False, True]
    rest = box.read("alerts", after=3, limit=10)
    assert up._pages("alerts", rest, up._replay_cutoff()) == [False, True], "a's resolution is not paged either"
    batch = box.read_batch("alerts", after=0, limit=3)
    assert batch is not None
    body, n_replay = up._body("alerts", batch)
    assert n_replay == 3 and body.count(b'"edge_replay":true') == 3


def test_uplink_backoff_and_breaker(tmp_path: Path) -> None:
    _, up = make_uplink(tmp_path, {"s": StreamPolicy()})
    waits = [up._link_failed("network: ConnectError") for _ in range(4)]
    assert up.link == "degraded" and all(w <= 0.2 * 2 ** i for i, w in enumerate(waits))
    assert up._link_failed("network: ConnectError") == 10.0
    assert (up.link, up.breaker) == ("down", "open")
    up.breaker = "half_open"
    up._link_ok()
    assert (up.link, up.breaker, up.failures) == ("up", "closed", 0)
    with pytest.raises(ValueError):
        Uplink(Outbox(tmp_path / "p.db", {"s": StreamPolicy()}), "http://x", node_id="gw",
               config=msgspec.convert({"breaker_failures": 0}, type=__import__(
                   "tidegauge.edge.uplink", fromlist=["UplinkConfig"]).UplinkConfig))


def test_receiver_for_a_served_flow_maps_streams_by_source_name(tmp_path: Path) -> None:
    from tidegauge.connectors.http import HttpIngestSource
    from tidegauge.edge.receiver import receiver_for_flow

    flow = Flow("up")
    plain = HttpIngestSource(tmp_path / "a", name="http")
    alerts = edge_sources(tmp_path / "b", ["alerts"])["alerts"]
    flow.source(plain)
    flow.source(alerts, key=alerts.key, time=alerts.time)
    r = receiver_for_flow(flow, tmp_path / "e.db")
    assert r.sources == {"alerts": alerts, "readings": plain}, "the plain source takes raw readings only"
    with pytest.raises(Exception, match="http source"):
        receiver_for_flow(Flow("none"), tmp_path / "f.db")


def test_heartbeats_carry_real_figures_and_take_the_assignment(tmp_path: Path, caplog: Any) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from tidegauge.edge.agent import AgentConfig, EdgeAgent
    from tidegauge.edge.heartbeat import Assignment, Heartbeat

    seen: list[Heartbeat] = []

    async def beat(request: Request) -> Response:
        hb = Heartbeat.decode(await request.body())
        seen.append(hb)
        return Response(msgspec.json.encode(Assignment(node_id=hb.node_id, generation=3, sensors=["s1"])))

    box, up = make_uplink(tmp_path, {"readings": StreamPolicy()})
    box.append("readings", [b'{"a":1}'] * 7, at_us=up.clock.now_us() - 2_000_000)

    class _Metrics:
        records_in: ClassVar[dict[str, int]] = {"src": 100}

    class _Runner:
        metrics = _Metrics()

    config = AgentConfig(node_id="gw", upstream="http://up", data_dir=str(tmp_path), heartbeat_interval="50ms",
                         follow_assignment=True)
    from tidegauge.edge.agent import AssignmentView

    agent = EdgeAgent(config, box, up, _Runner(), AssignmentView(follow=True))

    async def go(app: Starlette) -> None:
        up.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://up")
        stop = asyncio.Event()
        task = asyncio.create_task(agent.heartbeats(stop))
        await asyncio.sleep(0.4)
        stop.set()
        await task
        await up.client.aclose()

    asyncio.run(go(Starlette(routes=[Route("/api/v1/edge/heartbeat", beat, methods=["POST"])])))
    assert len(seen) >= 2
    hb = seen[-1]
    assert hb.node_id == "gw" and hb.version
    assert hb.resources.memory_rss_bytes > 10 * 2**20 and 0 < hb.resources.disk_pct <= 100
    assert 0 < hb.resources.memory_pct <= 100
    assert (hb.outbox_depth, hb.outbox_bytes) == (7, 49) and hb.outbox_age_s >= 2
    assert agent.assignment is not None and agent.assignment.generation == 3
    assert hb.generation == 0 and hb.sensors == [], "received, not yet applied by the flow: not acknowledged"
    import polars as pl

    kept = agent.view.keep_assigned(pl.DataFrame({"sensor_id": ["s1", "s2"], "timestamp": [1, 2]}))
    assert kept["sensor_id"].to_list() == ["s1"]
    hb = agent.heartbeat()
    assert hb.generation == 3 and hb.sensors == ["s1"], "the agent reports the assignment its flow acts on"
    # an upstream without a coordinator: 404, logged once, the agent goes on
    caplog.set_level("INFO", logger="tidegauge.edge.agent")
    agent.assignment = None
    asyncio.run(go(Starlette(routes=[])))
    assert sum("no coordinator" in r.getMessage() for r in caplog.records) == 1


def test_a_new_outbox_incarnation_is_new_data_not_a_replay(tmp_path: Path) -> None:
    """An agent whose data directory was lost starts again at sequence 1: the upstream takes those records."""
    receiver, app = make(tmp_path)

    def as_of(incarnation: str, first: int, last: int) -> tuple[bytes, dict[str, str]]:
        body, headers = batch(first, last)
        return body.replace(b'"edge_node"', b'"edge_incarnation":"%s","edge_node"' % incarnation.encode()), {
            **headers, wire.INCARNATION: incarnation}

    async def go() -> None:
        assert (await post(app, *as_of("aaaa", 1, 5))).json() == {"acked": 5, "accepted": 5, "duplicates": 0}
        # the same agent id, a new outbox: 1-3 are new records
        assert (await post(app, *as_of("bbbb", 1, 3))).json() == {"acked": 3, "accepted": 3, "duplicates": 0}
        # the old incarnation's resend is still recognised as one
        assert (await post(app, *as_of("aaaa", 4, 5))).json() == {"acked": 5, "accepted": 0, "duplicates": 2}
        # an agent without the header (an older agent) keeps its own numbering
        assert (await post(app, *batch(1, 2))).json()["accepted"] == 2
        bad = await post(app, *as_of("x" * 65, 1, 1))
        assert bad.status_code == 400 and wire.INCARNATION in bad.json()["error"]
    asyncio.run(go())
    assert receiver.sequences == {("gw", "aaaa", "readings"): 5, ("gw", "bbbb", "readings"): 3,
                                  ("gw", "", "readings"): 2}
    receiver.close()
    receiver.sources["readings"].open_log().close()
    # what the intake log holds is per incarnation too (a crash before the SQLite update loses nothing)
    fresh, app2 = make(tmp_path, db="other.db")
    assert fresh.sequences == {("gw", "aaaa", "readings"): 5, ("gw", "bbbb", "readings"): 3,
                               ("gw", "", "readings"): 2}
    assert asyncio.run(post(app2, *as_of("bbbb", 1, 4))).json() == {"acked": 4, "accepted": 1, "duplicates": 3}


def test_the_receiver_takes_over_its_pre_incarnation_table_and_forgets_old_incarnations(tmp_path: Path) -> None:
    import sqlite3
    import time

    db = sqlite3.connect(tmp_path / "edge.db")
    db.execute("CREATE TABLE edge_acks (node TEXT NOT NULL, stream TEXT NOT NULL, acked INTEGER NOT NULL, "
               "PRIMARY KEY (node, stream))")
    db.execute("INSERT INTO edge_acks VALUES ('gw', 'readings', 7)")
    db.commit()
    db.close()
    receiver, app = make(tmp_path)
    assert receiver.sequences == {("gw", "", "readings"): 7} and receiver.acked == {("gw", "readings"): 7}
    assert asyncio.run(post(app, *batch(1, 8))).json() == {"acked": 8, "accepted": 1, "duplicates": 7}
    receiver._store("gw", "new", "readings", 3)
    receiver._db.execute("UPDATE edge_sequences SET seen = ? WHERE incarnation = ''", (time.time() - 8 * 86400,))
    receiver.close()
    receiver.sources["readings"].open_log().close()
    (tmp_path / "intake" / "readings").rename(tmp_path / "old-intake")  # only the table speaks now
    again, _ = make(tmp_path)
    assert again.sequences == {("gw", "new", "readings"): 3}, "a week-old incarnation is forgotten"
    assert again.acked == {("gw", "readings"): 3}


def test_the_uplink_names_its_outbox_incarnation(tmp_path: Path) -> None:
    box, up = make_uplink(tmp_path, {"readings": StreamPolicy()})
    assert len(box.incarnation) == 16 and Outbox(tmp_path / "o.db", {"readings": StreamPolicy()}).incarnation == \
        box.incarnation, "the identity is stored with the outbox"
    assert Outbox(tmp_path / "other.db", {"readings": StreamPolicy()}).incarnation != box.incarnation
    box.append("readings", [b'{"a":1}'])
    box.commit_seq("readings", 1)
    b = asyncio.run(up._prepare())
    assert b is not None
    assert b.headers[wire.INCARNATION] == box.incarnation
    assert b.headers["Idempotency-Key"] == f"gw:readings:1-1@{box.incarnation}"
    assert msgspec.json.decode(b.body)["edge_incarnation"] == box.incarnation


def test_an_outbox_made_before_incarnations_keeps_the_legacy_identity(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", {"readings": StreamPolicy()})
    box.append("readings", [b'{"a":1}'])
    box._db.execute("DROP TABLE meta")  # as an older version left it: numbered records, no identity
    box.close()
    old = Outbox(tmp_path / "o.db", {"readings": StreamPolicy()})
    assert old.incarnation == "", "its records were numbered under the legacy identity upstream"
    up = Uplink(old, "http://127.0.0.1:9", node_id="gw")
    old.commit_seq("readings", 1)
    b = asyncio.run(up._prepare())
    assert b is not None and wire.INCARNATION not in b.headers and b.headers["Idempotency-Key"] == "gw:readings:1-1"


def test_a_stream_the_upstream_does_not_take_waits_while_the_others_go_on(tmp_path: Path) -> None:
    """``serve --edge-db`` with one plain http source takes raw readings only: the agent's windows get 404,
    stay in its outbox, and do not stall the readings (nor trip the breaker)."""
    from tidegauge.connectors.http import HttpIngestSource
    from tidegauge.edge.receiver import receiver_for_flow

    flow = Flow("up")
    plain = HttpIngestSource(tmp_path / "intake", durability="os", schema={
        "sensor_id": "str", "timestamp": "timestamp", "v": "int", "edge_node": "str", "edge_seq": "int"})
    flow.source(plain)
    plain.build(None)
    receiver = receiver_for_flow(flow, tmp_path / "edge.db")
    config = ServerConfig(tokens=[TokenConfig(name="a", hash=hash_token(TOKEN), scopes=["ingest"])])
    app = build_app(Runner(flow), config, edge_receiver=receiver)
    box = Outbox(tmp_path / "o.db", {"windows": StreamPolicy(priority=2), "readings": StreamPolicy()})
    for s, n in (("windows", 3), ("readings", 5)):
        box.append(s, [msgspec.json.encode({"sensor_id": "s", "timestamp": "2024-01-01T00:00:00Z", "v": i})
                       for i in range(n)])
        box.commit_seq(s, n)
    up = Uplink(box, "http://up", node_id="gw", token=TOKEN, config=msgspec.convert(
        {"backoff_initial": "10ms", "breaker_failures": 2}, type=__import__(
            "tidegauge.edge.uplink", fromlist=["UplinkConfig"]).UplinkConfig))
    up.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://up",
                                  headers={"Authorization": f"Bearer {TOKEN}"})

    async def go() -> None:
        task = asyncio.create_task(up.run())
        for _ in range(500):
            if box.stats("readings").acked_seq == 5:
                break
            await asyncio.sleep(0.01)
        up.stop()
        await task
    asyncio.run(go())
    assert box.stats("readings").acked_seq == 5, "the readings went through"
    assert box.stats("windows").depth == 3 and box.stats("windows").acked_seq == 0, "the windows wait"
    assert up.parked.keys() == {"windows"} and up.errors.get("not_taken", 0) >= 1
    assert up.breaker == "closed" and up.link == "up", "a stream nobody takes is not a link failure"


def test_a_stream_no_flow_reads_is_refused_as_such(tmp_path: Path) -> None:
    receiver, app = make(tmp_path)
    source = receiver.sources["readings"]

    async def go() -> httpx.Response:
        assert source.logic is not None
        await source.logic.close()  # the flow stopped reading (a shutdown): batches wait, told why
        return await post(app, *batch(1, 2))

    r = asyncio.run(go())
    assert r.status_code == 503 and "not reading its input" in r.json()["error"], r.text

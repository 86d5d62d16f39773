"""The JetStream uplink against real NATS servers: every record once, in order per stream, through outages.

- NATS unreachable, then back (a private ``nats-server`` the test stops and starts again, its JetStream
  store kept), and stopped again in the middle of the backlog;
- the upstream consumer stopped while the agent publishes, then started again (another process would
  find the same: its durable consumer is re-created at the oldest unapplied batch), with batches published
  twice and overlapping ones among them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.connectors.servers import require, unique
from tests.edge.procs import running
from tests.net import free_port, wait_port
from tidegauge.connectors.http import ACCEPTED
from tidegauge.edge.jetstream import JetStreamConfig, JetStreamIntake, JetStreamUplink
from tidegauge.edge.outbox import Outbox, StreamPolicy
from tidegauge.edge.receiver import EdgeReceiver, edge_sources
from tidegauge.edge.uplink import UplinkConfig, _Refused

STREAMS = ("readings", "windows")
FAST = UplinkConfig(batch_records=300, backoff_initial="50ms", backoff_max="300ms", breaker_failures=2,
                    breaker_open="300ms", timeout="2s")


class NatsServer:
    """A private ``nats-server`` with JetStream on a free port; ``stop()``/``start()`` keep its store."""

    def __init__(self, store: Path) -> None:
        exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.port = free_port()
        self.args = [exe, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store)]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=20, proc=self.proc, what="nats-server")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[NatsServer]:
    require("nats")  # the same package provides nats-server
    server = NatsServer(tmp_path / "nats-store")
    try:
        yield server
    finally:
        server.stop()


def fill(box: Outbox, stream: str, n: int, start: int = 0) -> None:
    """``n`` records ``v = start..`` numbered like the agent's sink does (``edge_seq``)."""
    first = box.next_seq(stream)
    payloads = [b'{"sensor_id":"s%d","v":%d,"edge_seq":%d}' % (i % 7, i, first + i - start)
                for i in range(start, start + n)]
    box.append(stream, payloads)
    box.commit_seq(stream, first + n - 1)


def received(receiver: EdgeReceiver) -> dict[str, list[tuple[str, int, int]]]:
    """Per stream, ``(edge_node, edge_seq, v)`` of every record in its intake log, in log order."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    for stream, src in receiver.sources.items():
        log, offset, rows = src.open_log(), src.open_log().start, []
        while offset < log.durable:
            frames, offset = log.read(offset, 100_000)
            for kind, payload in frames:
                if kind == ACCEPTED:
                    for line in bytes(payload).splitlines():
                        r = msgspec.json.decode(line)
                        rows.append((r["edge_node"], r["edge_seq"], r["v"]))
        out[stream] = rows
    return out


def receiver_at(tmp: Path) -> EdgeReceiver:
    sources = edge_sources(tmp / "intake", STREAMS, durability="os")
    for src in sources.values():
        src.build(None)  # a running flow's source: without one the receiver answers 503 (pipeline not running)
    return EdgeReceiver(sources, tmp / "edge.db")


async def until(cond: object, timeout: float, what: object) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.02)


def exactly_once(got: dict[str, list[tuple[str, int, int]]], counts: dict[str, int], node: str = "gw-1") -> None:
    for stream, n in counts.items():
        assert [seq for _, seq, _ in got[stream]] == list(range(1, n + 1)), f"{stream}: each record once, in order"
        assert [v for _, _, v in got[stream]] == list(range(n))
        assert {who for who, _, _ in got[stream]} == {node}


@pytest.mark.server
def test_nats_unreachable_then_back_every_record_once_in_order(tmp_path: Path, private_nats: NatsServer) -> None:
    js = JetStreamConfig(stream=unique("TG_EDGE"), subject=unique("tg.edge"))

    async def main() -> None:
        box = Outbox(tmp_path / "agent" / "outbox.db", {s: StreamPolicy() for s in STREAMS})
        up = JetStreamUplink(box, private_nats.url, node_id="gw-1", config=FAST, jetstream=js)
        receiver = receiver_at(tmp_path / "up")
        intake = JetStreamIntake(receiver, private_nats.url, config=js)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(up.run()), asyncio.create_task(intake.run(stop))]
        # offline: NATS is not running; the agent keeps writing
        for i in range(6):
            fill(box, "readings", 500, 500 * i)
            fill(box, "windows", 40, 40 * i)
            await asyncio.sleep(0.1)
        await until(lambda: up.link == "down", 20, "the breaker to open")
        assert box.stats("readings").acked_seq == 0 and up.errors
        # back: the backlog drains into JetStream and through the consumer
        private_nats.start()
        await until(lambda: box.stats("readings").acked_seq >= 1200, 60, "part of the backlog stored")
        # down again in the middle of the backlog, with more records written meanwhile
        private_nats.stop()
        fill(box, "readings", 1000, 3000)
        await asyncio.sleep(1.0)
        private_nats.start()
        await until(lambda: all(box.stats(s).depth == 0 for s in STREAMS), 90, "the outbox to drain")
        await until(lambda: receiver.acked.get(("gw-1", "readings"), 0) == 4000
                    and receiver.acked.get(("gw-1", "windows"), 0) == 240, 60,
                    lambda: f"the upstream to apply it all: {receiver.acked} {intake.counts} {up.figures()}")
        assert up.link == "up" and up.sent["readings"] + up.duplicates["readings"] >= 4000
        stop.set()
        up.stop()
        await asyncio.gather(*tasks)
        await up.close()
        exactly_once(received(receiver), {"readings": 4000, "windows": 240})
        receiver.close()
        box.close()

    asyncio.run(main())


@pytest.mark.server
def test_upstream_consumer_stopped_then_back_exactly_once(tmp_path: Path) -> None:
    require("nats")
    url = "nats://127.0.0.1:4222"
    js = JetStreamConfig(stream=unique("TG_EDGE"), subject=unique("tg.edge"), durable=unique("up"))

    async def main() -> None:
        import nats

        box = Outbox(tmp_path / "agent" / "outbox.db", {s: StreamPolicy() for s in STREAMS})
        up = JetStreamUplink(box, url, node_id="gw-1", config=FAST, jetstream=js)
        run = asyncio.create_task(up.run())
        for i in range(10):
            fill(box, "readings", 250, 250 * i)
        fill(box, "windows", 100)
        # no consumer yet: the agent's outbox still empties, JetStream holds the batches
        await until(lambda: all(box.stats(s).depth == 0 for s in STREAMS), 60, "JetStream to store the batches")
        # a batch published twice (its acknowledgement lost), and one overlapping two batches
        nc = await nats.connect(url)
        ctx = nc.jetstream()
        body = b"".join(b'{"edge_node":"gw-1","edge_stream":"readings","edge_replay":false,"edge_seq":%d,'
                        b'"v":%d}\n' % (s, s - 1) for s in range(201, 401))
        headers = {"x-edge-node": "gw-1", "x-edge-stream": "readings", "x-edge-first-seq": "201",
                   "x-edge-last-seq": "400", "x-edge-prev-seq": "200", "x-edge-replay": "0",
                   "Nats-Msg-Id": "gw-1:readings:201-400"}
        subject = f"{js.subject}.gw-1.readings"
        await ctx.publish(subject, body, headers=headers)
        ack = await ctx.publish(subject, body, headers=headers)
        assert ack.duplicate, "JetStream drops the second copy by its message id"
        await nc.close()

        # the upstream starts, applies part, stops (a restart), and a new one finishes
        receiver = receiver_at(tmp_path / "up")
        intake = JetStreamIntake(receiver, url, config=js, fetch=2)
        async with running(intake, connected=False):
            await until(lambda: receiver.acked.get(("gw-1", "readings"), 0) >= 500, 60, "part applied")
        receiver.close()
        receiver = receiver_at(tmp_path / "up")
        intake = JetStreamIntake(receiver, url, config=js)
        async with running(intake, connected=False):
            await until(lambda: receiver.acked.get(("gw-1", "readings"), 0) == 2500
                        and receiver.acked.get(("gw-1", "windows"), 0) == 100, 60, "everything applied")
            await asyncio.sleep(0.5)  # nothing more comes
        up.stop()
        await run
        await up.close()
        exactly_once(received(receiver), {"readings": 2500, "windows": 100})
        assert intake.counts["rejected"] == 0
        nc = await nats.connect(url)
        info = await nc.jetstream().stream_info(js.stream)
        assert info.state.messages == 0, "every batch applied was acknowledged (the work queue is empty)"
        await nc.jetstream().delete_stream(js.stream)
        await nc.close()
        receiver.close()
        box.close()

    asyncio.run(main())


@pytest.mark.server
def test_a_batch_naming_another_node_than_its_subject_is_refused(tmp_path: Path) -> None:
    """NATS permissions bind an agent to its subjects (``<prefix>.<id>.>``): a batch whose headers name
    another node than its subject does is dropped, not applied as that node's records."""
    require("nats")
    url = "nats://127.0.0.1:4222"
    js = JetStreamConfig(stream=unique("TG_EDGE"), subject=unique("tg.edge"), durable=unique("up"))

    async def main() -> None:
        import nats

        receiver = receiver_at(tmp_path / "up")
        intake = JetStreamIntake(receiver, url, config=js)
        async with running(intake, connected=False):
            nc = await nats.connect(url)
            ctx = nc.jetstream()
            await until(lambda: intake.counts is not None, 5, "intake started")

            def batch(node: str, subject_node: str) -> tuple[str, bytes, dict[str, str]]:
                body = b'{"edge_node":"%s","edge_stream":"readings","edge_replay":false,"edge_seq":1,"v":0}\n' % (
                    node.encode())
                headers = {"x-edge-node": node, "x-edge-stream": "readings", "x-edge-first-seq": "1",
                           "x-edge-last-seq": "1", "x-edge-prev-seq": "0", "x-edge-replay": "0",
                           "Nats-Msg-Id": f"{node}:readings:1-1:{subject_node}"}
                return f"{js.subject}.{subject_node}.readings", body, headers

            for _ in range(50):  # the stream is created by the intake: publish once it exists
                try:
                    await ctx.stream_info(js.stream)
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            subject, body, headers = batch("gw-victim", "gw-attacker")
            await ctx.publish(subject, body, headers=headers)
            subject, body, headers = batch("gw-attacker", "gw-attacker")
            await ctx.publish(subject, body, headers=headers)
            await until(lambda: receiver.acked.get(("gw-attacker", "readings"), 0) == 1, 30, "the honest batch")
            await until(lambda: intake.counts["rejected"] == 1, 30, "the forged batch refused")
        assert ("gw-victim", "readings") not in receiver.acked
        assert [who for who, _, _ in received(receiver)["readings"]] == ["gw-attacker"]
        await ctx.delete_stream(js.stream)
        await nc.close()
        receiver.close()

    asyncio.run(main())


def test_heartbeats_over_nats_get_the_coordinators_assignment(tmp_path: Path) -> None:
    """An agent with a ``nats://`` upstream registers with the coordinator and gets its sensors; a heartbeat
    naming another agent than its subject is refused; an upstream without a coordinator answers 404, and no
    upstream at all is a failed heartbeat (the agent's lease then runs out), not "no coordinator"."""
    require("nats")
    from tidegauge.edge.coordinator import Coordinator
    from tidegauge.edge.heartbeat import Assignment, Heartbeat
    from tidegauge.edge.strategies import SensorInfo

    url = "nats://127.0.0.1:4222"
    js = JetStreamConfig(stream=unique("TG_EDGE"), subject=unique("tg.edge"), durable=unique("up"))
    other = JetStreamConfig(stream=unique("TG_EDGE"), subject=unique("tg.edge"), durable=unique("up"))
    coordinator = Coordinator("round_robin", settle="0s", sensors=[SensorInfo(f"s{i}") for i in range(4)])

    async def main() -> None:
        import nats
        import nats.errors

        receiver = receiver_at(tmp_path / "up")
        intake = JetStreamIntake(receiver, url, config=js, coordinator=coordinator)
        async with running(intake):
            box = Outbox(tmp_path / "o.db", {"readings": StreamPolicy()})
            # a patient timeout: the first answer may wait for the upstream's first imports on a loaded machine
            up = JetStreamUplink(box, url, node_id="gw-1", jetstream=js, config=UplinkConfig(timeout="20s"))
            status, answer = await up.heartbeat(Heartbeat(node_id="gw-1", sent_at_us=0, version="t").encode())
            assert status == 200, answer
            assignment = msgspec.json.decode(answer, type=Assignment)
            assert assignment.node_id == "gw-1" and sorted(assignment.sensors) == ["s0", "s1", "s2", "s3"]
            assert [a["node_id"] for a in coordinator.agents()] == ["gw-1"]
            # gw-1's NATS user may publish on its own heartbeat subject only; the body may not name another agent
            status, answer = await up.heartbeat(Heartbeat(node_id="gw-2", sent_at_us=0, version="t").encode())
            assert status == 403 and b"an agent sends only its own" in answer
            status, answer = await up.heartbeat(b"{not json")
            assert status == 400 and b"not a valid heartbeat" in answer
            assert [a["node_id"] for a in coordinator.agents()] == ["gw-1"]
            assert intake.counts["heartbeats"] == 1 and intake.counts["heartbeats_refused"] == 2
            # another upstream on the same broker, with its own subject prefix, neither answers nor registers it
            bystander = Coordinator("round_robin", settle="0s")
            stop2 = asyncio.Event()
            intake2 = JetStreamIntake(receiver_at(tmp_path / "up2"), url, config=other, coordinator=bystander)
            task2 = asyncio.create_task(intake2.run(stop2))
            await asyncio.wait_for(intake2.connected.wait(), 10)
            assert (await up.heartbeat(Heartbeat(node_id="gw-1", sent_at_us=0, version="t").encode()))[0] == 200
            assert bystander.agents() == [] and intake2.counts["heartbeats"] == 0
        # the upstream is gone: no answer is a failure (the lease decides), not "there is no coordinator"
        with pytest.raises(_Refused, match="no upstream answers"):
            await up.heartbeat(Heartbeat(node_id="gw-1", sent_at_us=0, version="t").encode())
        # an upstream whose pipeline has no coordinator says so
        stop3 = asyncio.Event()
        intake3 = JetStreamIntake(receiver_at(tmp_path / "up3"), url, config=js)
        task3 = asyncio.create_task(intake3.run(stop3))
        try:
            await asyncio.wait_for(intake3.connected.wait(), 10)
            # asked until it answers (one CI run timed a first request out at 20 s right after the new
            # intake connected: its heartbeat subscription may reach the server after the request)
            up3 = JetStreamUplink(box, url, node_id="gw-1", jetstream=js, config=UplinkConfig(timeout="2s"))
            deadline, got = time.monotonic() + 30, None
            while got is None and time.monotonic() < deadline:
                try:
                    got = await up3.heartbeat(Heartbeat(node_id="gw-1", sent_at_us=0, version="t").encode())
                except (_Refused, TimeoutError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.2)
            assert got is not None, "the upstream without a coordinator never answered a heartbeat"
            status, answer = got
            assert status == 404 and b"no coordinator" in answer
            await up3.close()
        finally:
            stop2.set()
            stop3.set()
            await asyncio.gather(task2, task3)
            await up.close()
        nc = await nats.connect(url)
        for name in (js.stream, other.stream):
            await nc.jetstream().delete_stream(name)
        await nc.close()
        receiver.close()

    asyncio.run(main())


def test_the_heartbeat_subject_lies_outside_the_stream_and_follows_the_prefix() -> None:
    assert JetStreamConfig().heartbeat_subject == "tidegauge.edge-heartbeat"
    assert JetStreamConfig(subject="site-a.edge").heartbeat_subject == "site-a.edge-heartbeat"


@pytest.mark.parametrize("field", ["duplicate_window", "ack_wait"])
def test_durations_are_checked_when_the_config_is_made(field: str) -> None:
    with pytest.raises(ValueError, match=f"jetstream {field}: 'soon' is not a duration"):
        JetStreamConfig(**{field: "soon"})

"""The edge agent: a local pipeline, its durable outbox, the uplink, heartbeats and a small /metrics server.

:func:`run_agent` runs until stopped. The default pipeline (:func:`default_flow`): the simulated fleet (or
a pipeline file's flow), the default anomaly detector, 1-minute windows and the default alert rules, each
forwarded stream ending in an :class:`~tidegauge.edge.sink.OutboxSink`. The uplink is HTTP for an
``http(s)://`` upstream, NATS JetStream for ``nats://`` (:mod:`tidegauge.edge.jetstream`), MQTT v5 for
``mqtt(s)://`` (:mod:`tidegauge.edge.mqtt`). Checkpoints (every
``checkpoint_interval``) make outbox records visible to the uplink; everything lives under ``data_dir``::

    data_dir/outbox.db       the outbox (SQLite, WAL)
    data_dir/checkpoints/    the flow's checkpoints
    data_dir/alerts.db       local alert state
    data_dir/agent.json      the simulator's start time (so a restart continues the same stream)
    data_dir/assignments.jsonl  with --follow-assignment: when the agent processed which sensors
                             (:mod:`tidegauge.edge.follow`)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from tidegauge._time import Clock, SystemClock, parse_duration
from tidegauge.edge.follow import AssignmentView
from tidegauge.edge.heartbeat import Assignment, Heartbeat, probe_resources
from tidegauge.edge.jetstream import JetStreamConfig, JetStreamUplink, is_nats_url
from tidegauge.edge.mqtt import MqttEdgeConfig, is_mqtt_url, parse_mqtt_url
from tidegauge.edge.outbox import FsyncPolicy, Outbox, StreamPolicy
from tidegauge.edge.sink import OutboxSink
from tidegauge.edge.uplink import Uplink, UplinkConfig

__all__ = ["DEFAULT_STREAMS", "AgentConfig", "AssignmentView", "EdgeAgent", "default_flow", "run_agent"]

logger = logging.getLogger(__name__)

FIELDS = ("temperature", "vibration", "power_consumption")
DEFAULT_STREAMS: dict[str, StreamPolicy] = {
    # alerts are few and matter most; raw readings are the bulk and may lose their oldest when full
    "alerts": StreamPolicy(priority=8, overflow="reject_new", max_bytes=64 * 1024 * 1024),
    "anomalies": StreamPolicy(priority=4),
    "windows": StreamPolicy(priority=2),
    "readings": StreamPolicy(priority=1),
}


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What ``tidegauge agent`` runs.

    ``streams`` are the forwarded streams and their outbox policies (names from :data:`DEFAULT_STREAMS`
    for the default pipeline). ``sensors``/``rate``/``seed``/``limit`` shape the simulated fleet of the
    default pipeline. ``listen`` is ``host:port`` of the agent's /metrics and /healthz (``None``: off).
    ``cacert`` is the PEM file of the CA that signed an ``https://`` upstream's certificate (a private CA;
    default: the system's CAs), for batches and heartbeats alike.
    """

    node_id: str
    upstream: str
    data_dir: str
    token: str | None = None
    cacert: str | None = None
    streams: dict[str, StreamPolicy] = msgspec.field(default_factory=lambda: dict(DEFAULT_STREAMS))
    fsync: FsyncPolicy = "checkpoint"
    uplink: UplinkConfig = UplinkConfig()
    jetstream: JetStreamConfig = JetStreamConfig()
    """stream and subject when ``upstream`` is a NATS URL (:mod:`tidegauge.edge.jetstream`)"""
    mqtt: MqttEdgeConfig = MqttEdgeConfig()
    """topic prefix and CA file when ``upstream`` is an MQTT URL (:mod:`tidegauge.edge.mqtt`)"""
    checkpoint_interval: str = "1s"
    heartbeat_interval: str = "5s"
    sensors: int = 200
    rate: float = 2000.0
    seed: int = 42
    limit: int | None = None
    detect: bool = True
    listen: str | None = None
    location: tuple[float, float] | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    capacity: int = 1000
    follow_assignment: bool = False

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("node_id is empty: give the agent an id (--id)")
        if not self.upstream.startswith(("http://", "https://")) and not is_nats_url(self.upstream) \
                and not is_mqtt_url(self.upstream):
            raise ValueError(f"upstream={self.upstream!r}: use an http:// or https:// URL (a tidegauge server), "
                             "nats:// / tls:// (NATS JetStream) or mqtt:// / mqtts:// (an MQTT v5 broker)")
        if is_mqtt_url(self.upstream):
            parse_mqtt_url(self.upstream)
        for name in ("checkpoint_interval", "heartbeat_interval"):
            parse_duration(getattr(self, name), name=name)
        if self.cacert is not None and not self.upstream.startswith("https://"):
            raise ValueError(f"cacert is for an https:// upstream, not {self.upstream!r}: drop it, or use the "
                             "upstream's https:// URL")


def _fleet_start(data_dir: Path) -> datetime:
    """The simulator's start, fixed at the first run (a restart must continue the same readings)."""
    path = data_dir / "agent.json"
    if path.exists():
        return datetime.fromisoformat(msgspec.json.decode(path.read_bytes())["fleet_start"])
    start = datetime.now(UTC)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode({"fleet_start": start.isoformat()}))
    tmp.replace(path)
    return start


def default_flow(config: AgentConfig, outbox: Outbox, *, clock: Clock | None = None,
                 view: AssignmentView | None = None) -> Any:
    """Simulator -> detector -> 1-minute windows and alert rules; each forwarded stream into ``outbox``.

    With a ``view`` that follows the coordinator, only the assigned sensors are processed.
    """
    from tidegauge.connectors.simulator import SimulatorSource
    from tidegauge.dataflow import Flow, WatermarkConfig
    from tidegauge.simulate import FleetConfig
    from tidegauge.windows import Tumbling

    data_dir = Path(config.data_dir)
    fleet = FleetConfig(sensors=config.sensors, rate=config.rate, seed=config.seed, start=_fleet_start(data_dir))
    flow = Flow(f"agent-{config.node_id}", watermark=WatermarkConfig.of(max_delay="2s", idle_timeout="5s"))
    readings = flow.source(SimulatorSource(fleet, paced=True, limit=config.limit, clock=clock))
    if view is not None and view.follow:
        readings = readings.map_batches(view.keep_assigned, name="assigned")
    forward = config.streams
    if "readings" in forward:
        readings.sink(OutboxSink(outbox, "readings"), name="out_readings")
    scored = readings
    aggs: dict[str, Any] = {f: ["count", "mean", "min", "max"] for f in FIELDS}
    if config.detect:
        from tidegauge.detectors import default_detector
        from tidegauge.detectors.step import DetectStep

        # no warm-up: an idle gateway agent does not hold numba until data comes (its idle memory goal)
        scored = readings.detect(DetectStep(default_detector(fields=FIELDS), warm_up=False), name="detect")
        aggs["score"] = ["max"]
        if "anomalies" in forward:
            anomalies = scored.filter("is_anomaly", name="anomalous")
            if view is not None and view.follow:
                anomalies = anomalies.map_batches(view.keep_edge_detection, name="edge_detection")
            anomalies.sink(OutboxSink(outbox, "anomalies"), name="out_anomalies")
    if "windows" in forward:
        scored.window(Tumbling("1m"), aggs, name="window_1m").sink(OutboxSink(outbox, "windows"),
                                                                  name="out_windows")
    if "alerts" in forward:
        from tidegauge.alerting import AlertStep, LogNotifier, default_config

        # local alerts: kept in the local store and forwarded; the upstream decides who is paged
        step = AlertStep(default_config(), store=data_dir / "alerts.db", notifiers={"log": LogNotifier()})
        scored.then(step, name="alert_rules").sink(OutboxSink(outbox, "alerts"), name="out_alerts")
    return flow


_READY_WAIT_S = 60.0
"""Longest the first heartbeat waits for the flow's first batch (far above a cold start on a small gateway)."""


@dataclass
class EdgeAgent:
    """A running agent's parts (built by :func:`run_agent`; exposed for tests and the metrics server)."""

    config: AgentConfig
    outbox: Outbox
    uplink: Uplink
    runner: Any
    view: AssignmentView = field(default_factory=AssignmentView)
    heartbeats_sent: int = 0
    heartbeat_failures: int = 0
    started: float = field(default_factory=time.time)
    _last_in: int = 0
    _last_t: float = field(default_factory=time.monotonic)

    @property
    def assignment(self) -> Assignment | None:
        return self.view.assignment

    @assignment.setter
    def assignment(self, value: Assignment | None) -> None:
        self.view.assignment = value

    def heartbeat(self) -> Heartbeat:
        from tidegauge import __version__

        depth = size = 0
        oldest: int | None = None
        for st in self.outbox.all_stats():
            depth += st.depth
            size += st.bytes
            if st.oldest_at_us is not None:
                oldest = st.oldest_at_us if oldest is None else min(oldest, st.oldest_at_us)
        now_us = self.uplink.clock.now_us()
        # a following agent's load is what it keeps, not every reading its source sees
        n = self.view.processed if self.view.follow else sum(self.runner.metrics.records_in.values())
        t = time.monotonic()
        load = (n - self._last_in) / max(t - self._last_t, 1e-6)
        self._last_in, self._last_t = n, t
        # only an agent that follows its assignment acknowledges it (the coordinator hands sensors over on
        # it), and only what its flow applies
        view = self.view
        return Heartbeat(node_id=self.config.node_id, sent_at_us=now_us, version=__version__,
                         location=self.config.location, capacity=self.config.capacity,
                         labels=dict(self.config.labels), resources=probe_resources(self.config.data_dir),
                         load=load, outbox_depth=depth, outbox_bytes=size,
                         outbox_age_s=0.0 if oldest is None else max(0.0, (now_us - oldest) / 1e6),
                         link=self.uplink.link, sensors=view.applied_sensors,
                         generation=view.applied_generation if view.follow else 0)

    async def heartbeats(self, stop: asyncio.Event) -> None:
        """Send a heartbeat every interval (over the uplink's transport); an upstream without a coordinator
        (404) is logged once."""
        interval = parse_duration(self.config.heartbeat_interval) / 1e6
        told_404 = False
        told_refused = ""
        # Register once the flow has taken its first batch: building it (numba kernels, first imports) can
        # hold the event loop for seconds, and an agent that goes silent right after registering would be
        # declared offline and have its sensors moved about. Bounded, so a stuck flow still shows up.
        deadline = time.monotonic() + _READY_WAIT_S
        while getattr(self.runner.metrics, "batches", 1) == 0 and time.monotonic() < deadline \
                and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.05)
        while not stop.is_set():
            try:
                hb = await asyncio.to_thread(self.heartbeat)
                sent = self.view.clock()  # the lease counts from sending a heartbeat that got an answer
                status, content = await self.uplink.heartbeat(hb.encode())
                if status == 200:
                    self.view.received(msgspec.json.decode(content, type=Assignment), sent_at=sent)
                    self.heartbeats_sent += 1
                elif status == 404:
                    self.view.no_coordinator = True
                    if not told_404:
                        logger.info("upstream %s has no coordinator (404 on heartbeats); going on without%s",
                                    self.config.upstream, " (processing every sensor)" if self.view.follow else "")
                        told_404 = True
                else:
                    self.heartbeat_failures += 1
                    refused = status in (401, 403)  # a token problem: no retry fixes it, say so
                    text = content.decode(errors="replace")[:300]
                    log = logger.warning if refused and told_refused != text else logger.debug
                    log("heartbeat refused by %s: %d %s", self.config.upstream, status, text)
                    told_refused = text if refused else told_refused
            except Exception as exc:  # a heartbeat never stops the agent; the uplink reports the link
                self.heartbeat_failures += 1
                logger.debug("heartbeat failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def housekeeping(self, stop: asyncio.Event) -> None:
        """Drop records past their age limit, once a minute."""
        while not stop.is_set():
            await asyncio.to_thread(self.outbox.expire)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=60.0)

    def status(self) -> Mapping[str, Any]:
        return {"node_id": self.config.node_id, "link": self.uplink.link, "breaker": self.uplink.breaker,
                "last_error": self.uplink.last_error,
                "records_in": sum(self.runner.metrics.records_in.values()),
                "outbox": {s.stream: {"depth": s.depth, "bytes": s.bytes, "last_seq": s.last_seq,
                                      "acked_seq": s.acked_seq, "drops": s.drops}
                           for s in self.outbox.all_stats()},
                "assignment": None if self.assignment is None else msgspec.to_builtins(self.assignment),
                "processing": {"generation": self.view.applied_generation,
                               "sensors": len(self.view.applied_sensors)} if self.view.follow else None,
                "skipped_unassigned": self.view.skipped,
                "not_taken_upstream": sorted(self.uplink.parked)}


async def run_agent(config: AgentConfig, *, flow: Any = None, clock: Clock | None = None,
                    started: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> Any:
    """Run the agent until ``stop`` is set (or the flow ends); returns the runner's result.

    ``flow`` replaces the default pipeline (build it with the :class:`OutboxSink`\\ s of the outbox this
    function opens: pass a callable ``flow(outbox) -> Flow``).
    """
    from tidegauge.dataflow import CheckpointConfig, Runner

    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    clock = clock or SystemClock()
    outbox = Outbox(data_dir / "outbox.db", config.streams, fsync=config.fsync, clock=clock)
    if config.follow_assignment and callable(flow):
        raise ValueError("follow_assignment works with the default pipeline (its first step keeps the assigned "
                         "sensors); a pipeline of your own would process every sensor")
    view = AssignmentView(follow=config.follow_assignment, log=data_dir / "assignments.jsonl")
    built = flow(outbox) if callable(flow) else default_flow(config, outbox, clock=clock, view=view)
    runner = Runner(built, max_delay="20ms",
                    checkpoint=CheckpointConfig(data_dir / "checkpoints", interval=config.checkpoint_interval))
    if is_nats_url(config.upstream):
        uplink: Uplink = JetStreamUplink(outbox, config.upstream, node_id=config.node_id, token=config.token,
                                         config=config.uplink, jetstream=config.jetstream, clock=clock)
    elif is_mqtt_url(config.upstream):
        from tidegauge.edge.mqtt import MqttUplink

        uplink = MqttUplink(outbox, config.upstream, node_id=config.node_id, token=config.token,
                            config=config.uplink, mqtt=config.mqtt, clock=clock)
    else:
        uplink = Uplink(outbox, config.upstream, node_id=config.node_id, token=config.token, config=config.uplink,
                        clock=clock, cacert=config.cacert)
    agent = EdgeAgent(config, outbox, uplink, runner, view)
    stop = stop or asyncio.Event()
    server = None
    if config.listen:
        from tidegauge.edge.agent_server import start_server

        try:
            server = await start_server(agent, config.listen)
        except OSError:
            await uplink.close()
            outbox.close()
            raise
    tasks = [asyncio.create_task(uplink.run(), name="uplink"),
             asyncio.create_task(agent.heartbeats(stop), name="heartbeats"),
             asyncio.create_task(agent.housekeeping(stop), name="housekeeping")]
    flow_task = asyncio.create_task(runner.run_async(), name="flow")
    stopper = asyncio.create_task(stop.wait())
    if started is not None:
        started.set()
    logger.info("agent %s: forwarding %s to %s", config.node_id, ", ".join(config.streams), config.upstream)
    try:
        await asyncio.wait({flow_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if flow_task.done() and flow_task.exception() is None and not stop.is_set():
            # a finite pipeline ended: keep forwarding what the outbox holds until stopped
            logger.info("agent %s: the flow finished; forwarding the outbox until stopped", config.node_id)
            await stopper
    finally:
        runner.stop()
        result = await flow_task
        stop.set()
        uplink.stop()
        for t in tasks:
            with contextlib.suppress(Exception):
                await t
        stopper.cancel()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.close()
        await uplink.close()
        outbox.close()
    return result

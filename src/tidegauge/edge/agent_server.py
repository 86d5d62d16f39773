"""The agent's own small HTTP server: ``/metrics`` (Prometheus), ``/healthz`` and ``/status`` (JSON).

Outbox figures per stream (depth, bytes, age of the oldest record, drops by reason), the uplink's
(records sent and replayed, batches, errors by kind, link and breaker state, round-trip time), the flow's
input count and the heartbeats sent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from tidegauge.edge.agent import EdgeAgent

__all__ = ["AgentCollector", "agent_app", "start_server"]

logger = logging.getLogger(__name__)

_LINK = {"up": 1, "degraded": 0.5, "down": 0}


class AgentCollector(Collector):
    """Prometheus figures of a running :class:`~tidegauge.edge.agent.EdgeAgent`."""

    def __init__(self, agent: EdgeAgent) -> None:
        self.agent = agent

    def collect(self) -> Any:
        a, up = self.agent, self.agent.uplink
        now = up.clock.now_us()
        depth = GaugeMetricFamily("tidegauge_outbox_depth", "Records waiting in the outbox", labels=["stream"])
        size = GaugeMetricFamily("tidegauge_outbox_bytes", "Bytes waiting in the outbox", labels=["stream"])
        age = GaugeMetricFamily("tidegauge_outbox_age_seconds", "Age of the oldest record in the outbox",
                                labels=["stream"])
        drops = CounterMetricFamily("tidegauge_outbox_dropped_records", "Records the outbox dropped, by reason",
                                    labels=["stream", "reason"])
        for st in a.outbox.all_stats():
            depth.add_metric([st.stream], st.depth)
            size.add_metric([st.stream], st.bytes)
            age.add_metric([st.stream], 0.0 if st.oldest_at_us is None else max(0.0, (now - st.oldest_at_us) / 1e6))
            for reason in ("overflow", "rejected", "expired"):
                drops.add_metric([st.stream, reason], st.drops.get(reason, 0))
        yield from (depth, size, age, drops)
        sent = CounterMetricFamily("tidegauge_uplink_sent_records", "Records acknowledged by the upstream",
                                   labels=["stream"])
        replayed = CounterMetricFamily("tidegauge_uplink_replayed_records",
                                       "Records sent as backlog replay", labels=["stream"])
        for s, n in up.sent.items():
            sent.add_metric([s], n)
            replayed.add_metric([s], up.replayed[s])
        yield sent
        yield replayed
        errors = CounterMetricFamily("tidegauge_uplink_errors", "Failed uplink requests by kind", labels=["kind"])
        for k, n in up.errors.items():
            errors.add_metric([k], n)
        yield errors
        yield CounterMetricFamily("tidegauge_uplink_batches", "Batches acknowledged", value=up.batches)
        yield GaugeMetricFamily("tidegauge_uplink_up", "Link state: 1 up, 0.5 degraded, 0 down",
                                value=_LINK[up.link])
        yield GaugeMetricFamily("tidegauge_uplink_breaker_open", "1 while the circuit breaker is open",
                                value=1 if up.breaker == "open" else 0)
        yield GaugeMetricFamily("tidegauge_uplink_rtt_seconds", "Round-trip time of the last batch",
                                value=up.last_rtt_s)
        yield CounterMetricFamily("tidegauge_agent_records_in", "Records the local flow read",
                                  value=sum(a.runner.metrics.records_in.values()))
        yield CounterMetricFamily("tidegauge_agent_heartbeats", "Heartbeats the coordinator answered",
                                  value=a.heartbeats_sent)


def agent_app(agent: EdgeAgent) -> Starlette:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(AgentCollector(agent))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "link": agent.uplink.link})

    async def status(request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(agent.status))

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz), Route("/status", status)])


class _Handle:
    def __init__(self, server: Any, task: asyncio.Task[Any]) -> None:
        self.server, self.task = server, task

    @property
    def should_exit(self) -> bool:
        return bool(self.server.should_exit)

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self.server.should_exit = value


async def start_server(agent: EdgeAgent, listen: str) -> _Handle:
    """Serve :func:`agent_app` on ``host:port`` in this event loop (signals are left to the caller)."""
    import contextlib

    import uvicorn

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"listen={listen!r}: use host:port, e.g. 127.0.0.1:8781")

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

    server = _Server(uvicorn.Config(agent_app(agent), host=host, port=int(port), log_level="warning",
                                    # no WebSocket routes here: "none" spares importing a WebSocket library
                                    access_log=False, lifespan="off", ws="none"))
    # bind here: a taken port is a clear error instead of uvicorn exiting the process from inside a task
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise OSError(f"--listen {listen}: cannot serve /metrics there: {exc.strerror}") from None
    task = asyncio.create_task(server.serve(sockets=[sock]))
    return _Handle(server, task)

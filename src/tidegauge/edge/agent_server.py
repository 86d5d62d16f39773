"""The agent's own small HTTP server: ``/metrics`` (Prometheus), ``/healthz`` and ``/status`` (JSON).

Outbox figures per stream (depth, bytes, age of the oldest record, drops by reason), the uplink's
(records sent and replayed, batches, errors by kind, link and breaker state, round-trip time), the flow's
input count and the heartbeats sent.

Served by :class:`AgentServer`, a few lines of HTTP/1.1 on :func:`asyncio.start_server` in the agent's
event loop: three read-only GET routes do not need an ASGI stack, and uvicorn with starlette (and what
they import) cost about 10 MB of the idle agent's resident memory, whose goal is under 100 MB. Each
answer closes its connection (a Prometheus scrape every few seconds gains nothing from keep-alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tidegauge.edge.agent import EdgeAgent

__all__ = ["AgentCollector", "AgentServer", "start_server"]

logger = logging.getLogger(__name__)

_LINK = {"up": 1, "degraded": 0.5, "down": 0}
_HEAD_LIMIT = 16 * 1024
"""Longest request line plus headers read (a scraper's or curl's are a few hundred bytes)."""
_HEAD_TIMEOUT_S = 10.0
"""A client that has not sent its request head by then is cut off (an idle socket must not stay open)."""
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


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


class AgentServer:
    """``GET /metrics``, ``/healthz``, ``/status`` of ``agent`` on an :class:`asyncio.Server`.

    Build it with :func:`start_server`; :meth:`close` stops listening and waits for answers in progress.
    """

    def __init__(self, agent: EdgeAgent) -> None:
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(AgentCollector(agent))
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body of a request (``path`` without its query string)."""
        routes = {"/metrics": self._metrics, "/healthz": self._healthz, "/status": self._status}
        route = routes.get(path)
        if route is None:
            return 404, "text/plain; charset=utf-8", b"Not Found"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"Method Not Allowed"
        return await route()

    async def _metrics(self) -> tuple[int, str, bytes]:
        # on the event loop, as the uplink that updates the figures (its error counts gain keys while it runs)
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    async def _healthz(self) -> tuple[int, str, bytes]:
        return 200, "application/json", _json({"status": "alive", "link": self.agent.uplink.link})

    async def _status(self) -> tuple[int, str, bytes]:
        return 200, "application/json", _json(await asyncio.to_thread(self.agent.status))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return  # a client gone, too slow or sending too much: nothing worth answering
            method, path = _request_line(head)
            if not method:
                status, ctype, body = 400, "text/plain; charset=utf-8", b"Bad Request"
            else:
                try:
                    status, ctype, body = await self.answer(method, path)
                except Exception:  # an answer's failure must not take the agent down: log it, answer 500
                    logger.exception("agent server: %s %s failed", method, path)
                    status, ctype, body = 500, "text/plain; charset=utf-8", b"Internal Server Error"
            lines = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Type: {ctype}",
                     f"Content-Length: {len(body)}", "Connection: close"]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._clients.discard(task)

    async def close(self) -> None:
        """Stop listening, and wait for the answers in progress."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)


def _request_line(head: bytes) -> tuple[str, str]:
    """Method and path (query string dropped) of a request head; ``("", "")`` when it is not HTTP."""
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "", ""
    return parts[0], parts[1].split("?", 1)[0]


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def start_server(agent: EdgeAgent, listen: str) -> AgentServer:
    """Serve ``agent``'s /metrics, /healthz and /status on ``host:port`` in this event loop."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"listen={listen!r}: use host:port, e.g. 127.0.0.1:8781")
    host = host.strip("[]")  # [::1]:8781
    # bind here: a taken port is a clear error naming the flag
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise OSError(f"--listen {listen}: cannot serve /metrics there: {exc.strerror}") from None
    server = AgentServer(agent)
    server._server = await asyncio.start_server(server._client, sock=sock, limit=_HEAD_LIMIT)
    return server

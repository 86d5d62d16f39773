"""The ASGI app (Starlette) and :func:`serve`, which runs it with uvicorn in the runner's event loop.

Endpoints (all but ``/healthz`` need a bearer token; ``open_metrics`` opens ``/metrics``):

=========================  ========  ===================================================================
``POST /api/v1/ingest``    ingest    JSON array or NDJSON of readings (:mod:`tidegauge.server.ingest`)
``GET /api/v1/ingest/ws``  ingest    WebSocket ingest, one acknowledgement per message
``GET /api/v1/...``        read      sensors, series, windows, anomalies, dead letters
                                     (:mod:`tidegauge.server.query`)
``POST /api/v1/edge/...``  ingest    edge heartbeats; agents and assignments (read) (:mod:`tidegauge.server.edge`)
``GET /metrics``           read      Prometheus text format (:mod:`tidegauge.server.metrics`)
``GET /healthz``           (none)    the process is alive
``GET /readyz``            any       flow started and reading its sources, checkpoints fresh, not overloaded;
                                     reasons in the body
``GET /openapi.json``      any       the OpenAPI 3.1 description of this API
=========================  ========  ===================================================================

Error answers are JSON ``{"error": "..."}``; no answer or log line ever contains a token.

Once it listens, :func:`serve` logs where (the real port when ``port: 0`` was asked; ``https`` with TLS)
and where the dashboard, the OpenAPI document and the metrics are, as one INFO line on the
``tidegauge.server.startup`` logger (:data:`STARTUP_LOGGER`), which the CLI always shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidegauge._time import parse_duration
from tidegauge.connectors.http import FieldType, HttpIngestSource
from tidegauge.server.auth import Authenticator, Principal, RateLimiter
from tidegauge.server.config import ServerConfig, resolve_tokens
from tidegauge.server.flowthread import start_flow
from tidegauge.server.ingest import error, ingest_asgi, ingest_http, ingest_ws, json_response
from tidegauge.server.metrics import FlowCollector, LatencyTracker, ServerMetrics
from tidegauge.server.openapi import openapi_schema
from tidegauge.server.validation import RecordValidator

if TYPE_CHECKING:
    from tidegauge.alerting.manager import AlertManager
    from tidegauge.edge.coordinator import Coordinator
    from tidegauge.edge.receiver import EdgeReceiver
    from tidegauge.server.live import LiveState

__all__ = ["STARTUP_LOGGER", "ServerState", "build_app", "serve", "startup_line"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("tidegauge.server.access")
STARTUP_LOGGER = "tidegauge.server.startup"
startup_logger = logging.getLogger(STARTUP_LOGGER)


@dataclass
class ServerState:
    """What the handlers share: config, runner, the HTTP source, auth, limits and metrics."""

    config: ServerConfig
    runner: Any
    sources: dict[str, HttpIngestSource]
    source: HttpIngestSource | None
    validator: RecordValidator
    auth: Authenticator
    limiter: RateLimiter
    registry: CollectorRegistry
    metrics: ServerMetrics
    body_limit: int
    started: float

    def authorize(self, header: str | None, scope: str | None) -> Principal | Response:
        """The caller, or the 401/403 answer (``scope=None``: any valid token)."""
        found = self.authenticate(header, scope)
        return found if isinstance(found, Principal) else error(*found)

    def authenticate(self, header: str | None, scope: str | None) -> Principal | tuple[int, str]:
        """The caller, or the status and message of the 401/403 answer (``scope=None``: any valid token)."""
        principal = self.auth.authenticate(header)
        if principal is None:
            return 401, "a valid bearer token is needed (Authorization: Bearer <token>)"
        if scope is not None and scope not in principal.scopes and "admin" not in principal.scopes:
            return 403, f"token {principal.name!r} lacks the {scope!r} scope"
        return principal

    def observe(self, scope: Scope, route: str, status: int, elapsed: float) -> None:
        """Count and time one HTTP request; log it as a JSON line if ``access_log`` is on."""
        self.metrics.observe_request(route, status, elapsed)
        if self.config.access_log:
            # the path only: never the query string (a WebSocket access_token could be in it)
            fields = {"method": scope.get("method"), "path": scope["path"], "status": status,
                      "seconds": round(elapsed, 6), "client": (scope.get("client") or ("", 0))[0]}
            access_logger.info(json.dumps(fields), extra={"access": fields})


def build_app(runner: Any, config: ServerConfig, *, environ: Mapping[str, str] | None = None,
              alerts: AlertManager | None = None, edge_receiver: EdgeReceiver | None = None,
              coordinator: Coordinator | None = None, live: LiveState | None = None) -> Starlette:
    """The ASGI app serving ``runner``'s flow (a :class:`~tidegauge.dataflow.Runner`, built or running).

    ``environ`` gives the clear tokens of tokens configured by ``env`` (the server config layer passes
    ``os.environ``; library code passes what it wants). ``alerts`` (the manager the flow's ``AlertStep``
    shares) adds the alert and silence endpoints and the alerting metrics (:mod:`tidegauge.server.alerts`).
    ``edge_receiver`` adds ``POST /api/v1/edge/batches`` (:mod:`tidegauge.edge.receiver`) and its metrics.
    ``coordinator`` adds the edge endpoints and metrics (:mod:`tidegauge.server.edge`); by default the one
    behind the flow's :class:`~tidegauge.edge.flow.EdgeHeartbeatSource`, if it has one.
    ``live`` (fed by the flow's live steps) adds the dashboard, its login sessions and the live endpoints
    (:mod:`tidegauge.server.live_api`, :mod:`tidegauge.server.session`, :mod:`tidegauge.dashboard`).
    """
    sources = {nid: n.definition for nid, n in runner.flow.nodes.items()
               if n.kind == "source" and isinstance(n.definition, HttpIngestSource)}
    source = next(iter(sources.values()), None)
    schema: dict[str, FieldType] = (
        source.schema if source is not None else {"sensor_id": "str", "timestamp": "timestamp"}
    )
    registry = CollectorRegistry(auto_describe=True)
    state = ServerState(
        config=config,
        runner=runner,
        sources=sources,
        source=source,
        validator=RecordValidator(schema, key=source.key if source else "sensor_id",
                                  time=source.time if source else "timestamp"),
        auth=Authenticator(resolve_tokens(config, environ or {})),
        limiter=RateLimiter(config.rate_limit, time.monotonic),
        registry=registry,
        metrics=ServerMetrics(registry),
        body_limit=config.body_limit,
        started=time.time(),
    )
    registry.register(FlowCollector(runner, sources))
    if source is not None:
        state.validator.codec.warm_up()  # the compiled readers, before the first request rather than in it
    from tidegauge.server.query import query_routes

    routes: list[BaseRoute] = [
        Route("/api/v1/ingest", ingest_http, methods=["POST"]),
        WebSocketRoute("/api/v1/ingest/ws", ingest_ws),
        Route("/metrics", metrics_endpoint),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/openapi.json", openapi),
        *query_routes(),
    ]
    if alerts is not None:
        from tidegauge.server.alerts import AlertCollector, alert_routes

        registry.register(AlertCollector(alerts))
        routes += alert_routes(alerts)
    if edge_receiver is not None:
        registry.register(edge_receiver.collector())
        routes += edge_receiver.routes()
    if coordinator is None:
        from tidegauge.edge.flow import flow_coordinator

        coordinator = flow_coordinator(runner.flow)
    if coordinator is not None:
        from tidegauge.server.edge import EdgeCollector, edge_routes

        registry.register(EdgeCollector(coordinator))
        routes += edge_routes(coordinator)
    if live is not None:
        from tidegauge.dashboard import dashboard_routes
        from tidegauge.server.live_api import live_routes
        from tidegauge.server.session import SessionAuthenticator, SessionStore, session_routes

        sessions = SessionStore()
        state.auth = SessionAuthenticator(state.auth, sessions)
        routes += [*session_routes(sessions), *live_routes(live, runner, alerts), *dashboard_routes()]
    app = _App(routes=routes)
    app.state.tg = state
    app.state.alerts = alerts
    app.state.coordinator = coordinator
    app.state.edge_receiver = edge_receiver
    if live is not None:
        from tidegauge.server.session import SessionMiddleware

        app.add_middleware(SessionMiddleware)
    app.add_middleware(_ObserveMiddleware, state=state)
    return app


async def metrics_endpoint(request: Request) -> Response:
    state: ServerState = request.app.state.tg
    if not state.config.open_metrics:
        who = state.authorize(request.headers.get("authorization"), "read")
        if isinstance(who, Response):
            return who
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return json_response({"status": "alive"})


async def readyz(request: Request) -> Response:
    state: ServerState = request.app.state.tg
    who = state.authorize(request.headers.get("authorization"), None)
    if isinstance(who, Response):
        return who
    reasons = not_ready_reasons(state)
    return json_response({"ready": not reasons, "reasons": reasons}, 503 if reasons else 200)


def not_ready_reasons(state: ServerState) -> list[str]:
    """Why the server should not get traffic (empty: ready).

    Not ready until the flow reads its sources: while it starts (restores state, builds its steps, which
    load or compile their kernels: half a minute with a cold numba cache) its HTTP source may already
    exist and take records, but nothing reads them, so ingest would soon answer 503.
    """
    reasons: list[str] = []
    phase = getattr(state.runner, "phase", "running")
    if phase in ("new", "starting"):
        reasons.append("flow starting (restoring state, compiling kernels): not reading its sources yet")
    elif phase == "stopped":
        reasons.append("flow stopped: not reading its sources")
    for sid, src in state.sources.items():
        if src.logic is None or src.logic.closed:
            reasons.append(f"source {sid}: the flow is not reading it")
        elif src.saturated():
            reasons.append(f"source {sid}: overloaded, {src.lag_bytes()} bytes behind (limit {src.max_lag_bytes})")
    cp = getattr(state.runner, "checkpoint_config", None)
    if cp is not None:
        max_age = max(parse_duration(state.config.checkpoint_max_age) / 1e6, 2 * cp.interval_us() / 1e6)
        last = state.runner.metrics.last_checkpoint_at_us
        age = time.time() - (state.started if last is None else last / 1e6)
        if age > max_age:
            reasons.append(f"checkpoints: the last one is {age:.0f}s old (limit {max_age:.0f}s)")
    return reasons


async def openapi(request: Request) -> Response:
    state: ServerState = request.app.state.tg
    who = state.authorize(request.headers.get("authorization"), None)
    if isinstance(who, Response):
        return who
    parts = request.app.state
    return json_response(openapi_schema(state.validator.record, alerts=getattr(parts, "alerts", None) is not None,
                                        edge=getattr(parts, "coordinator", None) is not None,
                                        edge_batches=getattr(parts, "edge_receiver", None) is not None))


_ROUTES = ("/api/v1/ingest/ws", "/api/v1/ingest", "/api/v1/edge/heartbeat", "/api/v1/edge/agents",
           "/api/v1/edge/assignments", "/api/v1/edge/batches", "/api/v1/sensors", "/api/v1/windows",
           "/api/v1/anomalies", "/api/v1/dead-letters", "/metrics", "/healthz", "/readyz", "/openapi.json",
           "/api/v1/live", "/api/v1/session", "/static", "/vendor")


class _ObserveMiddleware:
    """Counts and times every HTTP request by route and status; logs one JSON line each if asked."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = next((r for r in _ROUTES if path.startswith(r)), "other")
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.state.observe(scope, route, status, time.perf_counter() - t0)


_INGEST_PATH = "/api/v1/ingest"


class _App(Starlette):
    """Starlette, with ``POST /api/v1/ingest`` carrying an ``Authorization`` header served by
    :func:`~tidegauge.server.ingest.ingest_asgi` directly: the busiest route skips the middleware stack,
    the router and the ``Request`` object (the same checks, answers, metrics and access log). Requests
    without the header (a session cookie, or none: 401) take the full stack."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == _INGEST_PATH and scope["method"] == "POST":
            authorization = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            if authorization is not None:
                await self._ingest(scope, receive, send, authorization)
                return
        await super().__call__(scope, receive, send)

    async def _ingest(self, scope: Scope, receive: Receive, send: Send, authorization: str) -> None:
        state: ServerState = self.state.tg
        t0 = time.perf_counter()
        status = 500
        started = False

        async def send_once(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            status = await ingest_asgi(state, scope, receive, send_once, authorization)
        except Exception:
            # what Starlette's ServerErrorMiddleware does for the other routes: a 500, the error logged
            logger.exception("POST %s failed", _INGEST_PATH)
            if not started:
                await error(500, "internal server error")(scope, receive, send)
        finally:
            state.observe(scope, _INGEST_PATH, status, time.perf_counter() - t0)


async def serve(runner: Any, config: ServerConfig, *, environ: Mapping[str, str] | None = None,
                alerts: AlertManager | None = None, started: asyncio.Event | None = None,
                handle_signals: bool = True, edge_receiver: EdgeReceiver | None = None,
                coordinator: Coordinator | None = None, live: LiveState | None = None) -> Any:
    """Run ``runner`` and the HTTP server until the flow ends or a signal stops the server.

    The server runs in this event loop; the flow in a thread of its own (``server.flow: thread``, the
    default) or in this loop too (``loop``): see :mod:`tidegauge.server.flowthread`. With ``coordinator``
    or ``edge_receiver`` the flow always runs in this loop: those share state with the flow's steps and
    sources that is made for one event loop. ``live`` is locked by itself and works with either.

    Returns the runner's :class:`~tidegauge.dataflow.runner.RunResult`. On SIGINT/SIGTERM (handled here
    when ``handle_signals``, and only from the main thread) the server stops accepting requests, then the
    runner finishes its batch, checkpoints and stops, and :func:`serve` returns normally; records
    acknowledged but not yet processed stay in the intake log and are replayed on the next start.
    ``alerts`` and ``live`` are passed to :func:`build_app` (alert endpoints; dashboard and live endpoints).
    """
    try:
        import uvicorn
    except ImportError as exc:
        from tidegauge.errors import MissingDependencyError

        raise MissingDependencyError("uvicorn", "server") from exc
    app = build_app(runner, config, environ=environ, alerts=alerts, edge_receiver=edge_receiver,
                    coordinator=coordinator, live=live)
    state: ServerState = app.state.tg
    tls: dict[str, Any] = {}
    if config.tls is not None:
        tls = {"ssl_certfile": config.tls.cert, "ssl_keyfile": config.tls.key}
    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises a caught signal after shutting down, which would cut the flow's final
            # checkpoint short; serve() handles the signals itself instead
            yield

    uv = _Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                       access_log=False, lifespan="off", ws_max_size=state.body_limit, **tls))
    mode = config.flow
    if mode == "thread" and (coordinator is not None or edge_receiver is not None):
        logger.info("the flow runs in the server's event loop (the edge parts share state with it)")
        mode = "loop"
    sock = _listen(config.host, config.port)  # before the flow starts: a port in use is a clear error
    flow_task, stop_flow = start_flow(runner, mode)
    server_task = asyncio.create_task(uv.serve(sockets=[sock]))
    LatencyTracker(runner, state.sources, state.metrics.e2e).attach()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals and threading.current_thread() is \
        threading.main_thread() else ()
    for sig in signals:
        loop.add_signal_handler(sig, setattr, uv, "should_exit", True)
    line = startup_line(config, sock.getsockname()[1], dashboard=live is not None)
    loop.call_soon(_when_started, uv, lambda: startup_logger.info("%s", line))
    if started is not None:
        loop.call_soon(_when_started, uv, started.set)
    try:
        await asyncio.wait({flow_task, server_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # stop taking requests first, then let the flow finish its batch and checkpoint
        uv.should_exit = True
        try:
            with contextlib.suppress(Exception):
                await server_task
        finally:  # even if uvicorn raised SystemExit (a port in use): the flow must not run on alone
            stop_flow()
            for sig in signals:
                loop.remove_signal_handler(sig)
    return await flow_task


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``OSError`` naming them and the reason when it cannot be had)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"server {host}:{port}: cannot listen there: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(f"server {host}:{port}: cannot listen there: {exc.strerror or exc} "
                      f"(another server? set server.port or --port)") from None
    sock.setblocking(False)
    return sock


def startup_line(config: ServerConfig, port: int, *, dashboard: bool) -> str:
    """Where a server listening on ``port`` (the bound one) answers: its URL and those of the dashboard
    (when served), the OpenAPI document and the metrics.

    Examples
    --------
    >>> startup_line(ServerConfig(host="0.0.0.0"), 8080, dashboard=False)  # doctest: +NORMALIZE_WHITESPACE
    'listening on http://127.0.0.1:8080 (all interfaces); dashboard: off (server.dashboard: false);
     API docs: http://127.0.0.1:8080/openapi.json; metrics: http://127.0.0.1:8080/metrics (read token)'
    """
    host = config.host
    everywhere = host in ("0.0.0.0", "::", "")
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    base = f"{'https' if config.tls is not None else 'http'}://{f'[{shown}]' if ':' in shown else shown}:{port}"
    return "; ".join([
        f"listening on {base}" + (" (all interfaces)" if everywhere else ""),
        f"dashboard: {base}/" if dashboard else "dashboard: off (server.dashboard: false)",
        f"API docs: {base}/openapi.json",
        f"metrics: {base}/metrics" + (" (open)" if config.open_metrics else " (read token)"),
    ])


def _when_started(uv: Any, then: Callable[[], None]) -> None:
    if uv.started:
        then()
    else:
        asyncio.get_running_loop().call_later(0.01, _when_started, uv, then)

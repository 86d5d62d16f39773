"""The HTTP server: ingest (HTTP and WebSocket), queries, ``/metrics``, health, bearer-token auth, TLS.

Contract: :func:`build_app` turns a :class:`~tidegauge.dataflow.Runner` and a :class:`ServerConfig`
into an ASGI app; :func:`serve` runs that app with uvicorn in the runner's event loop;
:func:`attach_dashboard` feeds the live dashboard from a flow's streams. A record the
server answers 2xx for is durable in the intake log of the flow's
:class:`~tidegauge.connectors.http.HttpIngestSource` (see :mod:`tidegauge.connectors.http`).

Needs the ``server`` extra: ``pip install 'tidegauge[server]'``.
"""

from __future__ import annotations

from tidegauge.server.app import ServerState, build_app, serve
from tidegauge.server.auth import Authenticator, Principal, RateLimiter
from tidegauge.server.config import (
    DashboardConfig,
    HistoryConfig,
    RateLimitConfig,
    ServerConfig,
    TlsConfig,
    TokenConfig,
    hash_token,
    resolve_tokens,
)
from tidegauge.server.live_pipeline import attach_dashboard
from tidegauge.server.validation import RecordValidator, Reject, ValidationResult

__all__ = [
    "Authenticator",
    "DashboardConfig",
    "HistoryConfig",
    "Principal",
    "RateLimitConfig",
    "RateLimiter",
    "RecordValidator",
    "Reject",
    "ServerConfig",
    "ServerState",
    "TlsConfig",
    "TokenConfig",
    "ValidationResult",
    "attach_dashboard",
    "build_app",
    "hash_token",
    "resolve_tokens",
    "serve",
]

"""Browser sessions: a token is POSTed once, and an HttpOnly cookie stands for it afterwards.

``POST /api/v1/session`` with ``{"token": "..."}`` checks the token like a bearer token and answers
with a ``tg_session`` cookie (``HttpOnly``, ``SameSite=Strict``, ``Path=/``; ``Secure`` under TLS). The
cookie holds a random session id, not the token; the server keeps only the id's SHA-256 digest, with
the token's name and scopes and an expiry. ``GET /api/v1/session`` tells who is logged in (401 if
nobody), ``DELETE /api/v1/session`` logs out.

:class:`SessionMiddleware` turns a valid cookie into the principal of every HTTP and WebSocket request
that has no ``Authorization`` header, so the query, alert and live endpoints work from the page without
JavaScript ever seeing the token, and the token never appears in a URL. A request authenticated by the
cookie that is not a GET must come from the same origin (``Origin`` matches ``Host``): with
``SameSite=Strict`` that is belt and braces against cross-site requests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tidegauge.server.auth import Authenticator, Principal
from tidegauge.server.ingest import error, json_response

if TYPE_CHECKING:
    from tidegauge.server.app import ServerState

__all__ = ["COOKIE", "SessionAuthenticator", "SessionMiddleware", "SessionStore", "session_routes"]

logger = logging.getLogger(__name__)

COOKIE = "tg_session"
_PREFIX = "tgs_"  # marks a session id presented as a bearer token by the middleware
_MAX_SESSIONS = 10_000  # a bound on memory if something logs in in a loop; the oldest go first


class SessionStore:
    """Session id digests -> (principal, expiry), in memory (a restart logs everyone out)."""

    def __init__(self, *, ttl_s: float = 12 * 3600, clock: Callable[[], float] = time.time) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s={ttl_s}: must be positive")
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[bytes, tuple[Principal, float]] = {}

    @staticmethod
    def _digest(sid: str) -> bytes:
        return hashlib.sha256(sid.encode("utf-8", "surrogatepass")).digest()

    def create(self, principal: Principal) -> str:
        sid = _PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            if len(self._sessions) >= _MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda k: self._sessions[k][1])
                del self._sessions[oldest]
            self._sessions[self._digest(sid)] = (principal, self.clock() + self.ttl_s)
        return sid

    def get(self, sid: str) -> Principal | None:
        key = self._digest(sid)
        with self._lock:
            found = self._sessions.get(key)
            if found is None:
                return None
            if found[1] < self.clock():
                del self._sessions[key]
                return None
            return found[0]

    def drop(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(self._digest(sid), None)


class SessionAuthenticator(Authenticator):
    """An :class:`Authenticator` that also accepts ``Bearer <session id>`` for a live session."""

    def __init__(self, inner: Authenticator, sessions: SessionStore) -> None:
        super().__init__([])
        self.inner = inner
        self.sessions = sessions

    def authenticate(self, header: str | None) -> Principal | None:
        if header:
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token.startswith(_PREFIX):
                return self.sessions.get(token)
        return self.inner.authenticate(header)


def _cookie(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header is the same as no session
                return None
            morsel = jar.get(COOKIE)
            if morsel is not None and morsel.value.startswith(_PREFIX):
                return morsel.value
    return None


class SessionMiddleware:
    """Authenticates cookie-bearing requests as their session (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers: list[tuple[bytes, bytes]] = list(scope.get("headers", []))
            if not any(k == b"authorization" for k, _ in headers):
                sid = _cookie(headers)
                if sid is not None:
                    if not _same_origin(scope, headers):
                        if scope["type"] == "http":
                            await error(403, "cross-origin request with a session cookie refused")(scope, receive,
                                                                                                  send)
                        else:
                            await send({"type": "websocket.close", "code": 1008})
                        return
                    scope = {**scope, "headers": [*headers, (b"authorization", f"Bearer {sid}".encode())]}
        await self.app(scope, receive, send)


def _same_origin(scope: Scope, headers: list[tuple[bytes, bytes]]) -> bool:
    if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
        return True
    found = dict(headers)
    origin, host = found.get(b"origin"), found.get(b"host")
    if origin is None:  # not a browser's cross-site request (browsers send Origin on those)
        return True
    return host is not None and origin.split(b"://", 1)[-1] == host


def session_routes(sessions: SessionStore) -> list[BaseRoute]:
    async def login(request: Request) -> Response:
        state: ServerState = request.app.state.tg
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if len(raw) < 4096 else None
        except ValueError:
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip():
            return error(400, 'body: {"token": "<access token>"}')
        principal = state.auth.authenticate(f"Bearer {token.strip()}")
        if principal is None or token.strip().startswith(_PREFIX):
            logger.info("dashboard login refused (bad token)")
            return error(401, "that token is not valid here")
        sid = sessions.create(principal)
        logger.info("dashboard session opened for token %r", principal.name)
        resp = json_response({"name": principal.name, "scopes": sorted(principal.scopes)})
        resp.set_cookie(COOKIE, sid, max_age=int(sessions.ttl_s), httponly=True, samesite="strict", path="/",
                        secure=state.config.tls is not None)
        return resp

    async def whoami(request: Request) -> Response:
        state: ServerState = request.app.state.tg
        who = state.authorize(request.headers.get("authorization"), None)
        if isinstance(who, Response):
            return who
        return json_response({"name": who.name, "scopes": sorted(who.scopes)})

    async def logout(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        token = header.partition(" ")[2].strip()
        if token.startswith(_PREFIX):
            sessions.drop(token)
        resp = json_response({"logged_out": True})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    return [Route("/api/v1/session", login, methods=["POST"]),
            Route("/api/v1/session", whoami, methods=["GET"]),
            Route("/api/v1/session", logout, methods=["DELETE"])]

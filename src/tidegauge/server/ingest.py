"""Ingest endpoints: ``POST /api/v1/ingest`` (JSON array or NDJSON) and ``GET /api/v1/ingest/ws``.

Order of checks for a request, cheapest first: token (401/403), rate limit per token (429 +
``Retry-After``), declared size (413), pipeline saturated (503 + ``Retry-After``), body read with the size
limit (413), then every record validated (:mod:`tidegauge.server.validation`) in one of the intake log's
threads (the compiled reader not holding the GIL; :mod:`tidegauge.connectors.intake`), which append
accepted records *and* rejected ones (with reason and payload) to the log, the accepted ones also in their
decoded form for the flow to take in memory (see :mod:`tidegauge.connectors.http`, *Hand-off*); the
answer is sent only once that append is durable, so an accepted record is never lost after the 2xx, and
each reject reaches the flow's dead-letter output (the dead-letter count equals the count of rejects).

Answer: ``{"accepted": n, "rejected": [{"index": i, "reason": "..."}]}``; status 200, or 400 when the
body held records and every one was rejected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from tidegauge.connectors.intake import Entry
from tidegauge.server.auth import Principal
from tidegauge.server.validation import ValidationResult

if TYPE_CHECKING:
    from tidegauge.server.app import ServerState

__all__ = ["ingest_asgi", "ingest_http", "ingest_ws"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode


def _encode_text(value: Any) -> str:
    """JSON as a str: WebSocket answers go as text frames (a browser gets a string, not a Blob)."""
    return _encode(value).decode()


_PREPARE_HERE_BYTES = 64 * 1024
"""Bodies smaller than this (about 400 readings; 0.1 ms of validation) are validated on the event loop, the
bigger ones in the intake log's preparing threads (the compiled reader releases the GIL there)."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(body), status, headers, media_type="application/json")


def error(status: int, message: str, *, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="tidegauge"'}
    return json_response({"error": message}, status, headers)


class _TooLarge(Exception):
    pass


Answer = tuple[int, bytes, dict[str, str] | None]
"""An ingest answer: status, JSON body, extra headers (served by Starlette or by :func:`ingest_asgi`)."""


def _refusal_answer(status: int, message: str, *, retry_after: int | None = None) -> Answer:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="tidegauge"'}
    return status, _encode({"error": message}), headers


async def _read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _receive_body(receive: Receive, limit: int) -> bytes:
    """The request body from raw ASGI messages (what Starlette's ``Request.stream`` does, minus its layers)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def ingest_http(request: Request) -> Response:
    """``POST /api/v1/ingest`` through Starlette (requests that :func:`ingest_asgi` leaves to the router:
    those authenticated by a session cookie, or not at all)."""
    state: ServerState = request.app.state.tg
    h = request.headers
    status, body, headers = await _ingest(state, h.get("authorization"), h.get("content-length"),
                                          h.get("content-type"), lambda limit: _read_body(request, limit))
    return Response(body, status, headers, media_type="application/json")


async def ingest_asgi(state: ServerState, scope: Scope, receive: Receive, send: Send,
                      authorization: str) -> int:
    """``POST /api/v1/ingest`` as a bare ASGI handler; returns the status sent.

    The same checks and answer as :func:`ingest_http`, without Starlette's ``Request``, router and
    middleware layers on the way in and out (about a fifth of the server's main-thread time per request
    at full load: ``benchmarks/http_ingest.py``). The app sends here the requests that carry an
    ``Authorization`` header; errors are caught by the caller.
    """
    length = ctype = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value.decode("latin-1")
        elif name == b"content-type":
            ctype = value.decode("latin-1")
    status, body, extra = await _ingest(state, authorization, length, ctype,
                                        lambda limit: _receive_body(receive, limit))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


async def _ingest(state: ServerState, authorization: str | None, declared: str | None, ctype: str | None,
                  read_body: Callable[[int], Awaitable[bytes]]) -> Answer:
    principal = state.authenticate(authorization, "ingest")
    if not isinstance(principal, Principal):
        return _refusal_answer(*principal)
    if state.source is None:
        return _refusal_answer(404, "this pipeline has no http source; add 'source: {http: {...}}' to ingest over HTTP")
    wait = state.limiter.take(principal.name)
    if wait:
        state.metrics.refuse("rate_limited")
        return _refusal_answer(429, f"rate limit of token {principal.name!r} exceeded", retry_after=int(wait))
    if declared is not None and declared.isdigit() and int(declared) > state.body_limit:
        state.metrics.refuse("too_large")
        return _refusal_answer(413, f"body of {declared} bytes is over the limit of {state.body_limit} bytes")
    if state.source.saturated():
        state.metrics.refuse("overloaded")
        return _refusal_answer(503, state.source.refusal(), retry_after=state.config.retry_after_s)
    try:
        body = await read_body(state.body_limit)
    except _TooLarge:
        state.metrics.refuse("too_large")
        return _refusal_answer(413, f"body is over the limit of {state.body_limit} bytes")
    except ClientDisconnect:
        return _refusal_answer(400, "client disconnected before sending the whole body")
    try:
        result = await _validate_and_append(state, body, ctype, principal.sensors)
    except OSError as exc:
        logger.error("intake log append failed: %s", exc)
        return _refusal_answer(503, "the intake log cannot be written; retry later",
                               retry_after=state.config.retry_after_s)
    status = 400 if result.rejects and not result.accepted else 200
    return status, _encode(_answer(result)), None


async def _validate_and_append(state: ServerState, body: bytes, ctype: str | None,
                               sensors: frozenset[str] | None) -> ValidationResult:
    """Validate ``body`` and append its records to the intake log, both in the log's threads (the compiled
    reader runs without the GIL; the event loop goes on with other requests meanwhile); returns once the
    records are durable."""
    if state.source is None:
        raise OSError("no http source")
    validator = state.validator

    def prepare() -> tuple[Entry, ValidationResult]:
        result = validator.validate(body, ctype, sensors=sensors)
        # the validated records go to the flow in memory with the frame (the compiled reader's columns,
        # or msgspec's records packed): the flow does not parse them again
        decoded: object | None = result.columns
        if decoded is None and result.records:
            decoded = validator.codec.pack(result.records)
        return Entry(result.ndjson, result.accepted, [(r.reason, r.payload) for r in result.rejects],
                     decoded), result

    t0 = time.perf_counter()
    # a small body is validated here: below _PREPARE_HERE_BYTES the hop to a preparing thread costs about
    # as much as it frees, and adds a wake-up to the request's latency
    _, result = await state.source.open_log().append_prepared(prepare, here=len(body) < _PREPARE_HERE_BYTES)
    state.metrics.appended(time.perf_counter() - t0, result.accepted, [r.reason for r in result.rejects])
    return result


def _answer(result: ValidationResult) -> dict[str, Any]:
    return {"accepted": result.accepted,
            "rejected": [{"index": r.index, "reason": r.reason} for r in result.rejects]}


async def ingest_ws(ws: WebSocket) -> None:
    """WebSocket ingest: each message (text or binary) is a JSON array/object or NDJSON of readings.

    Each message is answered with ``{"seq": n, "accepted": ..., "rejected": [...]}`` once durable, or
    ``{"seq": n, "error": "...", "retry_after": s}`` when refused (nothing of it was kept: send it again).
    The token comes in the ``Authorization`` header or, for browsers, the ``access_token`` query parameter.
    """
    state: ServerState = ws.app.state.tg
    header = ws.headers.get("authorization")
    if header is None and "access_token" in ws.query_params:
        header = "Bearer " + ws.query_params["access_token"]
    principal = state.authorize(header, "ingest")
    if isinstance(principal, Response) or state.source is None:
        await ws.close(code=1008, reason="a token with the 'ingest' scope is needed"
                       if state.source is not None else "this pipeline has no http source")
        return
    await ws.accept()
    seq = 0
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or (message.get("text") or "").encode("utf-8", "surrogatepass")
            refusal = _refusal(state, principal.name, len(data))
            if refusal is not None:
                await ws.send_text(_encode_text({"seq": seq, **refusal}))
            else:
                result = await _validate_and_append(state, data, None, principal.sensors)
                await ws.send_text(_encode_text({"seq": seq, **_answer(result)}))
            seq += 1
    except WebSocketDisconnect:
        return


def _refusal(state: ServerState, name: str, size: int) -> dict[str, Any] | None:
    wait = state.limiter.take(name)
    if wait:
        state.metrics.refuse("rate_limited")
        return {"error": "rate limited", "retry_after": int(wait)}
    if size > state.body_limit:
        state.metrics.refuse("too_large")
        return {"error": f"message over the limit of {state.body_limit} bytes"}
    if state.source is None or state.source.saturated():
        state.metrics.refuse("overloaded")
        reason = state.source.refusal() if state.source is not None else "this pipeline has no http source"
        return {"error": reason, "retry_after": state.config.retry_after_s}
    return None

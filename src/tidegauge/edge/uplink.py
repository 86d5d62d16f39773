"""The uplink: sends the outbox's visible records upstream in batches, in order per stream.

Over HTTP (this module), NATS JetStream (:mod:`tidegauge.edge.jetstream`) or MQTT v5
(:mod:`tidegauge.edge.mqtt`): the same batches and logic.

- **Batches** of one stream, contiguous sequence numbers, with an idempotency key
  (``<agent>:<stream>:<first>-<last>``): the upstream de-duplicates a batch sent twice (an answer lost).
- **A window of batches in flight** (``window``, default 2; one for alert streams); the upstream applies a
  stream's batches in order (each names the batch before it), so order per stream holds; streams take turns
  by smooth weighted round-robin on their :class:`~tidegauge.edge.outbox.StreamPolicy` priority (alerts first,
  telemetry still gets its share).
- **Backoff**: exponential with full jitter between ``backoff_initial`` and ``backoff_max`` after a failure;
  a **circuit breaker** opens after ``breaker_failures`` failures in a row (link ``down``: no traffic but one
  probe every ``breaker_open``), half-opens for one probe, and closes on a success.
- **Resume**: the position of each stream is the outbox's acknowledged sequence number, so a restarted agent
  starts where the upstream's last acknowledgement left it; the upstream drops what it had already.
- **TLS**: an ``https://`` upstream's certificate is checked against the system's CAs, or against
  ``cacert`` (a PEM file: the private CA that signed it; ``tidegauge agent --cacert``). A certificate that
  does not verify is a link failure of kind ``tls`` (its reason in :attr:`Uplink.last_error` and the
  agent's ``/status``), never a silent fallback to no verification.
- **Replay**: records written before the link (last) came up are sent with ``edge_replay: true``; a replayed
  alert transition that resolved later in the backlog goes with ``edge_page: false`` (recorded upstream, not
  paged), and so does its resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from tidegauge._time import Clock, SystemClock, parse_duration
from tidegauge.edge import wire
from tidegauge.edge._blocks import splice
from tidegauge.edge.outbox import Outbox, OutboxBatch

__all__ = ["BreakerState", "Uplink", "UplinkConfig", "ca_context"]

logger = logging.getLogger(__name__)

_PARK_S = 60.0
"""How long a stream the upstream does not take (404) waits before it is offered again."""

BreakerState = Literal["closed", "open", "half_open"]


class UplinkConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the uplink batches, retries and breaks."""

    batch_records: int = 10_000
    batch_bytes: int = 4 * 1024 * 1024
    timeout: str = "10s"
    backoff_initial: str = "200ms"
    backoff_max: str = "30s"
    breaker_failures: int = 5
    breaker_open: str = "10s"
    window: int = 2
    alert_streams: tuple[str, ...] = ("alerts",)

    def __post_init__(self) -> None:
        if self.batch_records < 1 or self.batch_bytes < 1024:
            raise ValueError("batch_records must be >= 1 and batch_bytes >= 1024")
        if self.window < 1:
            raise ValueError(f"window={self.window}: use >= 1 (batches in flight)")
        if self.breaker_failures < 1:
            raise ValueError(f"breaker_failures={self.breaker_failures}: use >= 1")
        for name in ("timeout", "backoff_initial", "backoff_max", "breaker_open"):
            parse_duration(getattr(self, name), name=name)


def ca_context(cacert: str) -> Any:
    """An ``ssl.SSLContext`` trusting the CA certificate(s) of the PEM file ``cacert`` (and no other).

    Raises ``ValueError`` naming the file when it is missing, unreadable or holds no certificate.
    """
    import ssl

    try:
        return ssl.create_default_context(cafile=cacert)
    except ssl.SSLError as exc:  # not PEM, or no certificate in it
        reason = str(exc.reason or exc)
    except OSError as exc:  # missing, unreadable, a directory
        reason = exc.strerror or str(exc)
    raise ValueError(f"cacert {cacert}: cannot load a CA certificate from it ({reason}); give the PEM file of "
                     "the CA that signed the upstream's certificate")


def _network_reason(exc: BaseException) -> str:
    """A failed request's reason: ``tls: ...`` when the TLS handshake failed (the certificate did not
    verify), else ``network: <error type>``."""
    import ssl

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return (f"tls: certificate verify failed ({seen.verify_message}): give the CA that signed it as "
                    "cacert (tidegauge agent --cacert)")
        if isinstance(seen, ssl.SSLError):
            return f"tls: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    return f"network: {type(exc).__name__}"


@dataclass
class _Batch:
    stream: str
    first: int
    last: int
    records: int
    size: int
    replayed: int
    body: bytes
    headers: dict[str, str]


class _Refused(Exception):
    """The upstream answered with an error that retrying later may fix."""


class _NotTaken(_Refused):
    """The upstream takes no records of this stream (404): it waits in the outbox, the others go on."""

    def __init__(self, stream: str, reason: str) -> None:
        super().__init__(reason)
        self.stream = stream


class Uplink:
    """Forward ``outbox`` to ``url`` (the upstream's base URL) as agent ``node_id``.

    Parameters
    ----------
    outbox:
        The agent's outbox.
    url:
        Base URL of the upstream tidegauge server (``http://host:port``).
    node_id, token:
        The agent's id and its bearer token (scope ``ingest``); the token is never logged.
    config:
        Batching, backoff and breaker settings.
    cacert:
        PEM file of the CA that signed an ``https://`` upstream's certificate (default: the system's CAs).
    clock, seed:
        Processing time (for replay marking) and the jitter's random seed.
    """

    client: Any
    """The HTTP client (``httpx.AsyncClient``) on the upstream's base URL; ``None`` for a broker uplink."""

    def __init__(self, outbox: Outbox, url: str, *, node_id: str, token: str | None = None,
                 config: UplinkConfig | None = None, clock: Clock | None = None, seed: int | None = None,
                 cacert: str | None = None) -> None:
        self.outbox = outbox
        self.url = url.rstrip("/")
        self.node_id = node_id
        self.config = config or UplinkConfig()
        self.cacert = cacert
        self.clock: Clock = clock or SystemClock()
        self._rng = random.Random(seed)
        self._open(token)
        self.cursor = {s: outbox.stats(s).acked_seq for s in outbox.streams}
        """per stream: the highest sequence number the upstream acknowledged"""
        self.sent_cursor = dict(self.cursor)
        """per stream: the highest sequence number handed to a request"""
        self._prev_override: dict[str, int] = {}
        self.parked: dict[str, float] = {}
        """per stream the upstream does not take (404): when to offer it again (``time.monotonic()``)"""
        self._weights = {s: p.priority for s, p in outbox.streams.items()}
        self._current = dict.fromkeys(self._weights, 0)
        self._suppressed: set[str] = set()
        self.started_at_us = self.clock.now_us()
        self.link_up_at_us: int | None = None
        self.link: Literal["up", "down", "degraded"] = "degraded"
        self.breaker: BreakerState = "closed"
        self.failures = 0
        self._opened_at = 0.0
        self._stop = asyncio.Event()
        self.wake = asyncio.Event()
        # figures for metrics
        self.sent: dict[str, int] = dict.fromkeys(self._weights, 0)
        self.replayed: dict[str, int] = dict.fromkeys(self._weights, 0)
        self.duplicates: dict[str, int] = dict.fromkeys(self._weights, 0)
        self.batches = 0
        self.errors: dict[str, int] = {}
        self.last_error: str | None = None
        """why the last request failed (``tls: ...``, ``network: ...``, ``http 503: ...``); ``None`` once one
        succeeds again"""
        self.last_rtt_s = 0.0

    def _open(self, token: str | None) -> None:
        """Set up the transport (here HTTP; a subclass may use another)."""
        try:
            import httpx
        except ImportError as exc:
            from tidegauge.errors import MissingDependencyError

            raise MissingDependencyError("httpx", "edge") from exc
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # one client for batches, probes and heartbeats: the CA applies to all of them
        verify = True if self.cacert is None else ca_context(self.cacert)
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, verify=verify,
                                        timeout=parse_duration(self.config.timeout) / 1e6)
        self._httpx_error = httpx.HTTPError

    async def heartbeat(self, body: bytes) -> tuple[int, bytes]:
        """Send a heartbeat (JSON) to the upstream's coordinator: the status and the answer (404: none there)."""
        resp = await self.client.post("/api/v1/edge/heartbeat", content=body,
                                      headers={"Content-Type": "application/json"})
        return resp.status_code, resp.content

    # -- choosing what to send -----------------------------------------------------------------------
    def _next_stream(self) -> str | None:
        """Smooth weighted round-robin over the streams that have something to send."""
        now = time.monotonic()
        ready = [s for s in self._weights if self.parked.get(s, 0.0) <= now
                 and self.outbox.has_visible(s, self.sent_cursor[s])]
        if not ready:
            return None
        total = 0
        for s in ready:
            self._current[s] += self._weights[s]
            total += self._weights[s]
        pick = max(ready, key=lambda s: self._current[s])
        self._current[pick] -= total
        return pick

    def _replay_cutoff(self) -> int:
        """Records written before this time are backlog replay: since the link (last) came up."""
        if self.link == "up" and self.link_up_at_us is not None:
            return self.link_up_at_us
        # not up yet: a success now brings it up now; at the first contact, what predates the start
        return self.started_at_us if self.link_up_at_us is None and not self.errors else self.clock.now_us()

    def _body(self, stream: str, batch: OutboxBatch) -> tuple[bytes, int]:
        """The request body (NDJSON, the edge fields spliced into every record) and how many are replayed."""
        up = self._replay_cutoff()
        node = msgspec.json.encode(self.node_id).decode()
        name = msgspec.json.encode(stream).decode()
        inc = msgspec.json.encode(self.outbox.incarnation).decode()
        live = f'{{"edge_node":{node},"edge_stream":{name},"edge_incarnation":{inc},"edge_replay":false,'.encode()
        replay = f'{{"edge_node":{node},"edge_stream":{name},"edge_incarnation":{inc},"edge_replay":true,'.encode()
        out, n_replay = [], 0
        if stream in self.config.alert_streams:
            rows = batch.rows()
            pages = self._pages(stream, rows, up)
            for (_, at, payload), page in zip(rows, pages, strict=True):
                old = at < up
                n_replay += old
                head = (replay if old else live) + (b'"edge_page":true,' if page else b'"edge_page":false,')
                out.append(head + payload[1:] + b"\n")
            return b"".join(out), n_replay
        for at, n, blob in batch.parts:
            # the records of a part share their append time, so their replay mark
            old = at < up
            n_replay += n if old else 0
            out.append(splice(blob, replay if old else live))
        return b"".join(out), n_replay

    def _pages(self, stream: str, rows: list[tuple[int, int, bytes]], up: int) -> list[bool]:
        """Whether each alert transition should page upstream (see the module docstring)."""
        decoded = [msgspec.json.decode(p) for _, _, p in rows]
        later: list[dict[str, Any]] = []
        if any(at < up for _, at, _ in rows):
            # what follows this batch in the backlog: a resolution there makes a replayed firing stale
            later = [msgspec.json.decode(p) for _, _, p in
                     self.outbox.read(stream, after=rows[-1][0], limit=1_000_000)]
        resolved_after: dict[str, int] = {}
        for i, r in enumerate(decoded + later):
            if r.get("state") == "resolved":
                resolved_after[str(r.get("fingerprint"))] = i
        out = []
        for i, ((_, at, _), r) in enumerate(zip(rows, decoded, strict=True)):
            fp, state = str(r.get("fingerprint")), r.get("state")
            old = at < up
            if state == "firing":
                stale = old and resolved_after.get(fp, -1) > i
                if stale:
                    self._suppressed.add(fp)
                else:
                    self._suppressed.discard(fp)
                out.append(not stale)
            elif state == "resolved":
                out.append(fp not in self._suppressed)
                self._suppressed.discard(fp)
            else:
                out.append(False)
        return out

    # -- sending ---------------------------------------------------------------------------------------
    async def _prepare(self) -> _Batch | None:
        """The next batch to send (its stream's position advanced), or ``None`` if nothing is waiting."""
        stream = self._next_stream()
        if stream is None:
            return None
        prev = self.sent_cursor[stream]
        got = await asyncio.to_thread(self._read, stream, prev)  # one hop to a worker thread per batch
        if got is None:
            return None
        batch, body, n_replay = got
        first, last = batch.first, batch.last
        headers = {
            "Content-Type": "application/x-ndjson",
            "Idempotency-Key": wire.idempotency_key(self.node_id, stream, first, last, self.outbox.incarnation),
            wire.NODE: self.node_id, wire.STREAM: stream, wire.FIRST: str(first), wire.LAST: str(last),
            wire.PREV: str(self._prev_override.pop(stream, prev)), wire.REPLAY: "1" if n_replay else "0",
        }
        if self.outbox.incarnation:
            headers[wire.INCARNATION] = self.outbox.incarnation
        self.sent_cursor[stream] = last
        return _Batch(stream, first, last, batch.records, batch.size, n_replay, body, headers)

    def _read(self, stream: str, prev: int) -> tuple[OutboxBatch, bytes, int] | None:
        cfg = self.config
        batch = self.outbox.read_batch(stream, after=prev, limit=cfg.batch_records, max_bytes=cfg.batch_bytes,
                                       sending=True)
        if batch is None:
            return None
        return batch, *self._body(stream, batch)

    async def _post(self, b: _Batch) -> None:
        t0 = time.perf_counter()
        try:
            resp = await self.client.post(wire.PATH, content=b.body, headers=b.headers)
        except self._httpx_error as exc:
            # it may have arrived (the answer was lost): the outbox keeps sparing it, the upstream
            # de-duplicates the resend
            raise _Refused(_network_reason(exc)) from exc
        self.last_rtt_s = time.perf_counter() - t0
        if resp.status_code == 404 and not resp.headers.get("content-type", "").startswith("application/json"):
            raise _Refused(f"http 404: {resp.text[:200]}")  # not the receiver's answer (a proxy, a wrong URL)
        await self._settle(b, resp.status_code, resp.content)

    async def _settle(self, b: _Batch, status: int, content: bytes) -> None:
        """Act on the upstream's answer to ``b`` (the receiver's status and JSON body, whatever carried them):
        200 acknowledges in the outbox, 409 rewinds, 404 parks the stream, anything else is a failure."""
        if status == 409:
            have = int(msgspec.json.decode(content).get("acked", 0))
            if have < self.cursor[b.stream]:
                # the upstream lost what it had acknowledged (its state was reset): say so, send from here
                logger.error("upstream has %s/%s only up to %d, it had acknowledged %d: those records are lost",
                             self.node_id, b.stream, have, self.cursor[b.stream])
                self._prev_override[b.stream] = have
            raise _Refused(f"conflict: {content[:200].decode(errors='replace')}")
        if status == 404:
            raise _NotTaken(b.stream, str(msgspec.json.decode(content).get("error", "404")))
        if status != 200:
            raise _Refused(f"http {status}: {content[:200].decode(errors='replace')}")
        ack = msgspec.json.decode(content, type=wire.BatchAck)
        self.cursor[b.stream] = max(self.cursor[b.stream], ack.acked)
        sent = (b.first, b.records, b.size) if ack.acked == b.last else None
        await asyncio.to_thread(self.outbox.ack, b.stream, ack.acked, sent=sent)
        self.batches += 1
        self.sent[b.stream] += ack.accepted
        self.duplicates[b.stream] += ack.duplicates
        self.replayed[b.stream] += min(b.replayed, ack.accepted)

    async def send_one(self) -> bool:
        """Send the next batch if there is one and wait for its answer (raises on failure)."""
        b = await self._prepare()
        if b is None:
            return False
        try:
            await self._post(b)
        except _Refused:
            self._rewind()
            raise
        return True

    def _rewind(self) -> None:
        """After a failure: everything not acknowledged is sent again (the upstream drops what it has)."""
        for stream in self.sent_cursor:
            self.sent_cursor[stream] = self.cursor[stream]

    def _link_ok(self) -> None:
        if self.link != "up":
            self.link_up_at_us = self._replay_cutoff()
            logger.info("uplink to %s is up", self.url)
        self.link, self.breaker, self.failures = "up", "closed", 0
        self.last_error = None

    def _link_failed(self, reason: str) -> float:
        """Record a failure; returns how long to wait before the next attempt (seconds)."""
        self.failures += 1
        if reason.startswith("tls:") and reason != self.last_error:
            # retrying does not fix a certificate: say so at once, not only when the circuit opens
            logger.warning("uplink to %s: %s", self.url, reason)
        self.last_error = reason
        key = reason.split(":")[0]
        self.errors[key] = self.errors.get(key, 0) + 1
        cfg = self.config
        if self.breaker == "half_open" or self.failures >= cfg.breaker_failures:
            # once per outage: the probes that keep failing while it is down are not news
            log = logger.warning if self.link != "down" else logger.debug
            log("uplink to %s: circuit open after %d failures (%s)", self.url, self.failures, reason)
            self.breaker, self.link = "open", "down"
            self._opened_at = time.monotonic()
            return parse_duration(cfg.breaker_open) / 1e6
        self.link = "degraded"
        cap = min(parse_duration(cfg.backoff_max), parse_duration(cfg.backoff_initial) * 2 ** (self.failures - 1))
        return self._rng.uniform(0, cap / 1e6)  # full jitter: agents reconnecting together spread out

    async def run(self) -> None:
        """Send until :meth:`stop`; failures back off and trip the breaker, never raise.

        Up to ``window`` batches are in flight while the link is up (one while probing it); the upstream
        applies batches of a stream in order (``x-edge-prev-seq``), so order holds across connections.
        """
        inflight: list[asyncio.Task[None]] = []
        while not self._stop.is_set():
            if self.breaker == "open":
                self.breaker = "half_open"  # one probe
            window = self.config.window if self.link == "up" else 1
            try:
                while len(inflight) < window:
                    b = await self._prepare()
                    if b is None:
                        break
                    inflight.append(asyncio.create_task(self._post(b)))
                    if b.stream in self.config.alert_streams:
                        break  # alert transitions go one batch at a time (their paging marks are stateful)
            except Exception as exc:
                logger.exception("uplink: unexpected error")
                await self._sleep(self._link_failed(f"error: {exc}"))
                continue
            if not inflight:
                if self.link != "up":
                    await self._probe()
                self.wake.clear()
                await self._sleep(0.05, wake=True)
                continue
            task = inflight.pop(0)
            try:
                await task
                self._link_ok()
                continue
            except _NotTaken as exc:
                # the link works; this stream waits in the outbox (its limits apply) and is offered again later
                if exc.stream not in self.parked:
                    logger.warning("uplink: %s does not take stream %r (%s); it waits in the outbox, offered "
                                   "again every %.0f s", self.url, exc.stream, exc, _PARK_S)
                self.parked[exc.stream] = time.monotonic() + _PARK_S
                self.errors["not_taken"] = self.errors.get("not_taken", 0) + 1
                self.sent_cursor[exc.stream] = self.cursor[exc.stream]
                continue
            except _Refused as exc:
                reason = str(exc)
            except Exception as exc:
                logger.exception("uplink: unexpected error")
                reason = f"error: {exc}"
            # let the others finish (their acknowledgements count), then send again from what is acknowledged
            for t in inflight:
                with contextlib.suppress(Exception):
                    await t
            inflight.clear()
            self._rewind()
            await self._sleep(self._link_failed(reason))
        for t in inflight:
            with contextlib.suppress(Exception):
                await t

    async def _probe(self) -> None:
        """With nothing to send, check the link so ``link`` is truthful (heartbeats also report it)."""
        try:
            resp = await self.client.get("/healthz")
        except self._httpx_error as exc:
            await self._sleep(self._link_failed(_network_reason(exc)))
            return
        if resp.status_code == 200:
            self._link_ok()
        else:
            await self._sleep(self._link_failed(f"http {resp.status_code}"))

    async def _sleep(self, seconds: float, *, wake: bool = False) -> None:
        waits = [asyncio.ensure_future(self._stop.wait())]
        if wake:
            waits.append(asyncio.ensure_future(self.wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def drain(self, timeout_s: float) -> bool:
        """Send until nothing visible is left (or ``timeout_s``); whether the outbox was emptied."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not any(self.outbox.has_visible(s, self.cursor[s]) for s in self._weights):
                return True
            await asyncio.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        await self.client.aclose()

    def figures(self) -> Mapping[str, Any]:
        return {"link": self.link, "breaker": self.breaker, "failures": self.failures, "batches": self.batches,
                "sent": dict(self.sent), "replayed": dict(self.replayed), "errors": dict(self.errors),
                "not_taken": sorted(self.parked)}

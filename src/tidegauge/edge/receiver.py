"""The upstream end of the uplink: ``POST /api/v1/edge/batches`` (scope ``ingest``; a token configured with
``nodes`` may only send the batches of those node ids, 403 otherwise).

Each batch (see :mod:`tidegauge.edge.wire`) is de-duplicated by ``(agent, incarnation, stream, sequence)``:
the receiver keeps, per agent, outbox incarnation and stream, the highest sequence number it has (the records
are contiguous, so that one number is the whole de-duplication state). An agent whose outbox was lost starts
a new incarnation at sequence 1, which is new data, not a replay; an incarnation not heard from for
``incarnation_ttl_s`` (7 days) is forgotten when the receiver opens. New records are appended to the intake
log of the stream's :class:`~tidegauge.connectors.http.HttpIngestSource` (durable before the answer), so the
upstream flow reads them with that source's exactly-once guarantee; then the number is stored in SQLite and
acknowledged.

Surviving a restart: the records carry ``edge_node``/``edge_incarnation``/``edge_stream``/``edge_seq``, so
when the receiver opens it also scans the intake logs and takes the highest sequence found there: a crash
between the log append and the SQLite update does not forget what was appended.

Alerts: for the streams named in ``alert_streams`` the receiver hands every ``firing``/``resolved``
transition to ``alerts`` (the upstream :class:`~tidegauge.alerting.AlertManager`, as ``tidegauge serve
--edge-db`` does for a pipeline with an ``alerts:`` section): those that should page (``edge_page`` true)
go through its routes, silences, inhibition and receivers with their original times; the others (a
replayed alert that resolved while the link was down) are recorded in its alert state only, labelled
``edge_node``. ``pager`` (e.g. :class:`NotifierPager`) is the simpler hook: it gets the transitions to page.
Every record also goes into the flow, like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np
import polars as pl
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tidegauge.alerting.lifecycle import RemoteTransition
from tidegauge.alerting.notifiers import Notifier
from tidegauge.connectors.http import ACCEPTED, READING_SCHEMA, FieldType, HttpIngestSource
from tidegauge.edge import wire
from tidegauge.server.ingest import error, json_response

if TYPE_CHECKING:
    from tidegauge.alerting.manager import AlertManager

__all__ = ["DEFAULT_SCHEMAS", "EDGE_FIELDS", "EdgeReceiver", "NotifierPager", "edge_sources", "receiver_for_flow",
           "remote_transition"]

logger = logging.getLogger(__name__)

Pager = Callable[[str, Sequence[Mapping[str, Any]]], None]
"""``pager(node_id, transitions)``: notify for these alert transitions (dicts of the alert stream's columns)."""


class EdgeReceiver:
    """De-duplicating intake of agent batches into the upstream flow.

    Parameters
    ----------
    sources:
        Stream name -> the :class:`HttpIngestSource` of the upstream flow that takes that stream's records
        (its schema should list ``edge_node``, ``edge_stream``, ``edge_seq``, ``edge_replay`` to keep them).
        The key ``"*"`` takes any other stream.
    db:
        SQLite file of the per-agent, per-stream acknowledged sequence numbers.
    alert_streams:
        Streams whose records are alert transitions (``fingerprint``, ``state``, ``at``, ...).
    pager:
        Called with the transitions to notify for (see :class:`NotifierPager`).
    alerts:
        The upstream alert manager: every transition is recorded there, those to page are notified through
        its routes and receivers (see the module docstring).
    max_body_bytes:
        Largest batch accepted (413 above).
    order_timeout_s:
        How long a batch waits for its predecessor (sent on another connection) before a 409.
    """

    def __init__(self, sources: Mapping[str, HttpIngestSource], db: str | Path, *,
                 alert_streams: Sequence[str] = ("alerts",), pager: Pager | None = None,
                 alerts: AlertManager | None = None, max_body_bytes: int = 32 * 1024 * 1024,
                 order_timeout_s: float = 5.0, incarnation_ttl_s: float = 7 * 86400) -> None:
        if not sources:
            raise ValueError("EdgeReceiver needs at least one source (stream name -> HttpIngestSource)")
        self.sources = dict(sources)
        self.alert_streams = frozenset(alert_streams)
        self.pager = pager
        self.alerts = alerts
        self.max_body_bytes = max_body_bytes
        self.path = Path(db)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a power loss may lose the last updates, which the scan of the intake logs at open restores
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.sequences = self._open_sequences(incarnation_ttl_s)
        """(agent, incarnation, stream) -> the highest sequence number stored"""
        self.acked: dict[tuple[str, str], int] = {}
        """(agent, stream) -> the highest sequence number of the agent's latest incarnation (for metrics)"""
        for (node, _, stream), seq in self.sequences.items():  # in order of last contact
            self.acked[(node, stream)] = seq
        self._conds: dict[tuple[str, str, str], asyncio.Condition] = {}
        self.order_timeout_s = order_timeout_s
        self.counts: dict[str, dict[tuple[str, str], int]] = {
            k: {} for k in ("batches", "records", "replayed", "duplicates", "dropped_at_edge", "paged",
                            "recorded_only")}
        self.last_batch_at: dict[str, float] = {}
        self._recover_from_logs()

    def _open_sequences(self, ttl_s: float) -> dict[tuple[str, str, str], int]:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS edge_sequences (node TEXT NOT NULL, incarnation TEXT NOT NULL, "
                   "stream TEXT NOT NULL, acked INTEGER NOT NULL, seen REAL NOT NULL, "
                   "PRIMARY KEY (node, incarnation, stream))")
        legacy = db.execute("SELECT name FROM sqlite_master WHERE name = 'edge_acks'").fetchone()
        if legacy:  # a receiver made before incarnations: its numbers are the legacy ("") incarnation's
            db.execute("INSERT OR IGNORE INTO edge_sequences SELECT node, '', stream, acked, ? FROM edge_acks",
                       (time.time(),))
            db.execute("DROP TABLE edge_acks")
        # forget old incarnations, but never an agent's latest one
        db.execute("DELETE FROM edge_sequences AS e WHERE seen < ? AND seen < (SELECT max(seen) FROM "
                   "edge_sequences AS l WHERE l.node = e.node AND l.stream = e.stream)", (time.time() - ttl_s,))
        return {(n, i, s): a for n, i, s, a in
                db.execute("SELECT node, incarnation, stream, acked FROM edge_sequences ORDER BY seen")}

    def _recover_from_logs(self) -> None:
        seen = set()
        for src in self.sources.values():
            if id(src) in seen:
                continue
            seen.add(id(src))
            log = src.open_log()
            offset = log.start
            while offset < log.durable:
                # a chunk at a time (the log may hold a long replay not checkpointed yet)
                frames, offset = log.read(offset, 200_000)
                parts = [p if p.endswith(b"\n") else p + b"\n" for k, p in frames if k == ACCEPTED]
                if not frames:
                    break
                if parts:
                    self._advance_from(b"".join(parts))

    def _advance_from(self, ndjson: bytes) -> None:
        df = pl.read_ndjson(io.BytesIO(ndjson), schema={"edge_node": pl.String, "edge_incarnation": pl.String,
                                                        "edge_stream": pl.String, "edge_seq": pl.Int64})
        top = (df.with_columns(pl.col("edge_incarnation").fill_null("")).drop_nulls()
               .group_by("edge_node", "edge_incarnation", "edge_stream").agg(pl.col("edge_seq").max()))
        for node, incarnation, stream, seq in top.iter_rows():
            if seq > self.sequences.get((node, incarnation, stream), 0):
                logger.info("edge receiver: %s/%s has records up to %d in the intake log", node, stream, seq)
                self._store(node, incarnation, stream, seq)

    def _store(self, node: str, incarnation: str, stream: str, seq: int) -> None:
        self._db.execute("INSERT INTO edge_sequences VALUES (?, ?, ?, ?, ?) ON CONFLICT (node, incarnation, stream) "
                         "DO UPDATE SET acked = excluded.acked, seen = excluded.seen",
                         (node, incarnation, stream, seq, time.time()))
        self.sequences[(node, incarnation, stream)] = seq
        self.acked[(node, stream)] = seq

    def _count(self, what: str, node: str, stream: str, n: int) -> None:
        if n:
            d = self.counts[what]
            d[(node, stream)] = d.get((node, stream), 0) + n

    def routes(self) -> list[BaseRoute]:
        """The Starlette routes to mount in the upstream app (``build_app(..., edge_receiver=...)``)."""
        return [Route(wire.PATH, self.handle, methods=["POST"])]

    def collector(self) -> Collector:
        return _ReceiverCollector(self)

    async def handle(self, request: Request) -> Response:
        state = request.app.state.tg
        who = state.authorize(request.headers.get("authorization"), "ingest")
        if isinstance(who, Response):
            return who
        h = request.headers
        try:
            node, stream = h[wire.NODE], h[wire.STREAM]
            first, last = int(h[wire.FIRST]), int(h[wire.LAST])
            prev = int(h.get(wire.PREV, first - 1))
        except (KeyError, ValueError):
            return error(400, f"an edge batch needs the headers {wire.NODE}, {wire.STREAM}, {wire.FIRST}, "
                              f"{wire.LAST} (integers for the sequence numbers)")
        incarnation = h.get(wire.INCARNATION, "")
        refusal = who.edge_refusal(node)  # a token bound to other nodes (or to sensors) may not act as this one
        if refusal is not None:
            return error(403, refusal)
        refused = self.check(node, stream, first, last, prev, incarnation)
        if refused is not None:  # before reading the body
            return _response(*refused)
        status, answer = await self.accept(node, stream, first, last, prev, await request.body(),
                                           replay=h.get(wire.REPLAY) == "1", incarnation=incarnation)
        return _response(status, answer)

    def check(self, node: str, stream: str, first: int, last: int, prev: int,
              incarnation: str = "") -> tuple[int, dict[str, Any]] | None:
        """Why a batch with these headers is refused (``(status, {"error": ...})``), or ``None``."""
        if not node or not stream or first < 1 or last < first or not 0 <= prev < first:
            return 400, {"error": f"bad batch {wire.idempotency_key(node, stream, first, last)}: sequence numbers "
                                  f"start at 1, last >= first and 0 <= {wire.PREV} < first"}
        if len(incarnation) > 64 or not incarnation.isascii() or not incarnation.isprintable():
            return 400, {"error": f"{wire.INCARNATION} must be at most 64 printable ASCII characters"}
        source = self.sources.get(stream, self.sources.get("*"))
        if source is None:
            return 404, {"error": f"no upstream source takes edge stream {stream!r}; configure one"}
        if source.saturated():
            return 503, {"error": source.refusal()}
        return None

    async def accept(self, node: str, stream: str, first: int, last: int, prev: int, body: bytes, *,
                     replay: bool, order_timeout_s: float | None = None,
                     incarnation: str = "") -> tuple[int, dict[str, Any]]:
        """De-duplicate one batch and append its new records to the stream's intake log (durable on return).

        The HTTP handler and the JetStream intake (:mod:`tidegauge.edge.jetstream`) both call this. Returns
        the status and answer: ``200 {"acked", "accepted", "duplicates"}``, ``409 {"error", "acked"}`` when
        the records before ``first`` have not arrived within ``order_timeout_s`` (default: the receiver's),
        or ``400``/``404``/``413``/``503 {"error"}``.
        """
        refused = self.check(node, stream, first, last, prev, incarnation)
        source = self.sources.get(stream, self.sources.get("*"))
        if refused is not None or source is None:
            return refused or (404, {"error": f"no upstream source takes edge stream {stream!r}"})
        if len(body) > self.max_body_bytes:
            return 413, {"error": f"batch of {len(body)} bytes is over the limit of {self.max_body_bytes}"}
        # counted, not split: the body goes to the intake log as it is (a list of lines costs ~10% of the CPU)
        n = int(np.count_nonzero(np.frombuffer(body, np.uint8) == 10))  # 10: b"\n"; 1.6x bytes.count
        n += 1 if body and not body.endswith(b"\n") else 0
        if n != last - first + 1:
            return 400, {"error": f"batch {first}-{last} must have {last - first + 1} records, it has {n}"}
        key = (node, incarnation, stream)
        cond = self._conds.setdefault(key, asyncio.Condition())
        async with cond:
            if self.sequences.get(key, 0) < prev:
                # its predecessor is still on its way (another connection): apply them in order
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait_for(lambda: self.sequences.get(key, 0) >= prev),
                                           self.order_timeout_s if order_timeout_s is None else order_timeout_s)
            have = self.sequences.get(key, 0)
            if have < prev:
                return 409, {"error": f"records {have + 1}-{prev} of {node}/{stream} have not arrived; "
                                      f"send from {have + 1}", "acked": have}
            if last <= have:
                self._count("duplicates", node, stream, n)
                return 200, {"acked": have, "accepted": 0, "duplicates": n}
            skip = max(0, have - first + 1)
            accepted = n - skip
            gap = max(0, first - have - 1)  # <= first - 1 - prev: numbers the agent says it dropped
            if gap:
                logger.info("edge %s/%s: records %d-%d were dropped at the edge", node, stream, have + 1, first - 1)
                self._count("dropped_at_edge", node, stream, gap)
            data = body if not skip else body.split(b"\n", skip)[skip]  # what follows the first `skip` lines
            data = data if data.endswith(b"\n") else data + b"\n"
            await source.open_log().append(data, accepted, [])
            self._store(node, incarnation, stream, last)
            self._count("batches", node, stream, 1)
            self._count("records", node, stream, accepted)
            self._count("duplicates", node, stream, skip)
            if replay:
                self._count("replayed", node, stream, accepted)
            self.last_batch_at[node] = time.time()
            cond.notify_all()
        if stream in self.alert_streams:
            self._page(node, stream, data.splitlines())
        return 200, {"acked": last, "accepted": accepted, "duplicates": skip}

    def _page(self, node: str, stream: str, lines: list[bytes]) -> None:
        records = [msgspec.json.decode(line) for line in lines]
        pages = [r for r in records if r.get("edge_page") is True]
        self._count("paged", node, stream, len(pages))
        self._count("recorded_only", node, stream, len(records) - len(pages))
        if pages and self.pager is not None:
            try:
                self.pager(node, pages)
            except Exception:  # a failing pager must not fail the batch: the records are stored already
                logger.exception("edge %s: paging %d alert transitions failed", node, len(pages))
        if self.alerts is not None:
            try:
                self.alerts.receive([remote_transition(r) for r in records], labels={"edge_node": node})
            except Exception:  # as above: the records are stored; the alert state misses these transitions
                logger.exception("edge %s: recording %d alert transitions failed", node, len(records))

    def close(self) -> None:
        self._db.close()


def remote_transition(record: Mapping[str, Any]) -> RemoteTransition:
    """An edge alert record (``at``, ``rule``, ``severity``, ``state``, ``labels`` JSON, ``edge_page``) for
    :meth:`~tidegauge.alerting.AlertManager.receive`."""
    raw = record.get("labels") or "{}"
    try:
        labels = msgspec.json.decode(raw) if isinstance(raw, str | bytes) else dict(raw)
    except msgspec.DecodeError:
        labels = {"labels": str(raw)}
    at = record.get("at")
    if isinstance(at, str):
        at_us = int(datetime.fromisoformat(at).timestamp() * 1_000_000)
    else:
        at_us = int(at) if at is not None else int(time.time() * 1_000_000)
    return RemoteTransition(rule=str(record.get("rule", "")), severity=str(record.get("severity", "")),
                            state=str(record.get("state", "")), labels={str(k): str(v) for k, v in labels.items()},
                            at_us=at_us, notify=record.get("edge_page") is True)


class NotifierPager:
    """A pager sending each transition to notifiers as an Alertmanager (v4) webhook payload.

    Delivery happens in a background thread so a slow receiver never holds an agent's batch.
    """

    def __init__(self, notifiers: Sequence[Notifier], *, external_url: str = "") -> None:
        self.notifiers = list(notifiers)
        self.external_url = external_url

    def __call__(self, node: str, transitions: Sequence[Mapping[str, Any]]) -> None:
        alerts = []
        for t in transitions:
            try:
                labels = msgspec.json.decode(t.get("labels") or "{}")
            except msgspec.DecodeError:
                labels = {"labels": str(t.get("labels"))}
            firing = t.get("state") != "resolved"
            alerts.append({
                "status": "firing" if firing else "resolved",
                "labels": {**labels, "alertname": str(t.get("rule", "")), "edge_node": node,
                           "severity": str(t.get("severity", ""))},
                "annotations": {},
                "startsAt": str(t.get("at")) if firing else "",
                "endsAt": "" if firing else str(t.get("at")),
                "fingerprint": str(t.get("fingerprint", "")),
            })
        for notifier in self.notifiers:
            items = [a for a in alerts if a["status"] == "firing" or notifier.send_resolved]
            if not items:
                continue
            payload = {"version": "4", "groupKey": f"edge:{node}", "truncatedAlerts": 0,
                       "status": "firing" if any(a["status"] == "firing" for a in items) else "resolved",
                       "receiver": notifier.name, "groupLabels": {"edge_node": node}, "commonLabels": {},
                       "commonAnnotations": {}, "externalURL": self.external_url, "alerts": items}
            asyncio.get_running_loop().run_in_executor(None, notifier.send, payload)


class _ReceiverCollector(Collector):
    def __init__(self, receiver: EdgeReceiver) -> None:
        self.r = receiver

    def collect(self) -> Any:
        helps = {
            "batches": "Edge batches accepted", "records": "Edge records accepted (new)",
            "replayed": "Edge records accepted from backlog replay", "duplicates": "Edge records already had",
            "dropped_at_edge": "Edge records the agent's outbox dropped (gaps in the sequence)",
            "paged": "Edge alert transitions notified", "recorded_only": "Edge alert transitions recorded, not paged",
        }
        for what, text in helps.items():
            c = CounterMetricFamily(f"tidegauge_edge_{what}", text, labels=["node", "stream"])
            for (node, stream), n in self.r.counts[what].items():
                c.add_metric([node, stream], n)
            yield c
        g = GaugeMetricFamily("tidegauge_edge_acked_seq", "Highest sequence number received per agent and stream",
                              labels=["node", "stream"])
        for (node, stream), n in self.r.acked.items():
            g.add_metric([node, stream], n)
        yield g


def _response(status: int, answer: dict[str, Any]) -> Response:
    if status in (200, 409):
        return json_response(answer, status)
    return error(status, str(answer["error"]), retry_after=1 if status == 503 else None)


EDGE_FIELDS: dict[str, FieldType] = {"edge_node": "str", "edge_stream": "str", "edge_seq": "int",
                                     "edge_replay": "bool"}
"""The fields every forwarded record carries (see :mod:`tidegauge.edge.wire`)."""

_AGG: dict[str, FieldType] = {
    f"{f}_{a}": ("int" if a == "count" else "float")
    for f in ("temperature", "vibration", "power_consumption") for a in ("count", "mean", "min", "max")
}
DEFAULT_SCHEMAS: dict[str, tuple[dict[str, FieldType], str, str]] = {
    "readings": (dict(READING_SCHEMA), "sensor_id", "timestamp"),
    "anomalies": ({**READING_SCHEMA, "score": "float", "is_anomaly": "bool", "detector": "str"},
                  "sensor_id", "timestamp"),
    "windows": ({"sensor_id": "str", "window_start": "timestamp", "window_end": "timestamp", **_AGG,
                 "score_max": "float"}, "sensor_id", "window_end"),
    "alerts": ({"at": "timestamp", "fingerprint": "str", "rule": "str", "severity": "str", "state": "str",
                "labels": "str", "edge_page": "bool"}, "fingerprint", "at"),
}
"""Schema, key and time field of the streams of the agent's default pipeline."""


def edge_sources(log_dir: str | Path, streams: Sequence[str] = tuple(DEFAULT_SCHEMAS), *,
                 durability: Literal["fsync", "os"] = "fsync") -> dict[str, HttpIngestSource]:
    """One :class:`HttpIngestSource` per stream of the agent's default pipeline (``log_dir/<stream>``).

    Add them to the upstream flow with one watermark per agent (``flow.source(src, key=src.key,
    time=src.time, partition_by="edge_node")``: an agent's replayed backlog is then on time, see
    :mod:`tidegauge.dataflow.partitions`) and pass the mapping to :class:`EdgeReceiver`.
    """
    out = {}
    for s in streams:
        if s not in DEFAULT_SCHEMAS:
            raise ValueError(f"no default schema for edge stream {s!r}; build its HttpIngestSource yourself")
        schema, key, time_field = DEFAULT_SCHEMAS[s]
        out[s] = HttpIngestSource(Path(log_dir) / s, schema={**schema, **EDGE_FIELDS}, key=key, time=time_field,
                                  durability=durability, name=f"edge_{s}")
    return out


def receiver_for_flow(flow: Any, db: str | Path, **options: Any) -> EdgeReceiver:
    """An :class:`EdgeReceiver` over a flow's HTTP sources: stream ``X`` -> the source named ``edge_X``;
    without an ``edge_readings`` source, the agents' raw ``readings`` -> the first HTTP source (``tidegauge
    serve --edge-db``). Other streams (windows, anomalies, alerts: other columns, or readings again) need
    their ``edge_<stream>`` source: without one the receiver answers 404 and the agent keeps them in its
    outbox, sending its other streams.

    Each of those sources whose schema has ``edge_node`` gets one watermark per agent
    (``partition_by="edge_node"``, unless it has a ``partition_by`` already), so the backlog an agent
    replays after an outage is judged by its own event time, not the other agents'
    (:mod:`tidegauge.dataflow.partitions`). Call it before the flow runs.
    """
    nodes = [n for n in flow.nodes.values() if n.kind == "source" and isinstance(n.definition, HttpIngestSource)]
    http = [n.definition for n in nodes]
    if not http:
        from tidegauge.errors import ConfigError

        raise ConfigError("edge batches need an http source in the pipeline (source: {http: {...}})")
    sources = {str(s.name)[len("edge_"):]: s for s in http if str(s.name).startswith("edge_")}
    sources.setdefault("readings", http[0])
    untaken = [s for s in ("windows", "anomalies", "alerts") if s not in sources]
    if untaken:
        logger.info("edge streams %s have no edge_<stream> http source here: agents keep them (404)",
                    ", ".join(untaken))
    fed = {id(s) for s in sources.values()}
    for n in nodes:
        if id(n.definition) in fed and n.partition_by is None and "edge_node" in n.definition.schema:
            n.partition_by = "edge_node"
            logger.info("source %s: one watermark per edge_node (agents' replayed backlog is on time)", n.id)
    return EdgeReceiver(sources, db, **options)

"""Alert endpoints and alerting metrics, served when :func:`~tidegauge.server.app.build_app` gets an
:class:`~tidegauge.alerting.AlertManager` (the same one the flow's :class:`~tidegauge.alerting.AlertStep`
uses, so an acknowledgement or a silence made here takes effect in the flow at once and is persisted in the
alert store the CLI reads).

============================================  ======  =========================================================
``GET /api/v1/alerts``                        read    current alerts; ``state``, ``severity`` and repeated
                                                    ``label=k=v`` filters
``POST /api/v1/alerts/{fingerprint}/ack``     admin   acknowledge (``{"comment": "..."}``, optional); the
                                                    acknowledger is the token's name
``POST /api/v1/alerts/{fingerprint}/unack``   admin   withdraw the acknowledgement
``GET /api/v1/silences``                      read    silences (``state=active|pending|expired`` filter)
``POST /api/v1/silences``                     admin   ``{"matchers": ["k=v", ...], "duration": "2h" | "ends_at":
                                                    "<ISO 8601>", "comment": "..."}``; 201 with the silence
``DELETE /api/v1/silences/{id}``              admin   expire the silence now
============================================  ======  =========================================================

Writes need the ``admin`` scope: acknowledging or silencing changes who gets paged, which is an operator's
decision, and a separate ``alerts`` scope would need a new token scope in the server config (a token with
``[read, admin]`` is the on-call token). Reads need ``read``.

:class:`AlertCollector` exports :meth:`AlertManager.metrics` at scrape time through ``/metrics``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tidegauge.alerting.lifecycle import iso
from tidegauge.alerting.routing import Silence
from tidegauge.server.auth import Principal
from tidegauge.server.ingest import error, json_response

if TYPE_CHECKING:
    from tidegauge.alerting.manager import AlertManager
    from tidegauge.server.app import ServerState

__all__ = ["WRITE_SCOPE", "AlertCollector", "alert_routes"]

logger = logging.getLogger(__name__)

WRITE_SCOPE = "admin"
"""The scope acknowledging and silencing need (see the module docstring for why)."""

_STATES = ("pending", "firing", "resolved")
_SILENCE_STATES = ("pending", "active", "expired")
_MAX_BODY = 64 << 10  # an ack or a silence is a few hundred bytes; refuse anything that is clearly not one

class _BadRequest(ValueError):
    pass


def alert_routes(manager: AlertManager) -> list[BaseRoute]:
    """The alert and silence routes, bound to ``manager``."""
    api = _AlertApi(manager)
    return [
        Route("/api/v1/alerts", api.list_alerts, methods=["GET"]),
        Route("/api/v1/alerts/{fingerprint}/ack", api.ack, methods=["POST"]),
        Route("/api/v1/alerts/{fingerprint}/unack", api.unack, methods=["POST"]),
        Route("/api/v1/silences", api.list_silences, methods=["GET"]),
        Route("/api/v1/silences", api.add_silence, methods=["POST"]),
        Route("/api/v1/silences/{silence_id}", api.expire_silence, methods=["DELETE"]),
    ]


def _silence(s: Silence, now_us: int) -> dict[str, Any]:
    return {"id": s.id, "matchers": [str(m) for m in s.matchers], "state": s.state(now_us),
            "starts_at": iso(s.starts_at), "ends_at": iso(s.ends_at), "created_by": s.created_by,
            "comment": s.comment, "created_at": iso(s.created_at)}


class _AlertApi:
    """The handlers. They call the manager directly: its methods are short, lock-protected and only touch
    the alert store, and on the event loop they never interleave with the flow's own evaluation."""

    def __init__(self, manager: AlertManager) -> None:
        self.manager = manager

    @staticmethod
    def _who(request: Request, scope: str) -> Principal | Response:
        state: ServerState = request.app.state.tg
        return state.authorize(request.headers.get("authorization"), scope)

    async def list_alerts(self, request: Request) -> Response:
        who = self._who(request, "read")
        if isinstance(who, Response):
            return who
        q = request.query_params
        state, severity = q.get("state"), q.get("severity")
        if state is not None and state not in _STATES:
            return error(400, f"state={state!r}: use one of {', '.join(_STATES)}")
        labels: dict[str, str] = {}
        for pair in q.getlist("label"):
            k, eq, v = pair.partition("=")
            if not eq or not k:
                return error(400, f"label={pair!r}: use label=<name>=<value>, e.g. label=sensor_id=S1")
            labels[k] = v
        alerts = self.manager.list_alerts(state=state, severity=severity, labels=labels)
        muted = self.manager.muted()
        rows = [{**a.to_dict(), "muted_by": muted.get(a.fingerprint)} for a in alerts]
        return json_response({"alerts": rows})

    async def ack(self, request: Request) -> Response:
        who = self._who(request, WRITE_SCOPE)
        if isinstance(who, Response):
            return who
        try:
            body = await _body(request)
            comment = _text(body, "comment")
            alert = self.manager.acknowledge(request.path_params["fingerprint"], by=who.name, comment=comment)
        except _BadRequest as exc:
            return error(400, str(exc))
        except KeyError as exc:
            return error(404, str(exc.args[0]))
        logger.info("alert %s acknowledged by %s", alert.fingerprint, who.name)
        return json_response(alert.to_dict())

    async def unack(self, request: Request) -> Response:
        who = self._who(request, WRITE_SCOPE)
        if isinstance(who, Response):
            return who
        try:
            alert = self.manager.unacknowledge(request.path_params["fingerprint"])
        except KeyError as exc:
            return error(404, str(exc.args[0]))
        logger.info("alert %s unacknowledged by %s", alert.fingerprint, who.name)
        return json_response(alert.to_dict())

    async def list_silences(self, request: Request) -> Response:
        who = self._who(request, "read")
        if isinstance(who, Response):
            return who
        wanted = request.query_params.get("state")
        if wanted is not None and wanted not in _SILENCE_STATES:
            return error(400, f"state={wanted!r}: use one of {', '.join(_SILENCE_STATES)}")
        now = self.manager.clock.now_us()
        rows = [_silence(s, now) for s in self.manager.silences() if wanted is None or s.state(now) == wanted]
        return json_response({"silences": rows})

    async def add_silence(self, request: Request) -> Response:
        who = self._who(request, WRITE_SCOPE)
        if isinstance(who, Response):
            return who
        try:
            body = await _body(request)
            matchers = body.get("matchers")
            if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
                raise _BadRequest('matchers: give a list of strings, e.g. ["sensor_id=S1", "severity=~warn.*"]')
            duration, ends_at = body.get("duration"), _time(body.get("ends_at"))
            if duration is not None and not isinstance(duration, str):
                raise _BadRequest(f"duration={duration!r}: a string such as '2h' or '30m'")
            if (duration is None) == (ends_at is None):
                raise _BadRequest("give exactly one of duration (e.g. '2h') or ends_at (ISO 8601 with a zone)")
            s = self.manager.add_silence(matchers, duration=duration, ends_at=ends_at, created_by=who.name,
                                         comment=_text(body, "comment"))
        except (_BadRequest, ValueError, TypeError) as exc:
            return error(400, str(exc))
        logger.info("silence %s added by %s: %s", s.id, who.name, " ".join(str(m) for m in s.matchers))
        return json_response(_silence(s, self.manager.clock.now_us()), 201)

    async def expire_silence(self, request: Request) -> Response:
        who = self._who(request, WRITE_SCOPE)
        if isinstance(who, Response):
            return who
        sid = request.path_params["silence_id"]
        if not self.manager.expire_silence(sid):
            return error(404, f"no active or pending silence {sid!r}; list them with GET /api/v1/silences")
        logger.info("silence %s expired by %s", sid, who.name)
        now = self.manager.clock.now_us()
        return json_response(next(_silence(s, now) for s in self.manager.silences() if s.id == sid))


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise _BadRequest(f"body of {len(raw)} bytes: at most {_MAX_BODY}")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _BadRequest(f"body: not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise _BadRequest("body: a JSON object, e.g. {\"comment\": \"on it\"}")
    return body


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise _BadRequest(f"{name}={value!r}: a string")
    return value


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise _BadRequest(f"ends_at={value!r}: an ISO 8601 time with a zone, e.g. 2026-01-01T06:00:00Z") from None
    if ts.tzinfo is None:
        raise _BadRequest(f"ends_at={value!r}: add a zone (e.g. 'Z' for UTC)")
    return ts.astimezone(UTC)


class AlertCollector(Collector):
    """Exposes :meth:`AlertManager.metrics` (read at scrape time: the evaluation path pays nothing more).

    ``tidegauge_alert_rule_evaluation_seconds`` (histogram by rule), ``tidegauge_alerts`` (gauge by state),
    ``tidegauge_alert_notifications_sent`` / ``_failed`` / ``_dropped`` and
    ``tidegauge_alert_notification_attempts_failed`` (counters by receiver; ``failed``: gave up after the
    receiver's retries).
    """

    def __init__(self, manager: AlertManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        m = self.manager.metrics()
        hist = HistogramMetricFamily("tidegauge_alert_rule_evaluation_seconds",
                                     "Time to evaluate one alert rule on one batch", labels=["rule"])
        for rule, (buckets, total) in sorted(m["rule_eval_seconds"].items()):
            hist.add_metric([rule], [("+Inf" if b == float("inf") else repr(b), n) for b, n in buckets], total)
        yield hist
        alerts = GaugeMetricFamily("tidegauge_alerts", "Current alerts by state", labels=["state"])
        for state, n in sorted(m["alerts"].items()):
            alerts.add_metric([state], n)
        yield alerts
        receivers: list[str] = m["receivers"]
        for key, name, doc in (
            ("notifications_sent_total", "sent", "Notifications delivered, by receiver"),
            ("notifications_failed_total", "failed", "Notifications given up after every retry, by receiver"),
            ("notifications_dropped_total", "dropped", "Notifications dropped from a full outbox, by receiver"),
        ):
            yield _by_receiver(f"tidegauge_alert_notifications_{name}", doc, receivers, m[key])
        yield _by_receiver("tidegauge_alert_notification_attempts_failed",
                           "Failed delivery attempts (each retry counts), by receiver", receivers,
                           m["notification_attempts_failed_total"])


def _by_receiver(name: str, doc: str, receivers: list[str], values: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=["receiver"])
    for r in sorted({*receivers, *values}):
        family.add_metric([r], values.get(r, 0))
    return family

"""Edge endpoints and metrics, served when :func:`~tidegauge.server.app.build_app` gets a coordinator.

===============================  ======  ===========================================================
``POST /api/v1/edge/heartbeat``  ingest  a JSON :class:`~tidegauge.edge.Heartbeat`; answers the agent's
                                         :class:`~tidegauge.edge.Assignment`
``GET /api/v1/edge/agents``      read    one object per agent: state, availability, resources, outbox,
                                         sensors, generation, detection side
``GET /api/v1/edge/assignments`` read    one object per sensor: agent, target, handover state, detection
===============================  ======  ===========================================================

Heartbeats need the ``ingest`` scope: the token an agent already has to forward its data upstream. A token
configured with ``nodes`` may only send heartbeats as those node ids (403 otherwise), so one agent's token
cannot take over another agent's sensors.
:class:`EdgeCollector` exports the coordinator's state at scrape time through ``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tidegauge.edge.heartbeat import Heartbeat
from tidegauge.server.ingest import error, json_response

if TYPE_CHECKING:
    from tidegauge.edge.coordinator import Coordinator
    from tidegauge.server.app import ServerState

__all__ = ["EdgeCollector", "edge_routes", "take_heartbeat"]

logger = logging.getLogger(__name__)


def take_heartbeat(coordinator: Coordinator, body: bytes,
                   refusal: Callable[[str], str | None]) -> tuple[int, bytes]:
    """Validate a heartbeat and hand it to ``coordinator``: ``(200, assignment JSON)`` or
    ``(status, {"error": why} JSON)``.

    ``refusal(node_id)`` says why the sender may not act as that node (``None``: it may). The HTTP endpoint
    and the NATS heartbeat subject (:class:`~tidegauge.edge.jetstream.JetStreamIntake`) both use it.
    """
    try:
        hb = Heartbeat.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return 400, msgspec.json.encode({"error": f"not a valid heartbeat: {exc}"})
    if not hb.node_id.strip():
        return 400, msgspec.json.encode({"error": "not a valid heartbeat: node_id is empty"})
    refused = refusal(hb.node_id)
    if refused is not None:
        return 403, msgspec.json.encode({"error": refused})
    return 200, msgspec.json.encode(coordinator.heartbeat(hb))


def edge_routes(coordinator: Coordinator) -> list[BaseRoute]:
    """The edge routes, bound to ``coordinator``."""
    api = _EdgeApi(coordinator)
    return [
        Route("/api/v1/edge/heartbeat", api.heartbeat, methods=["POST"]),
        Route("/api/v1/edge/agents", api.agents, methods=["GET"]),
        Route("/api/v1/edge/assignments", api.assignments, methods=["GET"]),
    ]


class _EdgeApi:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    async def heartbeat(self, request: Request) -> Response:
        state: ServerState = request.app.state.tg
        who = state.authorize(request.headers.get("authorization"), "ingest")
        if isinstance(who, Response):
            return who
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > state.body_limit:
                return error(413, f"heartbeat larger than the body limit ({state.body_limit} bytes)")
        status, answer = take_heartbeat(self.coordinator, bytes(body), who.edge_refusal)
        return Response(answer, status, media_type="application/json")

    async def agents(self, request: Request) -> Response:
        state: ServerState = request.app.state.tg
        who = state.authorize(request.headers.get("authorization"), "read")
        if isinstance(who, Response):
            return who
        return json_response(self.coordinator.agents())

    async def assignments(self, request: Request) -> Response:
        state: ServerState = request.app.state.tg
        who = state.authorize(request.headers.get("authorization"), "read")
        if isinstance(who, Response):
            return who
        rows = self.coordinator.assignments()
        node = request.query_params.get("agent")
        if node is not None:
            rows = [r for r in rows if r["agent"] == node]
        return json_response(rows)


class EdgeCollector(Collector):
    """Agents by state, availability and heartbeat age per agent, outbox depth, reassignments."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        c = self.coordinator
        rows = c.agents()
        states = GaugeMetricFamily("tidegauge_edge_agents", "Edge agents by state", labels=["state"])
        for s in ("online", "offline"):
            states.add_metric([s], sum(1 for r in rows if r["status"] == s))
        yield states
        per_agent = {
            "availability": ("tidegauge_edge_agent_availability", "Time online / time known over the window"),
            "heartbeat_age_s": ("tidegauge_edge_heartbeat_age_seconds", "Time since the agent's last heartbeat"),
            "outbox_depth": ("tidegauge_edge_outbox_depth", "Records in the agent's outbox (last heartbeat)"),
            "outbox_age_s": ("tidegauge_edge_outbox_age_seconds", "Age of the agent's oldest outbox record"),
            "sensors": ("tidegauge_edge_agent_sensors", "Sensors assigned to the agent"),
        }
        for field, (name, doc) in per_agent.items():
            fam = GaugeMetricFamily(name, doc, labels=["node_id"])
            for r in rows:
                fam.add_metric([r["node_id"]], float(r[field]))
            yield fam
        by_state: dict[str, int] = {}
        for a in c.assignments():
            by_state[a["state"]] = by_state.get(a["state"], 0) + 1
        sensors = GaugeMetricFamily("tidegauge_edge_sensors", "Sensors by assignment state", labels=["state"])
        for s in ("active", "granted", "releasing", "unassigned"):
            sensors.add_metric([s], by_state.get(s, 0))
        yield sensors
        yield CounterMetricFamily("tidegauge_edge_reassignments", "Sensors moved from one agent to another",
                                  value=c.reassignments)
        yield CounterMetricFamily("tidegauge_edge_assignment_conflicts",
                                  "Heartbeats reporting a sensor another agent holds (should stay 0)",
                                  value=c.conflicts)

"""The OpenAPI 3.1 description of the server, with the ingest record schema generated from the pipeline's."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["openapi_schema"]

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_RETRY = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait before retrying"}}
_ROWS = {"200": {"description": "rows", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"rows": {"type": "array", "items": {"type": "object"}}}}}}},
    "400": _ERROR, "401": _ERROR, "403": _ERROR}
_TIME_PARAMS = [{"name": n, "in": "query", "schema": {"type": "string", "format": "date-time"}}
                for n in ("start", "end")] + [{"name": "limit", "in": "query", "schema": {"type": "integer"}}]


def openapi_schema(record: type, *, alerts: bool = False, edge: bool = False,
                   edge_batches: bool = False) -> dict[str, Any]:
    """The OpenAPI document; ``record`` is the msgspec Struct every ingested reading is validated against.

    ``alerts`` adds the alert and silence endpoints (served when the app has an alert manager), ``edge`` the
    edge coordinator's (heartbeat, agents, assignments), ``edge_batches`` the edge receiver's batch endpoint.
    """
    (rec,), components = msgspec.json.schema_components([record], ref_template="#/components/schemas/{name}")
    components["Error"] = {"type": "object", "properties": {"error": {"type": "string"}}}
    components["IngestResult"] = {"type": "object", "properties": {
        "accepted": {"type": "integer"},
        "rejected": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "reason": {"type": "string"}}}}}}
    ingest_body = {"content": {
        "application/json": {"schema": {"oneOf": [rec, {"type": "array", "items": rec}]}},
        "application/x-ndjson": {"schema": {"type": "string", "description": "one JSON reading per line"}}}}
    paths: dict[str, Any] = {}
    if alerts:
        components.update(_ALERT_COMPONENTS)
        paths.update(_ALERT_PATHS)
    if edge:
        from tidegauge.edge.heartbeat import Assignment, Heartbeat

        (hb, asg), edge_components = msgspec.json.schema_components(
            [Heartbeat, Assignment], ref_template="#/components/schemas/{name}")
        components.update(edge_components)
        paths.update(_edge_paths(hb, asg))
    if edge_batches:
        paths.update(_EDGE_BATCH_PATHS)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tidegauge", "version": "1"},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/ingest": {"post": {
                "summary": "Ingest readings (JSON array or NDJSON); scope ingest", "requestBody": ingest_body,
                "responses": {
                    "200": {"description": "accepted (durable)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IngestResult"}}}},
                    "400": _ERROR, "401": _ERROR, "403": _ERROR, "413": _ERROR,
                    "429": {**_ERROR, "headers": _RETRY}, "503": {**_ERROR, "headers": _RETRY}}}},
            "/api/v1/ingest/ws": {"get": {"summary": "WebSocket ingest, one acknowledgement per message",
                                          "responses": {"101": {"description": "switching protocols"}}}},
            "/api/v1/sensors": {"get": {"summary": "Latest reading per sensor; scope read", "responses": _ROWS}},
            "/api/v1/sensors/{sensor_id}/series": {"get": {
                "summary": "A sensor's readings, raw or bucketed (window, agg, field)",
                "parameters": [{"name": "sensor_id", "in": "path", "required": True, "schema": {"type": "string"}},
                               *_TIME_PARAMS,
                               *({"name": n, "in": "query", "schema": {"type": "string"}}
                                 for n in ("window", "agg", "field"))],
                "responses": _ROWS}},
            "/api/v1/windows": {"get": {"summary": "Window results", "parameters": _TIME_PARAMS, "responses": _ROWS}},
            "/api/v1/anomalies": {"get": {"summary": "Anomalies", "parameters": _TIME_PARAMS, "responses": _ROWS}},
            "/api/v1/dead-letters": {"get": {"summary": "Dead letters", "parameters": _TIME_PARAMS,
                                             "responses": _ROWS}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/healthz": {"get": {"summary": "Alive", "security": [], "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Ready (reasons in the body)",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            **paths,
        },
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


_STR = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_NULL_STR = {"type": ["string", "null"]}
_ALERT_COMPONENTS: dict[str, Any] = {
    "Alert": {"type": "object", "properties": {
        "fingerprint": _STR, "rule": _STR, "state": {"enum": ["pending", "firing", "resolved"]},
        "severity": {"enum": ["critical", "major", "minor", "warning", "info"]},
        "labels": {"type": "object", "additionalProperties": _STR},
        "annotations": {"type": "object", "additionalProperties": _STR},
        "active_since": _TIME, "fired_at": {"type": ["string", "null"], "format": "date-time"},
        "resolved_at": {"type": ["string", "null"], "format": "date-time"}, "flapping": {"type": "boolean"},
        "acknowledged": {"type": "boolean"},
        "ack": {"type": ["object", "null"], "properties": {"by": _STR, "at": _TIME, "comment": _NULL_STR}},
        "muted_by": {"type": ["string", "null"], "description": "silence:<id> or inhibited:<fingerprint>"}}},
    "Silence": {"type": "object", "properties": {
        "id": _STR, "matchers": {"type": "array", "items": _STR},
        "state": {"enum": ["pending", "active", "expired"]}, "starts_at": _TIME, "ends_at": _TIME,
        "created_by": _STR, "comment": _STR, "created_at": _TIME}},
    "NewSilence": {"type": "object", "required": ["matchers"], "properties": {
        "matchers": {"type": "array", "items": _STR, "minItems": 1,
                     "description": "name=value, name!=value, name=~regex, name!~regex"},
        "duration": {"type": "string", "description": "e.g. 2h (give duration or ends_at)"},
        "ends_at": {"type": "string", "format": "date-time"}, "comment": _STR}},
}
_WRITE_ERRORS = {"400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR}
_FP = {"name": "fingerprint", "in": "path", "required": True, "schema": _STR}
_ALERT = _json("#/components/schemas/Alert", "the alert")
_ALERT_PATHS: dict[str, Any] = {
    "/api/v1/alerts": {"get": {
        "summary": "Current alerts; scope read",
        "parameters": [{"name": "state", "in": "query", "schema": {"enum": ["pending", "firing", "resolved"]}},
                       {"name": "severity", "in": "query", "schema": _STR},
                       {"name": "label", "in": "query", "schema": _STR, "description": "name=value (repeatable)"}],
        "responses": {"200": {"description": "alerts", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"alerts": {"type": "array", "items": {
                "$ref": "#/components/schemas/Alert"}}}}}}}, "400": _ERROR, "401": _ERROR, "403": _ERROR}}},
    "/api/v1/alerts/{fingerprint}/ack": {"post": {
        "summary": "Acknowledge an alert (stops its repeats until it resolves); scope admin",
        "parameters": [_FP],
        "requestBody": {"content": {"application/json": {"schema": {
            "type": "object", "properties": {"comment": _STR}}}}},
        "responses": {"200": _ALERT, **_WRITE_ERRORS}}},
    "/api/v1/alerts/{fingerprint}/unack": {"post": {
        "summary": "Withdraw an acknowledgement; scope admin", "parameters": [_FP],
        "responses": {"200": _ALERT, **_WRITE_ERRORS}}},
    "/api/v1/silences": {
        "get": {"summary": "Silences; scope read",
                "parameters": [{"name": "state", "in": "query",
                                "schema": {"enum": ["pending", "active", "expired"]}}],
                "responses": {"200": {"description": "silences", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"silences": {"type": "array", "items": {
                        "$ref": "#/components/schemas/Silence"}}}}}}}, "400": _ERROR, "401": _ERROR,
                    "403": _ERROR}},
        "post": {"summary": "Create a silence (it always ends); scope admin",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "$ref": "#/components/schemas/NewSilence"}}}},
                 "responses": {"201": _json("#/components/schemas/Silence", "the silence"), "400": _ERROR,
                               "401": _ERROR, "403": _ERROR}}},
    "/api/v1/silences/{silence_id}": {"delete": {
        "summary": "Expire a silence now; scope admin",
        "parameters": [{"name": "silence_id", "in": "path", "required": True, "schema": _STR}],
        "responses": {"200": _json("#/components/schemas/Silence", "the expired silence"), **_WRITE_ERRORS}}},
}


def _edge_paths(heartbeat: dict[str, Any], assignment: dict[str, Any]) -> dict[str, Any]:
    agent_param = [{"name": "agent", "in": "query", "schema": {"type": "string"}}]
    return {
        "/api/v1/edge/heartbeat": {"post": {
            "summary": "An edge agent's heartbeat; answered with its assignment; scope ingest",
            "requestBody": {"content": {"application/json": {"schema": heartbeat}}},
            "responses": {"200": {"description": "the agent's assignment",
                                  "content": {"application/json": {"schema": assignment}}},
                          "400": _ERROR, "401": _ERROR, "403": _ERROR}}},
        "/api/v1/edge/agents": {"get": {
            "summary": "Every known agent with its state, availability and last heartbeat's figures; scope read",
            "responses": {"200": {"description": "agents", "content": {"application/json": {"schema": {
                "type": "array", "items": {"type": "object"}}}}}, "401": _ERROR, "403": _ERROR}}},
        "/api/v1/edge/assignments": {"get": {
            "summary": "Sensor -> agent, handover state and where detection runs; scope read",
            "parameters": agent_param,
            "responses": {"200": {"description": "assignments", "content": {"application/json": {"schema": {
                "type": "array", "items": {"type": "object"}}}}}, "401": _ERROR, "403": _ERROR}}},
    }


_EDGE_BATCH_PATHS: dict[str, Any] = {
    "/api/v1/edge/batches": {"post": {
        "summary": "A batch of an edge agent's outbox (NDJSON), de-duplicated by agent, stream and sequence; "
                   "scope ingest",
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": True,
                        "schema": {"type": "string"}, "description": "<agent>:<stream>:<first>-<last>"}],
        "requestBody": {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
        "responses": {"200": {"description": "acknowledged up to a sequence"}, "400": _ERROR, "401": _ERROR,
                      "403": _ERROR, "409": _ERROR, "503": {**_ERROR, "headers": _RETRY}}}},
}

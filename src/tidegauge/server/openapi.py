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


def openapi_schema(record: type) -> dict[str, Any]:
    """The OpenAPI document; ``record`` is the msgspec Struct every ingested reading is validated against."""
    (rec,), components = msgspec.json.schema_components([record], ref_template="#/components/schemas/{name}")
    components["Error"] = {"type": "object", "properties": {"error": {"type": "string"}}}
    components["IngestResult"] = {"type": "object", "properties": {
        "accepted": {"type": "integer"},
        "rejected": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "reason": {"type": "string"}}}}}}
    ingest_body = {"content": {
        "application/json": {"schema": {"oneOf": [rec, {"type": "array", "items": rec}]}},
        "application/x-ndjson": {"schema": {"type": "string", "description": "one JSON reading per line"}}}}
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
        },
    }

"""Structured logs on request: every log line as one JSON object, and the per-request access log.

``tidegauge serve --log-format json`` (or ``TIDEGAUGE_LOG_FORMAT=json``) formats every record as
``{"time": ..., "level": ..., "logger": ..., "message": ...}``; with ``server.access_log: true`` each HTTP
request adds a record on the ``tidegauge.server.access`` logger whose fields (method, path without the
query string, status, seconds, client) are merged into that object. Nothing logged contains a token: the
server logs token *names* only, and never a query string (a WebSocket ``access_token`` would be in it).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["ACCESS_LOGGER", "JsonFormatter", "configure_logging"]

logger = logging.getLogger(__name__)

ACCESS_LOGGER = "tidegauge.server.access"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a record's ``access`` dict (the access log's fields) is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            out.update(access)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(fmt: Literal["text", "json"], *, access_log: bool) -> None:
    """For the CLI: JSON on the root logger's handlers if asked; let the access log through if enabled."""
    if fmt == "json":
        root = logging.getLogger()
        if not root.handlers:
            root.addHandler(logging.StreamHandler())
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
    if access_log:
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)

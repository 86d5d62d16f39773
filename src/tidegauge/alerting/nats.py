"""NATS receiver: publishes the JSON payload on a subject (needs ``pip install 'tidegauge[nats]'``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from tidegauge.errors import ConnectorError, MissingDependencyError

__all__ = ["NatsNotifier"]

logger = logging.getLogger(__name__)


class NatsNotifier:
    """Publishes each notification on ``subject`` and flushes (one short-lived connection per notification)."""

    def __init__(self, name: str, *, url: str, subject: str = "tidegauge.alerts", send_resolved: bool = True,
                 timeout: float = 5.0) -> None:
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("nats-py", "nats") from exc
        self.name = name
        self.url = url
        self.subject = subject
        self.send_resolved = send_resolved
        self.timeout = timeout

    async def _publish(self, body: bytes) -> None:
        import nats

        nc = await nats.connect(self.url, connect_timeout=self.timeout, max_reconnect_attempts=0)
        try:
            await nc.publish(self.subject, body)
            await nc.flush(timeout=max(1, round(self.timeout)))
        finally:
            await nc.close()

    def send(self, payload: Mapping[str, Any]) -> None:
        try:
            asyncio.run(self._publish(json.dumps(payload).encode()))
        except Exception as exc:  # the client raises its own error types; all are delivery failures
            raise ConnectorError(f"nats {self.name} ({self.url}): {exc}") from exc

"""MQTT receiver: publishes the JSON payload to a topic (needs ``pip install 'tidegauge[mqtt]'``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from tidegauge.errors import ConnectorError, MissingDependencyError

__all__ = ["MqttNotifier"]

logger = logging.getLogger(__name__)


class MqttNotifier:
    """Publishes each notification to ``topic`` (``{receiver}`` and ``{status}`` are substituted).

    A connection is opened per notification: alert notifications are rare, and a fresh connection cannot be
    stale after a broker restart.
    """

    def __init__(
        self, name: str, *, host: str = "127.0.0.1", port: int = 1883, topic: str = "tidegauge/alerts",
        qos: int = 1, send_resolved: bool = True, timeout: float = 5.0,
    ) -> None:
        try:
            import paho.mqtt.client  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("paho-mqtt", "mqtt") from exc
        self.name = name
        self.host = host
        self.port = port
        self.topic = topic
        self.qos = qos
        self.send_resolved = send_resolved
        self.timeout = timeout

    def send(self, payload: Mapping[str, Any]) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,  # type: ignore[attr-defined]
                             client_id="", protocol=mqtt.MQTTv311)
        topic = self.topic.format(receiver=self.name, status=payload.get("status", "firing"))
        try:
            client.connect(self.host, self.port, keepalive=30)
            client.loop_start()
            info = client.publish(topic, json.dumps(payload), qos=self.qos)
            info.wait_for_publish(timeout=self.timeout)
            if not info.is_published():
                raise ConnectorError(f"mqtt {self.name}: not acknowledged within {self.timeout}s")
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConnectorError(f"mqtt {self.name} ({self.host}:{self.port}): {exc}") from exc
        finally:
            client.loop_stop()
            client.disconnect()

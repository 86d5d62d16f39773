"""Sources and sinks.

The contracts (``SourceDefinition``/``SourceLogic``, ``SinkDefinition``/``SinkLogic``) and the checkpoint commit
order are in :mod:`tidegauge.connectors.base`. Each connector lives in its own module and is imported from
there (``from tidegauge.connectors.mqtt import MqttSource``), so that an optional client library is only
needed by the connector that uses it: ``files``, ``simulator`` and ``http`` need nothing extra; ``mqtt``,
``nats``, ``redis`` and ``postgres`` need the extra of the same name.
"""

from __future__ import annotations

from tidegauge.connectors.base import Guarantee, SinkDefinition, SinkLogic, SourceDefinition, SourceLogic

__all__ = ["Guarantee", "SinkDefinition", "SinkLogic", "SourceDefinition", "SourceLogic"]

"""tidegauge: a real-time analytics engine for sensor and event streams."""

from __future__ import annotations

from tidegauge._time import ManualClock, SystemClock, parse_duration
from tidegauge.errors import (
    CheckpointError,
    ConfigError,
    ConnectorError,
    MissingDependencyError,
    TidegaugeError,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConnectorError",
    "ManualClock",
    "MissingDependencyError",
    "SystemClock",
    "TidegaugeError",
    "__version__",
    "parse_duration",
]

__version__ = "0.1.0"

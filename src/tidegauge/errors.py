"""The tidegauge exception tree.

::

    TidegaugeError
    ├── ConfigError          (also ValueError)  a pipeline/rules file or argument is invalid
    ├── MissingDependencyError (also ImportError) an optional extra is not installed
    ├── CheckpointError       a checkpoint cannot be written or restored
    └── ConnectorError        a source or sink failed talking to its system

Per-record problems never raise: they go to the dead-letter output with a reason.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConnectorError",
    "MissingDependencyError",
    "TidegaugeError",
]


class TidegaugeError(Exception):
    """Root of every error tidegauge raises on purpose."""


class ConfigError(TidegaugeError, ValueError):
    """A configuration value is invalid; the message names where and how to fix it."""


class MissingDependencyError(TidegaugeError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is needed for this feature: install it with `pip install 'tidegauge[{extra}]'`"
        )
        self.module = module
        self.extra = extra


class CheckpointError(TidegaugeError):
    """A checkpoint could not be written, read or restored."""


class ConnectorError(TidegaugeError):
    """A source or sink failed talking to its external system."""

"""The IoT fleet simulator: readings with labelled anomaly episodes and injected faults.

Contract: frames follow :data:`READING_SCHEMA` (the demo reading schema, then the ground-truth columns
``truth_anomaly``, ``truth_type`` and ``truth_fault`` that detectors must never read). The same
:class:`FleetConfig` always gives the same rows, however the caller cuts them into batches, and
``FleetSimulator.restore(config, sim.snapshot())`` continues exactly where ``sim`` stood.

>>> from tidegauge.simulate import FleetConfig, FleetSimulator
>>> FleetSimulator(FleetConfig(sensors=3, seed=1)).next_batch(5).height
5
"""

from __future__ import annotations

from tidegauge.simulate._episodes import EPISODE_TYPES
from tidegauge.simulate.config import DEFAULT_START, FAULT_KINDS, FaultConfig, FleetConfig, fleet_from_mapping
from tidegauge.simulate.files import FileFormat, WriteSummary, format_of, write_readings
from tidegauge.simulate.fleet import READING_SCHEMA, SENSOR_TYPES, STATUSES, FleetSimulator, FleetSnapshot

__all__ = [
    "DEFAULT_START",
    "EPISODE_TYPES",
    "FAULT_KINDS",
    "READING_SCHEMA",
    "SENSOR_TYPES",
    "STATUSES",
    "FaultConfig",
    "FileFormat",
    "FleetConfig",
    "FleetSimulator",
    "FleetSnapshot",
    "WriteSummary",
    "fleet_from_mapping",
    "format_of",
    "write_readings",
]

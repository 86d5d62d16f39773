"""The ``coordinator:`` section of a pipeline file, validated and built into a :class:`Coordinator`.

.. code-block:: yaml

    coordinator:
      strategy: consistent_hash      # round_robin | least_loaded | geo_proximity | consistent_hash
      heartbeat_timeout: 15s         # offline after this long without a heartbeat (3 intervals is usual)
      availability_window: 1h
      store: coordinator.db          # SQLite file (relative to the pipeline file); keeps state across restarts
      sensors: {simulator: {sensors: 300, seed: 1}}   # or {file: sensors.csv} or {ids: [S1, S2]}
      settle: 15s                    # after start, only learn who runs what for this long (default: timeout)
      from_readings: false           # also add every sensor seen in the flow's readings
      detection: {mode: edge_or_cloud, max_cpu_pct: 90, min_battery_pct: 20}
      heartbeats: {file: heartbeats.jsonl}   # optional: where the heartbeat records go (a sink section)

``tidegauge serve pipeline.yaml`` then answers agents on ``POST /api/v1/edge/heartbeat`` and lists them on
``GET /api/v1/edge/agents`` and ``GET /api/v1/edge/assignments``. The coordinator's heartbeat records are a
second source of the flow (keyed by ``node_id``), which never ends: a pipeline with a coordinator runs until
it is stopped, as a served pipeline does anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from tidegauge.edge.coordinator import Coordinator
from tidegauge.edge.policy import DetectionPolicy
from tidegauge.edge.strategies import DEFAULT_VNODES, SensorInfo, StrategyName
from tidegauge.errors import ConfigError

__all__ = ["CoordinatorConfig", "SensorsSection", "build_coordinator", "load_sensors"]

logger = logging.getLogger(__name__)

_Strict = {"forbid_unknown_fields": True, "frozen": True, "kw_only": True}


class SensorsSection(msgspec.Struct, **_Strict):
    """Where the sensors to assign come from: exactly one of these."""

    simulator: dict[str, Any] | None = None
    """a :class:`~tidegauge.simulate.FleetConfig`: its sensors, with the simulator's coordinates"""
    file: str | None = None
    """CSV, JSONL or Parquet with ``sensor_id`` and optional ``latitude``, ``longitude``"""
    ids: list[str] | None = None


class CoordinatorConfig(msgspec.Struct, **_Strict):
    strategy: StrategyName = "consistent_hash"
    heartbeat_timeout: str = "15s"
    availability_window: str = "1h"
    store: str | None = "coordinator.db"
    sensors: SensorsSection | None = None
    from_readings: bool = False
    detection: DetectionPolicy = DetectionPolicy()
    heartbeats: dict[str, Any] | None = None
    """a sink section for the heartbeat records (validated by the pipeline's sink rules)"""
    vnodes: int = DEFAULT_VNODES
    settle: str | None = None
    """how long after start the coordinator only learns (default: the heartbeat timeout)"""


def parse_config(raw: Any) -> CoordinatorConfig:
    """Validate a ``coordinator:`` section; :class:`ConfigError` names the path and the fix."""
    try:
        config = msgspec.convert(raw if raw is not None else {}, CoordinatorConfig)
    except msgspec.ValidationError as exc:
        msg = str(exc).replace("`$", "`$.coordinator")
        if "unknown field" in msg:
            msg += f"; valid keys here: {', '.join(CoordinatorConfig.__struct_fields__)}"
        raise ConfigError(f"at $.coordinator: {msg}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"at $.coordinator: {exc}") from None
    if config.sensors is not None:
        given = [k for k in SensorsSection.__struct_fields__ if getattr(config.sensors, k) is not None]
        if len(given) != 1:
            raise ConfigError("at $.coordinator.sensors: give exactly one of simulator, file, ids "
                              f"(e.g. 'sensors: {{simulator: {{sensors: 300}}}}'), got {', '.join(given) or 'none'}")
    if config.vnodes < 1:
        raise ConfigError(f"at $.coordinator.vnodes: {config.vnodes}: use at least 1")
    from tidegauge._time import parse_duration

    for name in ("heartbeat_timeout", "availability_window", "settle"):
        try:
            if getattr(config, name) is not None:
                parse_duration(getattr(config, name), name=name)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"at $.coordinator.{name}: {exc}") from None
    return config


def load_sensors(section: SensorsSection, base: Path = Path()) -> list[SensorInfo]:
    """The sensors a ``sensors:`` section names."""
    if section.ids is not None:
        return [SensorInfo(str(s)) for s in section.ids]
    if section.simulator is not None:
        from tidegauge.simulate import FleetConfig, FleetSimulator

        try:
            # keywords, not msgspec.convert: FleetConfig holds duration unions msgspec cannot convert into
            fleet = FleetConfig(**section.simulator)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"at $.coordinator.sensors.simulator: {exc}") from None
        # reading g comes from sensor g % sensors: the first `sensors` readings name each sensor once
        df = FleetSimulator(fleet).next_batch(fleet.sensors)
        return _from_frame(df, "simulator")
    if section.file is None:
        raise ConfigError("at $.coordinator.sensors: give one of simulator, file, ids")
    path = base / section.file
    readers: dict[str, Callable[[Path], pl.DataFrame]] = {
        ".csv": pl.read_csv, ".parquet": pl.read_parquet, ".jsonl": pl.read_ndjson, ".ndjson": pl.read_ndjson}
    reader = readers.get(path.suffix)
    if reader is None:
        raise ConfigError(f"at $.coordinator.sensors.file: {path}: use a .csv, .jsonl or .parquet file")
    try:
        df = reader(path)
    except FileNotFoundError:
        raise ConfigError(f"at $.coordinator.sensors.file: {path}: no such file") from None
    return _from_frame(df, str(path))


def _from_frame(df: pl.DataFrame, where: str) -> list[SensorInfo]:
    if "sensor_id" not in df.columns:
        raise ConfigError(f"at $.coordinator.sensors: {where} has no sensor_id column (columns: {df.columns})")
    has = "latitude" in df.columns and "longitude" in df.columns
    cols = ["sensor_id", *(("latitude", "longitude") if has else ())]
    out = []
    for row in df.select(cols).unique("sensor_id", keep="first", maintain_order=True).iter_rows():
        out.append(SensorInfo(str(row[0]), *(float(v) if v is not None else None for v in row[1:])))
    return out


def build_coordinator(config: CoordinatorConfig, *, base_dir: str | Path = ".", clock: Any = None) -> Coordinator:
    """The coordinator a validated section describes (paths relative to ``base_dir``)."""
    base = Path(base_dir)
    sensors = load_sensors(config.sensors, base) if config.sensors is not None else []
    return Coordinator(config.strategy, heartbeat_timeout=config.heartbeat_timeout,
                       availability_window=config.availability_window, sensors=sensors,
                       store=None if config.store is None else base / config.store, policy=config.detection,
                       clock=clock, vnodes=config.vnodes, settle=config.settle)

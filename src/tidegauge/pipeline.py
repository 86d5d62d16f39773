"""Pipeline files: YAML validated into typed config, then built into a :class:`~tidegauge.dataflow.Flow`.

.. code-block:: yaml

    name: readings                     # optional
    source: {file: readings.parquet, key: sensor_id, time: timestamp}
    steps:
      - filter: "temperature > -40"
      - window: {type: tumbling, size: 10s, aggregate: {temperature: [count, mean, min, max, p99]}}
    sink: {file: windows.parquet}      # or a list of sinks
    dead_letter: {file: rejected.jsonl}  # optional: every rejected record, with its reason
    late: {file: late.jsonl}             # optional: records too late for the last window step
    checkpoint: {dir: ./state, interval: 1s, every_batches: 100, keep: 3}
    watermark: {max_delay: 5s, idle_timeout: 10s, max_future: 1h}
    batch: {max_rows: 65536, max_delay: 5ms}

Sources: ``{file: PATH, format?, speed?}``, ``{simulator: {sensors, rate, seed, ...}, limit?}``.
Steps: ``filter``, ``select``, ``with_columns``, ``key_by``, ``enrich``, ``window``, ``detect``.
Relative paths are taken relative to the pipeline file's directory. Every error names the file, the
path inside it and what to write instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from tidegauge.dataflow import CheckpointConfig, Flow, Stream, WatermarkConfig
from tidegauge.errors import ConfigError

__all__ = ["BuiltPipeline", "PipelineConfig", "build_pipeline", "load_pipeline"]

logger = logging.getLogger(__name__)

_Strict = {"forbid_unknown_fields": True, "frozen": True}


class SourceConfig(msgspec.Struct, **_Strict):
    file: str | None = None
    simulator: dict[str, Any] | None = None
    format: Literal["csv", "jsonl", "parquet"] | None = None
    speed: float | None = None
    limit: int | None = None
    key: str | None = None
    time: str | None = None
    name: str | None = None


class SinkConfig(msgspec.Struct, **_Strict):
    file: str
    format: Literal["csv", "jsonl", "parquet"] | None = None
    name: str | None = None


class WindowConfig(msgspec.Struct, **_Strict):
    type: Literal["tumbling", "sliding", "session", "count"]
    aggregate: dict[str, list[str | dict[str, str]]]
    size: str | None = None
    slide: str | None = None
    gap: str | None = None
    n: int | None = None
    emit: Literal["close", "update"] = "close"
    allowed_lateness: str = "0s"
    quantiles: Literal["exact", "sketch"] | None = None
    name: str | None = None


class EnrichConfig(msgspec.Struct, **_Strict):
    file: str
    on: str | list[str]
    how: Literal["left", "inner"] = "left"
    refresh: str | None = None


class CheckpointSection(msgspec.Struct, **_Strict):
    dir: str
    interval: str = "10s"
    every_batches: int | None = None
    keep: int = 3


class WatermarkSection(msgspec.Struct, **_Strict):
    max_delay: str = "0s"
    idle_timeout: str = "10s"
    max_future: str | None = "1h"


class BatchSection(msgspec.Struct, **_Strict):
    max_rows: int = 65_536
    max_delay: str = "5ms"


class PipelineConfig(msgspec.Struct, **_Strict):
    source: SourceConfig | list[SourceConfig]
    sink: SinkConfig | list[SinkConfig] | None = None
    steps: list[dict[str, Any]] = []
    name: str = "pipeline"
    key: str = "sensor_id"
    time: str = "timestamp"
    dead_letter: SinkConfig | None = None
    late: SinkConfig | None = None
    checkpoint: CheckpointSection | None = None
    watermark: WatermarkSection = WatermarkSection()
    batch: BatchSection = BatchSection()


_STEP_KINDS = ("filter", "select", "with_columns", "key_by", "enrich", "window", "detect")


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file; raises :class:`ConfigError` naming the path and the fix."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a pipeline file is a mapping with at least 'source' (and usually 'sink')")
    try:
        config = msgspec.convert(raw, PipelineConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_explain(str(exc))}") from None
    for i, step in enumerate(config.steps):
        if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in _STEP_KINDS:
            raise ConfigError(
                f"{path}: at $.steps[{i}]: each step is a mapping with one key, one of "
                f"{', '.join(_STEP_KINDS)} (e.g. '- filter: \"temperature > 45\"'), got {step!r}"
            )
    return config


def _explain(msg: str) -> str:
    if "unknown field" in msg:
        section = msg.rsplit("at `", 1)[-1].rstrip("`") if "at `" in msg else "$"
        valid = _valid_fields(section)
        if valid:
            return f"{msg}; valid keys here: {', '.join(valid)}"
    return msg


def _valid_fields(section: str) -> list[str]:
    top = {"$": PipelineConfig, "$.source": SourceConfig, "$.checkpoint": CheckpointSection,
           "$.watermark": WatermarkSection, "$.batch": BatchSection, "$.dead_letter": SinkConfig,
           "$.late": SinkConfig}
    for prefix, struct in top.items():
        if section == prefix or (prefix in ("$.source", "$.sink") and section.startswith(prefix + "[")):
            return list(struct.__struct_fields__)
    if section.startswith("$.sink"):
        return list(SinkConfig.__struct_fields__)
    return []


@dataclass
class BuiltPipeline:
    flow: Flow
    checkpoint: CheckpointConfig | None
    max_batch: int
    max_delay: str


def build_pipeline(config: PipelineConfig, *, base_dir: str | Path = ".") -> BuiltPipeline:
    """Build the flow a validated pipeline describes (paths relative to ``base_dir``)."""
    base = Path(base_dir)
    wm = config.watermark
    flow = Flow(
        config.name,
        key=config.key,
        time=config.time,
        watermark=WatermarkConfig.of(max_delay=wm.max_delay, idle_timeout=wm.idle_timeout, max_future=wm.max_future),
    )
    sources = config.source if isinstance(config.source, list) else [config.source]
    streams = [
        flow.source(_source(s, base, i, config.time), key=s.key, time=s.time) for i, s in enumerate(sources)
    ]
    stream = streams[0].union(*streams[1:]) if len(streams) > 1 else streams[0]
    last_window: Stream | None = None
    for i, step in enumerate(config.steps):
        kind, params = next(iter(step.items()))
        where = f"$.steps[{i}].{kind}"
        stream = _step(stream, kind, params, where, base)
        if kind == "window":
            last_window = stream
    sinks = [] if config.sink is None else config.sink if isinstance(config.sink, list) else [config.sink]
    for s in sinks:
        stream.sink(_sink(s, base), name=s.name)
    if config.dead_letter is not None:
        flow.dead_letters().sink(_sink(config.dead_letter, base), name=config.dead_letter.name or "dead_letter")
    if config.late is not None:
        if last_window is None:
            raise ConfigError("$.late: there is no window step whose late records could be written; remove 'late'")
        last_window.late().sink(_sink(config.late, base), name=config.late.name or "late")
    cp = None
    if config.checkpoint is not None:
        c = config.checkpoint
        cp = CheckpointConfig(base / c.dir, interval=c.interval, every_batches=c.every_batches, keep=c.keep)
    return BuiltPipeline(flow, cp, config.batch.max_rows, config.batch.max_delay)


def _source(s: SourceConfig, base: Path, i: int, default_time: str) -> Any:
    where = "$.source" if i == 0 else f"$.source[{i}]"
    if (s.file is None) == (s.simulator is None):
        raise ConfigError(f"{where}: give exactly one of 'file: PATH' or 'simulator: {{...}}'")
    if s.file is not None:
        from tidegauge.connectors.files import FileSource

        return FileSource(
            base / s.file, format=s.format, speed=s.speed, time_column=s.time or default_time, name=s.name
        )
    from tidegauge.connectors.simulator import SimulatorSource
    from tidegauge.simulate import FleetConfig

    try:
        fleet = msgspec.convert(s.simulator, FleetConfig, strict=False)
    except (msgspec.ValidationError, TypeError) as exc:
        raise ConfigError(f"{where}.simulator: {exc}") from None
    return SimulatorSource(fleet, limit=s.limit)


def _sink(s: SinkConfig, base: Path) -> Any:
    from tidegauge.connectors.files import FileSink

    return FileSink(base / s.file, format=s.format, name=s.name)


def _step(stream: Stream, kind: str, params: Any, where: str, base: Path) -> Stream:
    if kind == "filter":
        if not isinstance(params, str):
            raise ConfigError(f"{where}: expected an SQL condition string, e.g. filter: \"temperature > 45\"")
        return stream.filter(params)
    if kind in ("select", "with_columns"):
        if isinstance(params, dict):
            return getattr(stream, kind)(**{str(k): str(v) for k, v in params.items()})  # type: ignore[no-any-return]
        if isinstance(params, list) and all(isinstance(p, str) for p in params):
            return getattr(stream, kind)(*params)  # type: ignore[no-any-return]
        raise ConfigError(f"{where}: expected a list of columns/SQL expressions or a mapping name: expression")
    if kind == "key_by":
        if not isinstance(params, str):
            raise ConfigError(f"{where}: expected a column name")
        return stream.key_by(params)
    if kind == "enrich":
        cfg = _convert(params, EnrichConfig, where)
        import polars as pl

        path = base / cfg.file
        reader = pl.read_csv if path.suffix == ".csv" else pl.read_parquet
        return stream.enrich(lambda: reader(path), on=cfg.on, how=cfg.how, refresh=cfg.refresh)
    if kind == "window":
        return _window(stream, _convert(params, WindowConfig, where), where)
    if kind == "detect":
        try:
            from tidegauge.detectors import build_detector
        except ImportError as exc:
            raise ConfigError(f"{where}: detectors are not available: {exc}") from None
        return stream.detect(build_detector(params))
    raise ConfigError(f"{where}: unknown step {kind!r}")


def _convert(params: Any, type_: type[Any], where: str) -> Any:
    try:
        return msgspec.convert(params, type_)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        if "unknown field" in msg:
            msg += f"; valid keys here: {', '.join(type_.__struct_fields__)}"
        raise ConfigError(f"{where}: {msg.replace('$', where)}") from None


def _window(stream: Stream, w: WindowConfig, where: str) -> Stream:
    from tidegauge.windows import Count, Session, Sliding, Tumbling

    need = {"tumbling": ("size",), "sliding": ("size", "slide"), "session": ("gap",), "count": ("n",)}[w.type]
    for field in need:
        if getattr(w, field) is None:
            raise ConfigError(f"{where}: a {w.type} window needs '{field}' (e.g. {field}: "
                              f"{'100' if field == 'n' else '10s'})")
    window: Any
    if w.type == "tumbling" and w.size is not None:
        window = Tumbling(w.size)
    elif w.type == "sliding" and w.size is not None and w.slide is not None:
        window = Sliding(w.size, w.slide)
    elif w.type == "session" and w.gap is not None:
        window = Session(w.gap)
    elif w.n is not None:
        window = Count(w.n)
    options: dict[str, Any] = {}
    if w.quantiles is not None:
        options["quantiles"] = w.quantiles
    try:
        return stream.window(window, w.aggregate, emit=w.emit, allowed_lateness=w.allowed_lateness,
                             name=w.name, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None

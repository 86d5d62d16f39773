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
    watermark: {max_delay: 5s, idle_timeout: 10s, max_future: 1h, partition_idle_timeout: 10m, future_window: 1024}
    batch: {max_rows: 65536, max_delay: 5ms}

    server: {port: 8080, tokens: [...]}  # optional: serve HTTP and the dashboard (tidegauge.server.ServerConfig)
    alerts: {rules: rules.yaml, store: alerts.db, streams: [readings, windows]}  # optional: alert rules
                                         # (tidegauge.alerting.pipeline_section)
    coordinator: {strategy: consistent_hash, heartbeat_timeout: 15s}  # optional: edge coordinator
                                       # (tidegauge.edge.config; its heartbeat records are a second source)

Sources: ``{file: PATH, format?, speed?}``, ``{simulator: {sensors, rate, seed, ...}, limit?}``,
``{mqtt: {topics, host, port, qos, session, ack, template, ...}}``,
``{nats: {stream, subject, durable, servers, ack_wait, ...}}``, ``{redis: {key, group, consumer, url}}``,
``{http: {log_dir, durability, max_lag, schema}}``, ``{kafka: {topics, group, bootstrap, config, key_column}}``.
Sinks: ``{file: PATH}``, ``{postgres: {table, key, conninfo, create}}``, ``{mqtt: {topic, ...}}``,
``{nats: {subject, servers, id_columns}}``, ``{redis: {key, url, maxlen}}``,
``{kafka: {topic, bootstrap, key_column, id_columns, transactional_id, config}}``. Each connector's module (and its
client library, an extra such as ``tidegauge[nats]``) is imported only when a file uses it.
Steps: ``filter``, ``select``, ``with_columns``, ``key_by``, ``enrich``, ``window``, ``detect``, ``cloud_only``
(with a ``coordinator:``: keeps the readings of sensors whose detection runs upstream; put it before ``detect``).
Relative paths are taken relative to the pipeline file's directory. Every error names the file, the
path inside it and what to write instead.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import yaml

from tidegauge.dataflow import CheckpointConfig, Flow, Stream, WatermarkConfig
from tidegauge.errors import ConfigError

if TYPE_CHECKING:
    import polars as pl

    from tidegauge.server.config import ServerConfig

__all__ = ["BuiltPipeline", "PipelineConfig", "build_pipeline", "load_pipeline", "server_config"]

logger = logging.getLogger(__name__)

_Strict = {"forbid_unknown_fields": True, "frozen": True}


ColumnType = Literal["str", "float", "int", "bool", "timestamp"]
"""Column types a broker or HTTP source decodes into (columns left out are inferred per batch)."""


class MqttSourceSection(msgspec.Struct, **_Strict):
    topics: str | list[str]
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    qos: Literal[0, 1] = 1
    session: Literal["clean", "persistent"] = "clean"
    ack: Literal["receipt", "checkpoint"] = "receipt"
    template: str | None = None
    buffer: int = 100_000
    schema: dict[str, ColumnType] | None = None


class NatsSourceSection(msgspec.Struct, **_Strict):
    stream: str
    subject: str
    durable: str
    servers: str | list[str] = "nats://127.0.0.1:4222"
    template: str | None = None
    ack_wait: str = "60s"
    max_ack_pending: int = -1
    schema: dict[str, ColumnType] | None = None


class RedisSourceSection(msgspec.Struct, **_Strict):
    key: str
    group: str
    consumer: str
    url: str = "redis://127.0.0.1:6379/0"
    field: str = "data"
    schema: dict[str, ColumnType] | None = None


class KafkaSourceSection(msgspec.Struct, **_Strict):
    topics: str | list[str]
    group: str
    bootstrap: str = "127.0.0.1:9092"
    config: dict[str, str | int | float | bool] | None = None
    key_column: str | None = None
    schema: dict[str, ColumnType] | None = None


class HttpSourceSection(msgspec.Struct, **_Strict):
    log_dir: str = "intake"
    durability: Literal["fsync", "os"] = "fsync"
    max_lag: int | str = "16MiB"
    schema: dict[str, ColumnType] | None = None


class SourceConfig(msgspec.Struct, **_Strict):
    file: str | None = None
    simulator: dict[str, Any] | None = None
    mqtt: MqttSourceSection | None = None
    nats: NatsSourceSection | None = None
    redis: RedisSourceSection | None = None
    http: HttpSourceSection | None = None
    kafka: KafkaSourceSection | None = None
    format: Literal["csv", "jsonl", "parquet"] | None = None
    speed: float | None = None
    limit: int | None = None
    key: str | None = None
    time: str | None = None
    name: str | None = None
    partition_by: str | None = None
    """one watermark per value of this column (e.g. ``edge_node``): :mod:`tidegauge.dataflow.partitions`"""


class PostgresSinkSection(msgspec.Struct, **_Strict):
    table: str
    key: str | list[str]
    conninfo: str = "postgresql://127.0.0.1:5432/postgres"
    create: bool = False


class MqttSinkSection(msgspec.Struct, **_Strict):
    topic: str
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    qos: Literal[0, 1] = 1
    retain: bool = False


class NatsSinkSection(msgspec.Struct, **_Strict):
    subject: str
    servers: str | list[str] = "nats://127.0.0.1:4222"
    id_columns: list[str] | None = None


class RedisSinkSection(msgspec.Struct, **_Strict):
    key: str
    url: str = "redis://127.0.0.1:6379/0"
    field: str = "data"
    maxlen: int | None = None


class KafkaSinkSection(msgspec.Struct, **_Strict):
    topic: str
    bootstrap: str = "127.0.0.1:9092"
    key_column: str | None = None
    id_columns: list[str] | None = None
    transactional_id: str | None = None
    config: dict[str, str | int | float | bool] | None = None


class SinkConfig(msgspec.Struct, **_Strict):
    file: str | None = None
    postgres: PostgresSinkSection | None = None
    mqtt: MqttSinkSection | None = None
    nats: NatsSinkSection | None = None
    redis: RedisSinkSection | None = None
    outbox: str | None = None
    """an edge outbox stream (forwarded upstream; only under ``tidegauge agent --pipeline``)"""
    kafka: KafkaSinkSection | None = None
    format: Literal["csv", "jsonl", "parquet"] | None = None
    name: str | None = None


_SOURCE_KINDS = ("file", "simulator", "mqtt", "nats", "redis", "http", "kafka")
_SINK_KINDS = ("file", "postgres", "mqtt", "nats", "redis", "kafka", "outbox")


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
    partition_idle_timeout: str = "10m"
    future_window: int = 1024


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
    server: dict[str, Any] | None = None
    """validated by :func:`server_config` (kept raw here: the server package is an optional extra)"""
    alerts: dict[str, Any] | None = None
    """validated (and its rules file loaded) by :func:`tidegauge.alerting.pipeline_section.alerts_section`"""
    coordinator: dict[str, Any] | None = None
    """validated by :func:`tidegauge.edge.config.parse_config`"""


_STEP_KINDS = ("filter", "select", "with_columns", "key_by", "enrich", "window", "detect", "cloud_only")


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
    for where, section, kinds in _sections(config):
        given = [k for k in kinds if getattr(section, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"{path}: at {where}: give exactly one of {', '.join(kinds)} "
                              f"(e.g. 'file: out.parquet'), got {', '.join(given) or 'none'}")
    try:
        _watermark(config.watermark)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: at $.watermark: {exc}") from None
    if config.server is not None:
        try:
            server_config(config)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if config.alerts is not None:
        from tidegauge.alerting.pipeline_section import alerts_section

        try:
            alerts_section(config.alerts, base_dir=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if config.coordinator is not None:
        _check_coordinator(config, path)
        if config.server is None:
            raise ConfigError(f"{path}: a 'coordinator:' section needs a 'server:' section too: agents reach the "
                              "coordinator over HTTP (e.g. 'server: {port: 8080, tokens: [...]}')")
    elif any(next(iter(step)) == "cloud_only" for step in config.steps):
        raise ConfigError(f"{path}: a cloud_only step needs a 'coordinator:' section (e.g. 'coordinator: {{}}')")
    return config


def _watermark(wm: WatermarkSection) -> WatermarkConfig:
    return WatermarkConfig.of(max_delay=wm.max_delay, idle_timeout=wm.idle_timeout, max_future=wm.max_future,
                              partition_idle_timeout=wm.partition_idle_timeout, future_window=wm.future_window)


def _check_coordinator(config: PipelineConfig, path: Path) -> None:
    from tidegauge.edge.config import parse_config

    try:
        section = parse_config(config.coordinator)
        if section.heartbeats is not None:
            sink = _convert(section.heartbeats, SinkConfig, "$.coordinator.heartbeats")
            given = [k for k in _SINK_KINDS if getattr(sink, k) is not None]
            if len(given) != 1:
                raise ConfigError(f"at $.coordinator.heartbeats: give exactly one of {', '.join(_SINK_KINDS)} "
                                  f"(e.g. 'heartbeats: {{file: heartbeats.jsonl}}')")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _sections(config: PipelineConfig) -> list[tuple[str, Any, tuple[str, ...]]]:
    """Every source and sink section with its YAML path and the kinds it may be."""
    out: list[tuple[str, Any, tuple[str, ...]]] = []
    sources = config.source if isinstance(config.source, list) else [config.source]
    out += [("$.source" if len(sources) == 1 and not isinstance(config.source, list) else f"$.source[{i}]", s,
             _SOURCE_KINDS) for i, s in enumerate(sources)]
    if config.sink is not None:
        sinks = config.sink if isinstance(config.sink, list) else [config.sink]
        out += [("$.sink" if not isinstance(config.sink, list) else f"$.sink[{i}]", s, _SINK_KINDS)
                for i, s in enumerate(sinks)]
    out += [(f"$.{name}", s, _SINK_KINDS) for name, s in (("dead_letter", config.dead_letter), ("late", config.late))
            if s is not None]
    return out


def server_config(config: PipelineConfig, *, base_dir: str | Path = ".", host: str | None = None,
                  port: int | None = None) -> ServerConfig | None:
    """The ``server:`` section as a :class:`~tidegauge.server.ServerConfig` (``None`` without one).

    File paths in it (history, TLS, intake) are taken relative to ``base_dir``; ``host``/``port`` override
    the file's. Needs the ``server`` extra.
    """
    if config.server is None:
        return None
    from tidegauge.server.config import ServerConfig

    try:
        server = msgspec.convert(config.server, ServerConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"at $.server: {_explain(str(exc).replace('`$', '`$.server'))}") from None
    except ConfigError as exc:
        raise ConfigError(f"at $.server: {exc}") from None
    server = msgspec.structs.replace(server, **{k: v for k, v in (("host", host), ("port", port)) if v is not None})
    dead = config.dead_letter
    if server.history.postgres is None and server.history.dead_letters is None and dead is not None and dead.file:
        # the dead-letter endpoint reads what the pipeline's own dead-letter file sink writes
        server = msgspec.structs.replace(server, history=msgspec.structs.replace(server.history,
                                                                                   dead_letters=dead.file))
    return _relative_to(server, Path(base_dir))


def _relative_to(server: ServerConfig, base: Path) -> ServerConfig:
    """``server`` with its file paths (history, TLS, intake) taken relative to the pipeline file's directory."""
    h = server.history
    history = h if h.postgres is not None else msgspec.structs.replace(h, **{  # postgres: table names
        f: str(base / getattr(h, f)) + ("/" if getattr(h, f).endswith("/") else "")
        for f in ("readings", "windows", "anomalies", "dead_letters") if getattr(h, f) is not None})
    tls = server.tls if server.tls is None else msgspec.structs.replace(
        server.tls, cert=str(base / server.tls.cert), key=str(base / server.tls.key))
    return msgspec.structs.replace(server, history=history, tls=tls, intake_dir=str(base / server.intake_dir))


def _explain(msg: str) -> str:
    if "unknown field" in msg:
        section = msg.rsplit("at `", 1)[-1].rstrip("`") if "at `" in msg else "$"
        valid = _valid_fields(section)
        if valid:
            return f"{msg}; valid keys here: {', '.join(valid)}"
    return msg


def _valid_fields(section: str) -> list[str]:
    """The keys valid at a YAML path such as ``$.sink[1].postgres`` or ``$.server.tokens[0]``."""
    import re
    import typing

    type_: Any = PipelineConfig
    parts = [p for p in re.sub(r"\[\d+\]", "", section).split(".")[1:] if p]
    if parts and parts[0] == "server":
        try:
            from tidegauge.server.config import ServerConfig
        except ImportError:
            return []
        type_, parts = ServerConfig, parts[1:]
    for part in parts:
        hints = typing.get_type_hints(type_) if isinstance(type_, type) else {}
        if part not in hints:
            return []
        type_ = _struct_in(hints[part])
        if type_ is None:
            return []
    return list(type_.__struct_fields__)


def _struct_in(hint: Any) -> Any:
    """The msgspec Struct inside ``X | None`` / ``list[X]`` / ``X | list[X]`` (``None`` if there is none)."""
    import typing

    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return hint
    for arg in typing.get_args(hint):
        found = _struct_in(arg)
        if found is not None:
            return found
    return None


@dataclass
class BuiltPipeline:
    flow: Flow
    checkpoint: CheckpointConfig | None
    max_batch: int
    max_delay: str
    alerting: Any = None
    """the ``alerts:`` section's :class:`~tidegauge.alerting.pipeline_section.PipelineAlerting` (or ``None``)"""
    coordinator: Any = None
    """the :class:`~tidegauge.edge.coordinator.Coordinator` of a ``coordinator:`` section"""
    readings: Stream | None = None
    """the readings: the stream entering the first window step (the scored one when a ``detect`` step comes
    before it), or the last stream when there is no window step (what alerts and the dashboard watch)"""
    windows: list[Stream] = dataclasses.field(default_factory=list)
    """every window step's output, in file order"""


def build_pipeline(config: PipelineConfig, *, base_dir: str | Path = ".") -> BuiltPipeline:
    """Build the flow a validated pipeline describes (paths relative to ``base_dir``)."""
    base = Path(base_dir)
    wm = config.watermark
    flow = Flow(
        config.name,
        key=config.key,
        time=config.time,
        watermark=_watermark(wm),
    )
    sources = config.source if isinstance(config.source, list) else [config.source]
    built = [_source(s, base, i, config) for i, s in enumerate(sources)]
    streams = [flow.source(b, key=s.key, time=s.time, partition_by=s.partition_by)
               for b, s in zip(built, sources, strict=True)]
    known = _fixed_columns(built)
    stream = streams[0].union(*streams[1:]) if len(streams) > 1 else streams[0]
    coordinator = None if config.coordinator is None else _coordinator(flow, config, base)
    if coordinator is not None and coordinator[1]:
        from tidegauge.edge.flow import SensorDiscoveryStep

        stream = stream.then(SensorDiscoveryStep(coordinator[0]), name="edge_sensor_discovery")
    last_window: Stream | None = None
    readings: Stream | None = None  # the records entering the first window step (what `alerts` calls readings)
    windows: list[Stream] = []
    for i, step in enumerate(config.steps):
        kind, params = next(iter(step.items()))
        where = f"$.steps[{i}].{kind}"
        if kind == "cloud_only" and coordinator is not None:
            from tidegauge.edge.flow import CloudOnlyStep

            stream = stream.then(CloudOnlyStep(coordinator[0]), name=f"cloud_only_{i}")
            continue
        if kind == "window" and readings is None:
            readings = stream
        if known is not None:
            known = _check_columns(kind, params, known, where)
        stream = _step(stream, kind, params, where, base)
        if kind == "window":
            last_window = stream
            windows.append(stream)
    sinks = [] if config.sink is None else config.sink if isinstance(config.sink, list) else [config.sink]
    for i, s in enumerate(sinks):
        stream.sink(_sink(s, base, "$.sink" if not isinstance(config.sink, list) else f"$.sink[{i}]"), name=s.name)
    if config.dead_letter is not None:
        dead = config.dead_letter
        flow.dead_letters().sink(_sink(dead, base, "$.dead_letter"), name=dead.name or "dead_letter")
    if config.late is not None:
        if last_window is None:
            raise ConfigError("$.late: there is no window step whose late records could be written; remove 'late'")
        last_window.late().sink(_sink(config.late, base, "$.late"), name=config.late.name or "late")
    cp = None
    if config.checkpoint is not None:
        c = config.checkpoint
        cp = CheckpointConfig(base / c.dir, interval=c.interval, every_batches=c.every_batches, keep=c.keep)
    alerting = None
    if config.alerts is not None:
        from tidegauge.alerting.pipeline_section import build_alerts

        alerting = build_alerts(config.alerts, flow, readings=readings or stream, windows=windows, base_dir=base)
    return BuiltPipeline(flow, cp, config.batch.max_rows, config.batch.max_delay, alerting,
                         None if coordinator is None else coordinator[0], readings or stream, windows)


def _coordinator(flow: Flow, config: PipelineConfig, base: Path) -> tuple[Any, bool]:
    """Build the coordinator and its heartbeat source (and sink); returns it and ``from_readings``."""
    from tidegauge.edge.config import build_coordinator, parse_config
    from tidegauge.edge.flow import EdgeHeartbeatSource

    section = parse_config(config.coordinator)
    coordinator = build_coordinator(section, base_dir=base)
    beats = flow.source(EdgeHeartbeatSource(coordinator), key="node_id", time="timestamp")
    if section.heartbeats is not None:
        sink = _convert(section.heartbeats, SinkConfig, "$.coordinator.heartbeats")
        beats.sink(_sink(sink, base, "$.coordinator.heartbeats"), name=sink.name or "edge_heartbeats_out")
    return coordinator, section.from_readings


def _source(s: SourceConfig, base: Path, i: int, config: PipelineConfig) -> Any:
    where = "$.source" if not isinstance(config.source, list) else f"$.source[{i}]"
    default_time = config.time
    if s.file is not None:
        from tidegauge.connectors.files import FileSource

        return FileSource(
            base / s.file, format=s.format, speed=s.speed, time_column=s.time or default_time, name=s.name
        )
    try:
        if s.mqtt is not None:
            return _mqtt_source(s.mqtt, s.name)
        if s.nats is not None:
            return _nats_source(s.nats, s.name)
        if s.redis is not None:
            from tidegauge.connectors.redis import RedisSource

            r = s.redis
            return RedisSource(r.key, group=r.group, consumer=r.consumer, url=r.url, field=r.field,
                               schema=_schema(r.schema), name=s.name)
        if s.http is not None:
            return _http_source(s.http, base, key=s.key or config.key, time=s.time or default_time, name=s.name)
        if s.kafka is not None:
            from tidegauge.connectors.kafka import KafkaSource

            k = s.kafka
            return KafkaSource(k.topics, group=k.group, bootstrap=k.bootstrap, config=k.config,
                               key_column=k.key_column, schema=_schema(k.schema), name=s.name)
    except (ValueError, TypeError, ConfigError) as exc:
        kind = next(k for k in _SOURCE_KINDS if getattr(s, k) is not None)
        raise ConfigError(f"{where}.{kind}: {exc}") from None
    from tidegauge.connectors.simulator import SimulatorSource
    from tidegauge.simulate import fleet_from_mapping

    try:
        fleet = fleet_from_mapping(s.simulator or {})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}.simulator: {exc}") from None
    return SimulatorSource(fleet, limit=s.limit)


def _schema(schema: dict[str, ColumnType] | None) -> dict[str, pl.DataType] | None:
    if schema is None:
        return None
    import polars as pl

    types: dict[str, pl.DataType] = {"str": pl.String(), "float": pl.Float64(), "int": pl.Int64(),
                                     "bool": pl.Boolean(), "timestamp": pl.Datetime("us", "UTC")}
    return {column: types[t] for column, t in schema.items()}


def _mqtt_source(m: MqttSourceSection, name: str | None) -> Any:
    from tidegauge.connectors.mqtt import MqttConnection, MqttSource

    connection = MqttConnection(host=m.host, port=m.port, client_id=m.client_id, username=m.username,
                                password=m.password)
    return MqttSource(m.topics, connection=connection, qos=m.qos, session=m.session, ack=m.ack,
                      template=m.template, buffer=m.buffer, schema=_schema(m.schema), name=name)


def _nats_source(n: NatsSourceSection, name: str | None) -> Any:
    from tidegauge.connectors.nats import NatsConnection, NatsSource

    return NatsSource(n.stream, n.subject, durable=n.durable, connection=NatsConnection(servers=n.servers),
                      template=n.template, ack_wait=n.ack_wait, max_ack_pending=n.max_ack_pending,
                      schema=_schema(n.schema), name=name)


def _http_source(h: HttpSourceSection, base: Path, *, key: str, time: str, name: str | None) -> Any:
    from tidegauge.connectors.http import HttpIngestSource

    try:
        from tidegauge._size import parse_size
    except ImportError as exc:
        from tidegauge.errors import MissingDependencyError

        raise MissingDependencyError(getattr(exc, "name", None) or "starlette", "server") from exc
    return HttpIngestSource(base / h.log_dir, schema=h.schema, key=key, time=time, durability=h.durability,
                            max_lag_bytes=parse_size(h.max_lag, name="max_lag"), name=name or "http")


def _sink(s: SinkConfig, base: Path, where: str) -> Any:
    try:
        if s.postgres is not None:
            from tidegauge.connectors.postgres import PostgresSink

            p = s.postgres
            return PostgresSink(p.table, key=[p.key] if isinstance(p.key, str) else p.key, conninfo=p.conninfo,
                                create=p.create, name=s.name)
        if s.mqtt is not None:
            from tidegauge.connectors.mqtt import MqttConnection, MqttSink

            m = s.mqtt
            connection = MqttConnection(host=m.host, port=m.port, client_id=m.client_id, username=m.username,
                                        password=m.password)
            return MqttSink(m.topic, connection=connection, qos=m.qos, retain=m.retain, name=s.name)
        if s.nats is not None:
            from tidegauge.connectors.nats import NatsConnection, NatsSink

            n = s.nats
            return NatsSink(n.subject, connection=NatsConnection(servers=n.servers), id_columns=n.id_columns,
                            name=s.name)
        if s.redis is not None:
            from tidegauge.connectors.redis import RedisSink

            r = s.redis
            return RedisSink(r.key, url=r.url, field=r.field, maxlen=r.maxlen, name=s.name)
        if s.outbox is not None:
            from tidegauge.edge.sink import pipeline_outbox_sink

            return pipeline_outbox_sink(s.outbox, name=s.name)
        if s.kafka is not None:
            from tidegauge.connectors.kafka import KafkaSink

            k = s.kafka
            return KafkaSink(k.topic, bootstrap=k.bootstrap, key_column=k.key_column, id_columns=k.id_columns,
                             transactional_id=k.transactional_id, config=k.config, name=s.name)
    except (ValueError, TypeError) as exc:
        kind = next(k for k in _SINK_KINDS if getattr(s, k) is not None)
        raise ConfigError(f"{where}.{kind}: {exc}") from None
    from tidegauge.connectors.files import FileSink

    if s.file is None:
        raise ConfigError(f"{where}: give exactly one of {', '.join(_SINK_KINDS)}")
    path = str(base / s.file) + ("/" if s.file.endswith("/") else "")  # "out/": a directory of parts
    try:
        return FileSink(path, format=s.format, name=s.name)
    except ValueError as exc:
        raise ConfigError(f"{where}.file: {exc}") from None


def _fixed_columns(sources: list[Any]) -> set[str] | None:
    """The stream's columns when every source has a fixed set (``http``: its schema), else ``None``."""
    from tidegauge.connectors.http import HttpIngestSource

    if not sources or not all(isinstance(s, HttpIngestSource) for s in sources):
        return None
    return set.intersection(*(set(s.schema) for s in sources))


def _check_columns(kind: str, params: Any, known: set[str], where: str) -> set[str] | None:
    """Refuse a step that uses a column the stream cannot have (at load, not at the first record: a served
    pipeline would accept records, then fail on them at every restart); the columns after it, if known."""
    def need(fields: Any, what: str) -> None:
        missing = sorted(str(f) for f in fields if str(f) not in known)
        if missing:
            raise ConfigError(f"{where}: {what} {missing} not in the stream's columns {sorted(known)} (an http "
                              f"source's `schema:` replaces the default one: list every field the steps use)")

    if kind == "window" and isinstance(params, dict) and isinstance(params.get("aggregate"), dict):
        need([f for f in params["aggregate"] if f != "*"], "aggregate field(s)")
        return None
    if kind == "detect":
        if isinstance(params, dict) and isinstance(params.get("fields"), list):
            need(params["fields"], "detector field(s)")
        return known | {"score", "is_anomaly", "detector"}
    if kind == "key_by" and isinstance(params, str):
        need([params], "key column")
        return known
    if kind in ("filter", "cloud_only"):
        return known
    return None  # select, with_columns, enrich, ...: columns not tracked further


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

"""``tidegauge serve PIPELINE.yaml``: run a pipeline with the HTTP server (ingest, queries, metrics).

The pipeline file has a ``server:`` section (:class:`~tidegauge.server.ServerConfig`) and usually an
``http`` source::

    source: {http: {log_dir: intake, durability: fsync, max_lag: 16MiB}}
    server: {port: 8080, tokens: [{name: gw, env: TG_TOKEN_GW, scopes: [ingest, read]}]}

The live dashboard is served at ``/`` unless the section says ``dashboard: false``
(:mod:`tidegauge.server.live_pipeline` says what feeds it).

:mod:`tidegauge.pipeline` validates and builds both; ``tidegauge run`` serves such a file too. This is the
config layer: it is the one place that reads the environment (tokens given by ``env``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from tidegauge.cli import app
from tidegauge.errors import ConfigError

logger = logging.getLogger(__name__)

_EDGE_MQTT = typer.Option(
    "--edge-mqtt", help="Also take edge agents' batches from an MQTT v5 broker (agents run with --upstream "
    "mqtt://...): mqtt://host:1883, mqtt://NAME@host:1883 or mqtts://...; each batch is answered on "
    "PREFIX-ack/<agent> once it is stored. Needs --edge-db. Set 'max_queued_messages 0' and 'persistence "
    "true' in mosquitto.conf (see tidegauge.edge.mqtt).", envvar="TIDEGAUGE_EDGE_MQTT", show_envvar=True)

_DEFAULT_CHECKPOINT_INTERVAL = "5s"
"""A served flow without a checkpoint section still checkpoints: the intake log is only trimmed at checkpoints."""


@app.command()
def serve(
    pipeline: Annotated[Path | None, typer.Argument(help="Pipeline YAML file with a 'server:' section.",
                                                    envvar="TIDEGAUGE_PIPELINE", show_envvar=True)] = None,
    host: Annotated[str | None, typer.Option(help="Override server.host.", envvar="TIDEGAUGE_HOST",
                                             show_envvar=True)] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.", envvar="TIDEGAUGE_PORT",
                                             show_envvar=True)] = None,
    hash_token: Annotated[str | None, typer.Option("--hash-token", help="Print the stored form of a token and exit.",
                                                   envvar="TIDEGAUGE_HASH_TOKEN", show_envvar=True)] = None,
    edge_db: Annotated[Path | None, typer.Option(
        "--edge-db", help="Accept edge agents' batches (POST /api/v1/edge/batches), de-duplicated in this SQLite "
        "file: stream X goes to the http source named edge_X, raw readings without one to the first http "
        "source (other streams without one wait in the agents' outboxes). With an "
        "'alerts:' section, edge alert transitions that should page go to its receivers.",
        envvar="TIDEGAUGE_EDGE_DB", show_envvar=True)] = None,
    log_format: Annotated[str, typer.Option("--log-format", help="Log lines as 'text' or 'json' (one object each).",
                                            envvar="TIDEGAUGE_LOG_FORMAT", show_envvar=True)] = "text",
    edge_nats: Annotated[str | None, typer.Option(
        "--edge-nats", help="Also take edge agents' batches from NATS JetStream (agents run with --upstream "
        "nats://...): server URL(s), e.g. nats://127.0.0.1:4222. Needs --edge-db.",
        envvar="TIDEGAUGE_EDGE_NATS", show_envvar=True)] = None,
    edge_nats_stream: Annotated[str, typer.Option(
        "--edge-nats-stream", help="JetStream stream of the agents' batches (created if missing).",
        envvar="TIDEGAUGE_EDGE_NATS_STREAM", show_envvar=True)] = "TIDEGAUGE_EDGE",
    edge_nats_subject: Annotated[str, typer.Option(
        "--edge-nats-subject", help="Subject prefix the agents publish under.",
        envvar="TIDEGAUGE_EDGE_NATS_SUBJECT", show_envvar=True)] = "tidegauge.edge",
    edge_nats_durable: Annotated[str, typer.Option(
        "--edge-nats-durable", help="Name of the durable JetStream consumer.",
        envvar="TIDEGAUGE_EDGE_NATS_DURABLE", show_envvar=True)] = "tidegauge-upstream",
    edge_nats_token: Annotated[str | None, typer.Option(
        "--edge-nats-token", help="Auth token of the NATS server.", envvar="TIDEGAUGE_EDGE_NATS_TOKEN",
        show_envvar=True)] = None,
    edge_mqtt: Annotated[str | None, _EDGE_MQTT] = None,
    edge_mqtt_prefix: Annotated[str, typer.Option(
        "--edge-mqtt-prefix", help="Topic prefix the agents publish under (PREFIX/<agent>/<stream>); answers go "
        "to PREFIX-ack/<agent>.", envvar="TIDEGAUGE_EDGE_MQTT_PREFIX", show_envvar=True)] = "tidegauge/edge",
    edge_mqtt_durable: Annotated[str, typer.Option(
        "--edge-mqtt-durable", help="Client id of the upstream's persistent MQTT session (also the user name "
        "unless the URL has one); one upstream process per name.", envvar="TIDEGAUGE_EDGE_MQTT_DURABLE",
        show_envvar=True)] = "tidegauge-upstream",
    edge_mqtt_token: Annotated[str | None, typer.Option(
        "--edge-mqtt-token", help="MQTT password of the upstream's session.", envvar="TIDEGAUGE_EDGE_MQTT_TOKEN",
        show_envvar=True)] = None,
    edge_mqtt_ca_file: Annotated[Path | None, typer.Option(
        "--edge-mqtt-ca-file", help="CA bundle for an mqtts:// broker (default: the system's).",
        envvar="TIDEGAUGE_EDGE_MQTT_CA_FILE", show_envvar=True)] = None,
) -> None:
    """Run a pipeline and its HTTP server until Ctrl-C (then checkpoint and stop)."""
    from tidegauge.server import hash_token as _hash

    if hash_token is not None:
        typer.echo(_hash(hash_token))
        return
    if pipeline is None:
        raise ConfigError("tidegauge serve needs a pipeline file (tidegauge serve PIPELINE.yaml)")
    if log_format not in ("text", "json"):
        raise ConfigError(f"--log-format {log_format!r}: use 'text' or 'json'")
    from tidegauge.pipeline import build_pipeline, load_pipeline

    loaded = load_pipeline(pipeline)
    if loaded.server is None:
        raise ConfigError(f"{pipeline}: add a 'server:' section (e.g. 'server: {{port: 8080}}') to serve this "
                          "pipeline")
    from tidegauge.server.logs import configure_logging

    # before anything is built: building logs too, and every line must be in the chosen format
    configure_logging("json" if log_format == "json" else "text",
                      access_log=_server(pipeline, loaded, host, port).access_log)
    built = build_pipeline(loaded, base_dir=pipeline.parent)
    served = served_pipeline(pipeline, loaded, built, host=host, port=port)
    runner, config = served.runner, served.server
    receiver = None
    background = []
    for flag, given in (("--edge-nats", edge_nats), ("--edge-mqtt", edge_mqtt)):
        if given is not None and edge_db is None:
            raise ConfigError(f"{flag} needs --edge-db (the file of what each agent's batches brought)")
    mqtt = None
    if edge_mqtt is not None:
        from tidegauge.edge.mqtt import MqttEdgeConfig, parse_mqtt_url

        try:
            parse_mqtt_url(edge_mqtt)
            mqtt = MqttEdgeConfig(prefix=edge_mqtt_prefix, durable=edge_mqtt_durable,
                                  ca_file=None if edge_mqtt_ca_file is None else str(edge_mqtt_ca_file))
        except ValueError as exc:
            raise ConfigError(f"--edge-mqtt: {exc}") from None
    if edge_db is not None:
        from tidegauge.edge.receiver import receiver_for_flow

        manager = None if built.alerting is None else built.alerting.manager
        if manager is None:
            logger.warning("edge alerts are recorded, not paged: add an 'alerts:' section (its receivers page "
                           "them) to %s", pipeline)
        receiver = receiver_for_flow(runner.flow, edge_db, alerts=manager)
        if edge_nats is not None:
            from tidegauge.edge.jetstream import JetStreamConfig, JetStreamIntake

            js = JetStreamConfig(stream=edge_nats_stream, subject=edge_nats_subject, durable=edge_nats_durable)
            from tidegauge.edge.flow import flow_coordinator

            background.append(JetStreamIntake(receiver, edge_nats, token=edge_nats_token, config=js,
                                              coordinator=flow_coordinator(runner.flow)).run)
        if edge_mqtt is not None:
            from tidegauge.edge.flow import flow_coordinator
            from tidegauge.edge.mqtt import MqttIntake

            background.append(MqttIntake(receiver, edge_mqtt, token=edge_mqtt_token, config=mqtt,
                                         coordinator=flow_coordinator(runner.flow)).run)
    result = run_served(runner, config, built.alerting, environ=os.environ, edge_receiver=receiver,
                        background=background, live=served.live)
    typer.echo(f"{result.records_in:,} records in, {sum(result.dead_letters.values()):,} dead letters, "
               f"{result.checkpoints} checkpoints")
    if built.alerting is not None:
        typer.echo(built.alerting.summary())


def run_served(runner: Any, server: Any, alerting: Any, *, environ: Any,
               background: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (), **parts: Any) -> Any:
    """Serve ``runner`` (with the alert API when the pipeline has an ``alerts:`` section) until it ends or a
    signal stops it; the alert manager is closed afterwards. ``parts`` go to :func:`tidegauge.server.serve`
    (``edge_receiver``, ...); each of ``background`` runs in the same event loop until the server stops
    (``JetStreamIntake.run``)."""
    from tidegauge.server import serve as _serve
    from tidegauge.server.app import STARTUP_LOGGER

    # where the server listens, its dashboard, docs and metrics: shown whatever the log level
    logging.getLogger(STARTUP_LOGGER).setLevel(logging.INFO)

    async def main() -> Any:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run(stop)) for run in background]
        try:
            return await _serve(runner, server, environ=environ,
                                alerts=None if alerting is None else alerting.manager, **parts)
        finally:
            stop.set()
            for t in tasks:
                await t

    try:
        return asyncio.run(main())
    finally:
        if alerting is not None:
            alerting.close()


def build_served_pipeline(path: Path, *, host: str | None = None, port: int | None = None) -> tuple[Any, Any]:
    """The runner and server config of a pipeline file with a ``server:`` section (without the dashboard's
    live steps: :func:`served_pipeline` attaches those)."""
    from tidegauge.pipeline import build_pipeline, load_pipeline

    config = load_pipeline(path)
    if config.server is None:
        raise ConfigError(f"{path}: add a 'server:' section (e.g. 'server: {{port: 8080}}') to serve this pipeline")
    return served_runner(path, config, build_pipeline(config, base_dir=path.parent), host=host, port=port)


@dataclass
class ServedPipeline:
    """What :func:`run_served` needs for a pipeline file: the runner, the server config and the dashboard's
    live state (``None`` with ``server.dashboard: false``)."""

    runner: Any
    server: Any
    live: Any


def served_pipeline(path: Path, config: Any, built: Any, *, host: str | None = None, port: int | None = None,
                    checkpoint: Any = None) -> ServedPipeline:
    """:func:`served_runner` with the dashboard: its live steps are attached to ``built``'s streams first
    (:mod:`tidegauge.server.live_pipeline`) unless the server section says ``dashboard: false``."""
    server = _server(path, config, host, port)
    live = None
    dashboard = server.dashboard_config
    if dashboard is not None:
        from tidegauge.server.live_pipeline import attach_dashboard

        live = attach_dashboard(built.flow, built.readings, built.windows, dashboard)
    runner, server = served_runner(path, config, built, host=host, port=port, checkpoint=checkpoint)
    return ServedPipeline(runner, server, live)


def _server(path: Path, config: Any, host: str | None, port: int | None) -> Any:
    from tidegauge.pipeline import server_config

    try:
        return server_config(config, base_dir=path.parent, host=host, port=port)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def served_runner(path: Path, config: Any, built: Any, *, host: str | None = None,
                  port: int | None = None, checkpoint: Any = None) -> tuple[Any, Any]:
    """The runner (checkpointing by default) and :class:`~tidegauge.server.ServerConfig` of a built pipeline."""
    from tidegauge.dataflow import CheckpointConfig, Runner

    server = _server(path, config, host, port)
    cp = checkpoint or built.checkpoint or CheckpointConfig(path.parent / "checkpoints",
                                                            interval=_DEFAULT_CHECKPOINT_INTERVAL)
    # the kernels load before the flow reads its sources (while /readyz says "flow starting"): a first
    # batch that compiled them would leave the first requests' records unread, then refused, for seconds
    runner = Runner(built.flow, checkpoint=cp, max_batch=built.max_batch, max_delay=built.max_delay,
                    warm_up="kernels")
    if built.alerting is not None:
        built.alerting.attach(runner)
    return runner, server

"""``tidegauge agent``: run the edge agent (local pipeline, durable outbox, uplink, heartbeats).

::

    tidegauge agent --id gw-1 --upstream https://cloud:8080 --token $TOKEN --data-dir /var/lib/tidegauge
    tidegauge agent --id gw-1 --upstream https://cloud:8443 --cacert ca.pem ...   # a private CA's server
    tidegauge agent --id gw-1 --upstream nats://broker:4222 --data-dir /var/lib/tidegauge   # via JetStream
    tidegauge agent --id gw-1 --upstream mqtts://broker:8883 --token $PASSWORD --data-dir /var/lib/tidegauge

Every flag has an environment variable (``TIDEGAUGE_AGENT_*``, shown in ``--help``). SIGINT/SIGTERM stop it
after a final checkpoint; the outbox keeps what was not forwarded for the next start.

Once the flags are parsed and checked, the process re-executes itself as the lean agent of
:mod:`tidegauge.edge.launch` (same PID, without typer, click, rich and pydantic); ``--process same`` keeps it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from tidegauge.cli import app

logger = logging.getLogger(__name__)


def _opt(help: str, env: str, *names: str) -> Any:
    return typer.Option(*names, help=help, envvar=f"TIDEGAUGE_AGENT_{env}", show_envvar=True)


@app.command()
def agent(
    id: Annotated[str, _opt("The agent's id (unique in the fleet).", "ID", "--id")],
    upstream: Annotated[str, _opt("Base URL of the upstream tidegauge server (http:// or https://), NATS "
                                  "server(s) (nats://host:4222, comma-separated) to publish to JetStream, or an "
                                  "MQTT v5 broker (mqtt://host:1883 or mqtt://NAME@host:1883, mqtts:// for TLS) "
                                  "whose upstream runs serve --edge-mqtt: a batch leaves the outbox when the "
                                  "upstream answers it, not when the broker takes it.", "UPSTREAM", "--upstream")],
    data_dir: Annotated[Path, _opt("Outbox, checkpoints and local state.", "DATA_DIR", "--data-dir")],
    token: Annotated[str | None, _opt("Bearer token for the upstream (scope ingest); with mqtt(s):// the MQTT "
                                      "password (user name: the URL's, else --id).", "TOKEN", "--token")] = None,
    cacert: Annotated[Path | None, _opt("PEM file of the CA that signed an https:// upstream's (or an mqtts:// "
                                        "broker's) certificate (a private CA), trusted instead of the system's "
                                        "CAs for batches and heartbeats.", "CACERT", "--cacert")] = None,
    pipeline: Annotated[Path | None, _opt("A pipeline YAML to run instead of the default simulated fleet; "
                                          "its 'sink: {outbox: STREAM}' sinks are forwarded.", "PIPELINE",
                                          "--pipeline")] = None,
    forward: Annotated[str, _opt("Streams to forward, comma-separated: readings, windows, anomalies, alerts.",
                                 "FORWARD", "--forward")] = "readings,windows,anomalies,alerts",
    sensors: Annotated[int, _opt("Simulated sensors (default pipeline).", "SENSORS", "--sensors")] = 200,
    rate: Annotated[float, _opt("Simulated readings per second.", "RATE", "--rate")] = 2000.0,
    seed: Annotated[int, _opt("Simulator seed.", "SEED", "--seed")] = 42,
    limit: Annotated[int | None, _opt("Stop the simulator after this many readings (keeps forwarding).",
                                      "LIMIT", "--limit")] = None,
    detect: Annotated[bool, _opt("Run the anomaly detector locally.", "DETECT", "--detect/--no-detect")] = True,
    listen: Annotated[str | None, _opt("host:port of the agent's /metrics, /healthz, /status.", "LISTEN",
                                       "--listen")] = "127.0.0.1:8781",
    checkpoint_interval: Annotated[str, _opt("How often the flow checkpoints (records become sendable).",
                                             "CHECKPOINT_INTERVAL", "--checkpoint-interval")] = "1s",
    heartbeat_interval: Annotated[str, _opt("How often to send a heartbeat.", "HEARTBEAT_INTERVAL",
                                            "--heartbeat-interval")] = "5s",
    fsync: Annotated[str, _opt("Outbox durability: checkpoint, always or os.", "FSYNC", "--fsync")] = "checkpoint",
    max_bytes: Annotated[str | None, _opt("Outbox limit per stream, e.g. readings=100MiB,alerts=10MiB.",
                                          "MAX_BYTES", "--max-bytes")] = None,
    overflow: Annotated[str | None, _opt("Overflow policy per stream, e.g. readings=drop_oldest,"
                                         "alerts=reject_new.", "OVERFLOW", "--overflow")] = None,
    max_age: Annotated[str | None, _opt("Age limit per stream, e.g. readings=1d.", "MAX_AGE", "--max-age")] = None,
    batch_records: Annotated[int, _opt("Largest batch sent upstream (records).", "BATCH_RECORDS",
                                       "--batch-records")] = 10_000,
    uplink_timeout: Annotated[str, _opt("How long a batch or heartbeat waits for the upstream's answer before it "
                                        "counts as a link failure (backoff, then the circuit breaker).",
                                        "UPLINK_TIMEOUT", "--uplink-timeout")] = "10s",
    location: Annotated[str | None, _opt("lat,lon of the gateway (for geo assignment).", "LOCATION",
                                         "--location")] = None,
    labels: Annotated[str | None, _opt("Labels, e.g. site=north,line=2.", "LABELS", "--labels")] = None,
    follow_assignment: Annotated[bool, _opt("Process only the sensors the coordinator assigns (none before it "
                                            "has; all if the upstream has no coordinator). Default pipeline only.",
                                            "FOLLOW_ASSIGNMENT", "--follow-assignment/--all-sensors")] = False,
    capacity: Annotated[int, _opt("How many sensors the agent is willing to process (assignment strategies "
                                  "weigh agents by it).", "CAPACITY", "--capacity")] = 1000,
    jetstream_stream: Annotated[str, _opt("JetStream stream of a nats:// upstream (created if missing).",
                                          "JETSTREAM_STREAM", "--jetstream-stream")] = "TIDEGAUGE_EDGE",
    jetstream_subject: Annotated[str, _opt("Subject prefix of a nats:// upstream: batches go to "
                                           "PREFIX.<id>.<stream>.", "JETSTREAM_SUBJECT",
                                           "--jetstream-subject")] = "tidegauge.edge",
    mqtt_prefix: Annotated[str, _opt("Topic prefix of an mqtt:// upstream: batches go to PREFIX/<id>/<stream>, "
                                     "heartbeats to PREFIX-heartbeat/<id>, answers come on PREFIX-ack/<id>.",
                                     "MQTT_PREFIX", "--mqtt-prefix")] = "tidegauge/edge",
    process: Annotated[str, _opt("lean: once the flags are parsed, re-execute as a lean process that never "
                                 "loads the command line's libraries (~20 MB less resident); same: run in this "
                                 "process.", "PROCESS", "--process")] = "lean",
) -> None:
    """Run the edge agent until Ctrl-C: local pipeline, durable outbox, forwarding upstream."""
    import msgspec

    from tidegauge._size import parse_size
    from tidegauge.edge.agent import DEFAULT_STREAMS, AgentConfig
    from tidegauge.edge.jetstream import JetStreamConfig
    from tidegauge.edge.launch import LaunchConfig, can_exec, exec_agent, run
    from tidegauge.edge.mqtt import MqttEdgeConfig
    from tidegauge.edge.outbox import StreamPolicy
    from tidegauge.edge.uplink import UplinkConfig
    from tidegauge.errors import ConfigError

    if process not in ("lean", "same"):
        raise ConfigError(f"--process {process!r}: use lean or same")
    names = [s.strip() for s in forward.split(",") if s.strip()]
    unknown = [n for n in names if n not in DEFAULT_STREAMS]
    if unknown and pipeline is None:
        raise ConfigError(f"--forward: unknown stream(s) {', '.join(unknown)}; use {', '.join(DEFAULT_STREAMS)} "
                          "(or name the outbox streams of a --pipeline file)")
    streams = {n: DEFAULT_STREAMS.get(n, StreamPolicy()) for n in names}
    for flag, text, field in (("--max-bytes", max_bytes, "max_bytes"), ("--overflow", overflow, "overflow"),
                              ("--max-age", max_age, "max_age")):
        for stream, value in _pairs(flag, text).items():
            if stream not in streams:
                raise ConfigError(f"{flag}: {stream!r} is not forwarded (--forward {forward})")
            v: object = parse_size(value, name=flag) if field == "max_bytes" else value
            streams[stream] = msgspec.structs.replace(streams[stream], **{field: v})
    if follow_assignment and pipeline is not None:
        raise ConfigError("--follow-assignment works with the default pipeline only (its first step keeps the "
                          "assigned sensors); drop --pipeline or --follow-assignment")
    if capacity < 1:
        raise ConfigError(f"--capacity {capacity}: use at least 1")
    loc = None
    if location:
        try:
            lat, lon = (float(x) for x in location.split(","))
        except ValueError:
            raise ConfigError(f"--location {location!r}: use lat,lon (e.g. 52.37,4.89)") from None
        loc = (lat, lon)
    ca = None
    if cacert is not None:
        from tidegauge.edge.uplink import ca_context

        ca = str(cacert.expanduser())
        try:
            ca_context(ca)  # a missing or bad file is reported here, before the agent starts
        except ValueError as exc:
            raise ConfigError(f"--{exc}") from None
    mqtt_ca = ca if upstream.startswith("mqtts://") else None  # for the MQTT client's TLS, not the https one
    config = AgentConfig(node_id=id, upstream=upstream, data_dir=str(data_dir), token=token,
                         cacert=None if mqtt_ca else ca,
                         streams=streams,
                         fsync=fsync, uplink=UplinkConfig(batch_records=batch_records, timeout=uplink_timeout),  # type: ignore[arg-type]
                         checkpoint_interval=checkpoint_interval, heartbeat_interval=heartbeat_interval,
                         sensors=sensors, rate=rate, seed=seed, limit=limit, detect=detect, listen=listen or None,
                         location=loc, labels=_pairs("--labels", labels), follow_assignment=follow_assignment,
                         capacity=capacity,
                         jetstream=JetStreamConfig(stream=jetstream_stream, subject=jetstream_subject),
                         mqtt=MqttEdgeConfig(prefix=mqtt_prefix, ca_file=mqtt_ca))
    launch = LaunchConfig(agent=config, pipeline=None if pipeline is None else str(pipeline))
    if pipeline is not None:
        from tidegauge.pipeline import load_pipeline

        load_pipeline(pipeline)  # a bad file is reported here, before the agent starts
    if process == "lean" and can_exec():
        exec_agent(launch)  # does not return: this process becomes the lean agent
    run(launch)


def _pairs(flag: str, text: str | None) -> dict[str, str]:
    from tidegauge.errors import ConfigError

    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        k, sep, v = item.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise ConfigError(f"{flag}: {item!r} is not name=value")
        out[k.strip()] = v.strip()
    return out

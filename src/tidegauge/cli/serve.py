"""``tidegauge serve PIPELINE.yaml``: run a pipeline with the HTTP server (ingest, queries, metrics).

The pipeline file has a ``server:`` section (:class:`~tidegauge.server.ServerConfig`) and usually an
``http`` source::

    source: {http: {log_dir: intake, durability: fsync, max_lag: 16MiB}}
    server: {port: 8080, tokens: [{name: gw, env: TG_TOKEN_GW, scopes: [ingest, read]}]}

Until ``tidegauge.pipeline`` knows these two sections itself, this command takes them out of the file,
builds the rest with :func:`~tidegauge.pipeline.build_pipeline` and puts the HTTP source in place.
This is the config layer: it is the one place that reads the environment (tokens given by ``env``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
import yaml

from tidegauge.cli import app
from tidegauge.errors import ConfigError

logger = logging.getLogger(__name__)


class _HttpSourceSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    log_dir: str = "intake"
    durability: str = "fsync"
    max_lag: int | str = "16MiB"
    schema: dict[str, str] | None = None
    name: str = "http"


@app.command()
def serve(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file with a 'server:' section.",
                                             envvar="TIDEGAUGE_PIPELINE", show_envvar=True)],
    host: Annotated[str | None, typer.Option(help="Override server.host.", envvar="TIDEGAUGE_HOST",
                                             show_envvar=True)] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.", envvar="TIDEGAUGE_PORT",
                                             show_envvar=True)] = None,
    hash_token: Annotated[str | None, typer.Option("--hash-token", help="Print the stored form of a token and exit.",
                                                   envvar="TIDEGAUGE_HASH_TOKEN", show_envvar=True)] = None,
) -> None:
    """Run a pipeline and its HTTP server until Ctrl-C (then checkpoint and stop)."""
    from tidegauge.server import hash_token as _hash

    if hash_token is not None:
        typer.echo(_hash(hash_token))
        return
    runner, config = build_served_pipeline(pipeline, host=host, port=port)
    from tidegauge.server import serve as _serve

    result = asyncio.run(_serve(runner, config, environ=os.environ))
    typer.echo(f"{result.records_in:,} records in, {sum(result.dead_letters.values()):,} dead letters, "
               f"{result.checkpoints} checkpoints")


def build_served_pipeline(path: Path, *, host: str | None = None, port: int | None = None) -> tuple[Any, Any]:
    """The runner and server config of a pipeline file with a ``server:`` section (and maybe an http source)."""
    from tidegauge.connectors.http import HttpIngestSource
    from tidegauge.dataflow import CheckpointConfig, Runner
    from tidegauge.pipeline import PipelineConfig, build_pipeline
    from tidegauge.server import ServerConfig
    from tidegauge.server.config import parse_size

    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or "server" not in raw:
        raise ConfigError(f"{path}: add a 'server:' section (e.g. 'server: {{port: 8080}}') to serve this pipeline")
    try:
        server = msgspec.convert(raw.pop("server") or {}, ServerConfig)
    except (msgspec.ValidationError, ConfigError) as exc:
        raise ConfigError(f"{path}: at $.server: {exc}") from None
    server = msgspec.structs.replace(server, **{k: v for k, v in (("host", host), ("port", port)) if v is not None})
    server = _relative_to(server, path.parent)
    http: _HttpSourceSection | None = None
    source = raw.get("source")
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(source, dict) and "http" in source:
            try:
                http = msgspec.convert(source["http"] or {}, _HttpSourceSection)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"{path}: at $.source.http: {exc}") from None
            placeholder = Path(tmp) / "placeholder.jsonl"
            placeholder.write_text("")
            raw["source"] = {"file": str(placeholder), "name": http.name}
        try:
            config = msgspec.convert(raw, PipelineConfig)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        built = build_pipeline(config, base_dir=path.parent)
    if http is not None:
        node = built.flow.nodes[http.name]
        node.definition = HttpIngestSource(
            path.parent / http.log_dir, schema=http.schema, key=config.key, time=config.time,  # type: ignore[arg-type]
            durability="os" if http.durability == "os" else "fsync",
            max_lag_bytes=parse_size(http.max_lag, name="source.http.max_lag"), name=http.name)
    cp = built.checkpoint or CheckpointConfig(path.parent / "checkpoints", interval="5s")
    runner = Runner(built.flow, checkpoint=cp, max_batch=built.max_batch, max_delay=built.max_delay)
    return runner, server


def _relative_to(server: Any, base: Path) -> Any:
    """``server`` with its file paths (history, TLS) taken relative to the pipeline file's directory."""
    h = server.history
    history = msgspec.structs.replace(h, **{
        f: str(base / getattr(h, f)) + ("/" if getattr(h, f).endswith("/") else "")
        for f in ("readings", "windows", "anomalies", "dead_letters") if getattr(h, f) is not None})
    tls = server.tls if server.tls is None else msgspec.structs.replace(
        server.tls, cert=str(base / server.tls.cert), key=str(base / server.tls.key))
    return msgspec.structs.replace(server, history=history, tls=tls)

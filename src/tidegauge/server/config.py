"""Server configuration: the ``server:`` section of a pipeline file, as frozen msgspec structs.

.. code-block:: yaml

    server:
      host: 127.0.0.1
      port: 8080
      tokens:
        - {name: gateway, hash: "sha256:9f86d0...", scopes: [ingest]}
        - {name: device-7, env: TG_TOKEN_DEVICE7, scopes: [ingest], sensors: [S00007]}
        - {name: gw-north, env: TG_TOKEN_GW_NORTH, scopes: [ingest], nodes: [gw-north]}
        - {name: ops, env: TG_TOKEN_OPS, scopes: [read, admin]}
      tls: {cert: server.pem, key: server.key}
      open_metrics: false
      max_body_bytes: 8MiB
      rate_limit: {requests_per_s: 200, burst: 400}
      history: {readings: out/readings.parquet, windows: out/windows.parquet}
      dashboard: true                # the default; or false, or {fields: [temperature], history: 10m}

``dashboard`` (on by default) serves the live dashboard at ``/`` with its login and WebSocket push, fed by
live steps attached to the pipeline's streams (:mod:`tidegauge.server.live_pipeline`); ``false`` leaves the
flow as the file describes it and the server without a page.

Tokens are never stored in clear: a token is given as ``hash`` (``sha256:<hex>``, from
``tidegauge serve --hash-token``) or as the name of an environment variable holding the clear token,
which :func:`resolve_tokens` (the server's config layer, the one place that reads the environment)
hashes at start-up.

``sensors`` limits a device's token to its own readings; ``nodes`` limits an edge agent's token to the
edge node ids it may act as (its heartbeats and forwarded batches: ``/api/v1/edge/heartbeat`` and
``/api/v1/edge/batches`` answer 403 for any other ``node_id``). A token without ``nodes`` may act as any
node, and a token with ``sensors`` may not send edge batches or heartbeats at all (a batch carries
many sensors' records: give the gateway its own token with ``nodes``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Literal

import msgspec

from tidegauge._size import parse_size
from tidegauge._time import parse_duration
from tidegauge.errors import ConfigError

__all__ = [
    "SCOPES",
    "DashboardConfig",
    "HistoryConfig",
    "RateLimitConfig",
    "ResolvedToken",
    "Scope",
    "ServerConfig",
    "TlsConfig",
    "TokenConfig",
    "hash_token",
    "parse_size",
    "resolve_tokens",
]

Scope = Literal["ingest", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("ingest", "read", "admin")
_Strict = {"forbid_unknown_fields": True, "frozen": True}


class TokenConfig(msgspec.Struct, **_Strict):
    """One bearer token: ``hash`` (``sha256:<hex>``) or ``env`` (a variable holding the clear token)."""

    name: str
    scopes: list[Scope]
    hash: str | None = None
    env: str | None = None
    sensors: list[str] | None = None
    """if set, the token may only write readings of these sensor ids"""
    nodes: list[str] | None = None
    """if set, the token may only act as these edge node ids (heartbeats and forwarded batches)"""


class TlsConfig(msgspec.Struct, **_Strict):
    cert: str
    key: str


class RateLimitConfig(msgspec.Struct, **_Strict):
    """Token bucket per bearer token: ``requests_per_s`` sustained, ``burst`` at once."""

    requests_per_s: float = 1000.0
    burst: int = 2000


class HistoryConfig(msgspec.Struct, **_Strict):
    """Where the query endpoints read history.

    By default FileSink outputs (Parquet paths as given to the sinks), read with DuckDB. With ``postgres``
    (a libpq connection string), ``readings``/``windows``/``anomalies``/``dead_letters`` name PostgreSQL
    tables (``name`` or ``schema.name``, e.g. the tables the flow's PostgreSQL sinks upsert into).
    """

    readings: str | None = None
    windows: str | None = None
    anomalies: str | None = None
    dead_letters: str | None = None
    postgres: str | None = None

    def __post_init__(self) -> None:
        if self.postgres is not None:
            for field in ("readings", "windows", "anomalies", "dead_letters"):
                table = getattr(self, field)
                if table is not None and not re.fullmatch(r"[A-Za-z_][\w$]*(\.[A-Za-z_][\w$]*)?", table):
                    raise ConfigError(f"history.{field}={table!r}: with history.postgres, give a table name "
                                      "('name' or 'schema.name')")


class DashboardConfig(msgspec.Struct, **_Strict):
    """``server.dashboard`` as a mapping (``true`` is this with its defaults)."""

    fields: list[str] | None = None
    """value columns charted per sensor; by default the first eight numeric columns of the readings"""
    history: str = "5m"
    """how much of each sensor's one-second series the page can show (memory: ~1.2 KB per sensor, field and
    five minutes)"""

    def __post_init__(self) -> None:
        try:
            seconds = parse_duration(self.history, name="server.dashboard.history") // 1_000_000
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        if seconds < 10:
            raise ConfigError(f"server.dashboard.history={self.history!r}: keep at least 10s")
        if self.fields is not None and not self.fields:
            raise ConfigError("server.dashboard.fields: list at least one column (or leave it out: found in the "
                              "first batch)")

    @property
    def history_s(self) -> int:
        return parse_duration(self.history, name="server.dashboard.history") // 1_000_000


class ServerConfig(msgspec.Struct, **_Strict):
    """The ``server:`` section of a pipeline file (see the module docstring)."""

    host: str = "127.0.0.1"
    port: int = 8080
    tokens: list[TokenConfig] = []
    tls: TlsConfig | None = None
    open_metrics: bool = False
    max_body_bytes: int | str = "8MiB"
    rate_limit: RateLimitConfig = RateLimitConfig()
    history: HistoryConfig = HistoryConfig()
    intake_dir: str = "intake"
    durability: Literal["fsync", "os"] = "fsync"
    checkpoint_max_age: str = "60s"
    """/readyz fails when the last checkpoint is older than this (and checkpoints are configured)"""
    retry_after_s: int = 1
    access_log: bool = False
    """one structured JSON log line per request on the ``tidegauge.server.access`` logger (method, path without
    the query string, status, seconds, client address; never a token)"""
    flow: Literal["thread", "loop"] = "thread"
    """where the flow runs: a thread of its own (another core for its CPU work) or the server's event loop"""
    dashboard: bool | DashboardConfig = True
    """serve the live dashboard (see the module docstring); ``tidegauge serve`` and ``tidegauge run`` attach
    its live steps to the pipeline"""

    @property
    def dashboard_config(self) -> DashboardConfig | None:
        """``dashboard`` as a :class:`DashboardConfig` (``None``: no dashboard)."""
        if isinstance(self.dashboard, DashboardConfig):
            return self.dashboard
        return DashboardConfig() if self.dashboard else None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"server.port={self.port}: use 0..65535 (0: any free port)")
        if self.retry_after_s < 1:
            raise ConfigError(f"server.retry_after_s={self.retry_after_s}: use at least 1")
        parse_size(self.max_body_bytes, name="server.max_body_bytes")
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ConfigError("server.tokens: two tokens have the same name; names must be unique")
        for t in self.tokens:
            if (t.hash is None) == (t.env is None):
                raise ConfigError(f"server.tokens[{t.name}]: give exactly one of 'hash: sha256:<hex>' or 'env: VAR'")
            if t.hash is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", t.hash):
                raise ConfigError(f"server.tokens[{t.name}].hash: expected 'sha256:' and 64 hex digits "
                                  "(make one with `tidegauge serve --hash-token`)")
            if not t.scopes:
                raise ConfigError(f"server.tokens[{t.name}].scopes: give at least one of {', '.join(SCOPES)}")
            for field in ("sensors", "nodes"):
                ids = getattr(t, field)
                if ids is not None and (not ids or any(not i.strip() for i in ids)):
                    raise ConfigError(f"server.tokens[{t.name}].{field}: list at least one non-empty id "
                                      f"(or leave '{field}' out: no limit)")
            if t.sensors is not None and t.nodes is not None:
                raise ConfigError(f"server.tokens[{t.name}]: give 'sensors' (a device's token) or 'nodes' (an edge "
                                  "agent's token), not both")

    @property
    def body_limit(self) -> int:
        return parse_size(self.max_body_bytes, name="server.max_body_bytes")


def hash_token(token: str) -> str:
    """The stored form of a clear token: ``sha256:<hex>``.

    >>> hash_token("s3cret")[:15]
    'sha256:1ec1c26b'
    """
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


class ResolvedToken(msgspec.Struct, frozen=True):
    """A token ready for checking: its name, digest (never the clear token), scopes, sensors and nodes."""

    name: str
    digest: bytes
    scopes: frozenset[str]
    sensors: frozenset[str] | None
    nodes: frozenset[str] | None = None


def resolve_tokens(config: ServerConfig, environ: Mapping[str, str]) -> list[ResolvedToken]:
    """Hash every token of ``config``; ``environ`` gives the clear tokens named by ``env``."""
    out = []
    for t in config.tokens:
        if t.env is not None:
            clear = environ.get(t.env)
            if not clear:
                raise ConfigError(f"server.tokens[{t.name}]: environment variable {t.env} is not set or empty")
            digest = hash_token(clear)
        else:
            digest = t.hash or ""
        out.append(ResolvedToken(t.name, bytes.fromhex(digest.split(":", 1)[1]), frozenset(t.scopes),
                                 None if t.sensors is None else frozenset(t.sensors),
                                 None if t.nodes is None else frozenset(t.nodes)))
    return out

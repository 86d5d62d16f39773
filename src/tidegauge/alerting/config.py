"""The typed configuration of alerting (``rules.yaml``): rules, routes, receivers, inhibition, flapping.

A file is validated into frozen ``msgspec.Struct`` values at load time. Every error names the file, the
path inside it (``$.rules[2].for``) and the fix, and nothing is half-loaded.

>>> cfg = parse_config({"rules": [{"name": "hot", "expr": "temperature > 40", "for": "1m"}]})
>>> cfg.rules[0].for_
'1m'
"""

from __future__ import annotations

import logging
import string
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import msgspec
import polars as pl
import yaml

from tidegauge._time import parse_duration
from tidegauge.errors import ConfigError

__all__ = [
    "SEVERITIES",
    "AlertingConfig",
    "FlapConfig",
    "InhibitRuleConfig",
    "ReceiverConfig",
    "RouteConfig",
    "RuleConfig",
    "default_config",
    "load_config",
    "parse_config",
]

logger = logging.getLogger(__name__)

Severity = Literal["critical", "major", "minor", "warning", "info"]
SEVERITIES: tuple[str, ...] = ("critical", "major", "minor", "warning", "info")
RuleKind = Literal["condition", "rate", "no_data", "sequence", "count", "absence", "fleet"]
DurationText = str | int | float


class _Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Frozen, keyword-only, unknown keys refused."""


class RuleConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One rule. ``kind`` picks which fields apply (see the docs of each kind in :mod:`.rules`)."""

    name: str
    kind: RuleKind = "condition"
    expr: str | None = None
    resolve: str | None = None
    column: str | None = None
    per: DurationText = "1s"
    above: float | None = None
    below: float | None = None
    first: str | None = None
    then: str | None = None
    within: DurationText | None = None
    at_least: int | None = None
    over: DurationText | None = None
    when: str | None = None
    min_readings: int = 1
    silent_for: DurationText | None = None
    by: list[str] | None = None
    for_: DurationText = msgspec.field(name="for", default="0s")
    keep_firing_for: DurationText | None = None
    severity: Severity = "warning"
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    annotations: dict[str, str] = msgspec.field(default_factory=dict)


class RouteConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A node of the route tree; unset timing and grouping values are inherited from the parent."""

    receiver: str | None = None
    matchers: list[str] = msgspec.field(default_factory=list)
    group_by: list[str] | None = None
    group_wait: DurationText | None = None
    group_interval: DurationText | None = None
    repeat_interval: DurationText | None = None
    continue_: bool = msgspec.field(name="continue", default=False)
    routes: list[RouteConfig] = msgspec.field(default_factory=list)


class ReceiverConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where notifications go. ``kind`` selects the fields that apply."""

    name: str
    kind: Literal["webhook", "email", "mqtt", "nats", "log"]
    send_resolved: bool = True
    url: str | None = None
    timeout: DurationText = "5s"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    sender: str = "tidegauge@localhost"
    to: list[str] = msgspec.field(default_factory=list)
    starttls: bool = False
    host: str = "127.0.0.1"
    port: int = 1883
    topic: str = "tidegauge/alerts"
    qos: int = 1
    subject: str = "tidegauge.alerts"
    max_attempts: int = 8
    backoff: DurationText = "1s"
    max_backoff: DurationText = "5m"


class InhibitRuleConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A firing alert matching ``source_matchers`` mutes alerts matching ``target_matchers`` with equal ``equal``."""

    source_matchers: list[str]
    target_matchers: list[str]
    equal: list[str] = msgspec.field(default_factory=list)


class FlapConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An alert that fires ``threshold`` times within ``window`` is flapping: it stays firing until stable."""

    window: DurationText = "10m"
    threshold: int = 3


class AlertingConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole ``rules.yaml``."""

    rules: list[RuleConfig]
    route: RouteConfig = msgspec.field(default_factory=lambda: RouteConfig(receiver="log"))
    receivers: list[ReceiverConfig] = msgspec.field(
        default_factory=lambda: [ReceiverConfig(name="log", kind="log")]
    )
    inhibit_rules: list[InhibitRuleConfig] = msgspec.field(default_factory=list)
    flap: FlapConfig = msgspec.field(default_factory=FlapConfig)
    resolved_retention: DurationText = "15m"
    external_url: str = "http://localhost:8080"


def _fail(source: str, path: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{source}: {path}: {problem}; {fix}")


def _check_sql(source: str, path: str, text: str | None, *, required: bool, example: str) -> None:
    if text is None:
        if required:
            raise _fail(source, path, "missing", f"write an SQL condition such as {example!r}")
        return
    try:
        pl.sql_expr(text)
    except Exception as exc:
        raise _fail(source, path, f"{text!r} is not a valid SQL condition ({exc})",
                    f"write an SQL condition such as {example!r}") from exc


def _check_duration(source: str, path: str, value: DurationText | None, *, required: bool = False) -> None:
    if value is None:
        if required:
            raise _fail(source, path, "missing", "give a duration such as '30s', '5m' or '1h'")
        return
    try:
        parse_duration(value, name=path)
    except (ValueError, TypeError) as exc:
        raise _fail(source, path, str(exc), "give a duration such as '30s', '5m' or '1h'") from exc


def _check_template(source: str, path: str, text: str) -> None:
    try:
        list(string.Formatter().parse(text))
    except ValueError as exc:
        raise _fail(source, path, f"bad template {text!r} ({exc})",
                    "use {field} or {field:.1f} with the record's columns; write {{ for a literal brace") from exc


def _check_rule(source: str, i: int, r: RuleConfig) -> None:
    p = f"$.rules[{i}]"
    k = r.kind
    if not r.name.strip():
        raise _fail(source, f"{p}.name", "empty", "give every rule a unique name")
    if k == "condition":
        _check_sql(source, f"{p}.expr", r.expr, required=True, example="temperature > 40")
        _check_sql(source, f"{p}.resolve", r.resolve, required=False, example="temperature < 35")
    elif k == "rate":
        if r.column is None:
            raise _fail(source, f"{p}.column", "missing", "name the value column whose rate of change is checked")
        if r.above is None and r.below is None:
            raise _fail(source, p, "a rate rule needs a threshold", "set `above:` and/or `below:` (units per `per`)")
        _check_duration(source, f"{p}.per", r.per)
    elif k == "no_data":
        _check_duration(source, f"{p}.silent_for", r.silent_for, required=True)
        _check_sql(source, f"{p}.expr", r.expr, required=False, example="sensor_type = 'vibration'")
    elif k in ("sequence", "absence"):
        _check_sql(source, f"{p}.first", r.first, required=True, example="operational_status = 'warning'")
        _check_sql(source, f"{p}.then", r.then, required=True, example="operational_status = 'alert'")
        _check_duration(source, f"{p}.within", r.within, required=True)
    elif k == "count":
        _check_sql(source, f"{p}.expr", r.expr, required=True, example="vibration > 3")
        if r.at_least is None or r.at_least < 1:
            raise _fail(source, f"{p}.at_least", f"{r.at_least!r} is not a positive count", "set e.g. `at_least: 5`")
        _check_duration(source, f"{p}.within", r.within, required=True)
    elif k == "fleet":
        _check_sql(source, f"{p}.expr", r.expr, required=True, example="is_anomaly")
        _check_sql(source, f"{p}.when", r.when or "ratio > 0.15", required=True, example="ratio > 0.15")
        _check_duration(source, f"{p}.over", r.over, required=True)
    for field in ("for_", "keep_firing_for"):
        _check_duration(source, f"{p}.{field.rstrip('_')}", getattr(r, field))
    for name, text in r.annotations.items():
        _check_template(source, f"{p}.annotations.{name}", text)
    if r.by is not None and any(not isinstance(b, str) or not b for b in r.by):
        raise _fail(source, f"{p}.by", f"{r.by!r}", "list column names, e.g. [sensor_id]")


def _check_route(source: str, path: str, route: RouteConfig, receivers: set[str], root: bool) -> None:
    from tidegauge.alerting.routing import Matcher

    if root and route.receiver is None:
        raise _fail(source, f"{path}.receiver", "the root route has no receiver", "name a receiver for the root route")
    if route.receiver is not None and route.receiver not in receivers:
        raise _fail(source, f"{path}.receiver", f"unknown receiver {route.receiver!r}",
                    f"use one of {sorted(receivers)} or add it under `receivers:`")
    for j, m in enumerate(route.matchers):
        try:
            Matcher.parse(m)
        except ConfigError as exc:
            raise _fail(source, f"{path}.matchers[{j}]", str(exc),
                        "write name=value, name!=value, name=~regex") from exc
    for field in ("group_wait", "group_interval", "repeat_interval"):
        _check_duration(source, f"{path}.{field}", getattr(route, field))
    for j, child in enumerate(route.routes):
        _check_route(source, f"{path}.routes[{j}]", child, receivers, False)


def parse_config(data: Any, *, source: str = "<rules>") -> AlertingConfig:
    """Validate ``data`` (as read from YAML) into an :class:`AlertingConfig`; raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a `rules:` list")
    try:
        cfg = msgspec.convert(data, AlertingConfig)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        where = msg.rsplit(" - at ", 1)[1].strip("`") if " - at " in msg else "$"
        problem = msg.rsplit(" - at ", 1)[0]
        raise _fail(source, where, problem, "see the rules.yaml reference for the allowed keys and types") from exc
    names: set[str] = set()
    for i, r in enumerate(cfg.rules):
        if r.name in names:
            raise _fail(source, f"$.rules[{i}].name", f"duplicate rule name {r.name!r}",
                        "give every rule a unique name")
        names.add(r.name)
        _check_rule(source, i, r)
    receivers = {r.name for r in cfg.receivers}
    if len(receivers) != len(cfg.receivers):
        raise _fail(source, "$.receivers", "duplicate receiver name", "give every receiver a unique name")
    for i, rc in enumerate(cfg.receivers):
        if rc.kind == "webhook" and not rc.url:
            raise _fail(source, f"$.receivers[{i}].url", "a webhook needs a url", "set `url: http://host/path`")
        if rc.kind == "email" and not rc.to:
            raise _fail(source, f"$.receivers[{i}].to", "an email receiver needs recipients",
                        "set `to: [ops@example.com]`")
        if rc.kind == "nats" and not rc.url:
            raise _fail(source, f"$.receivers[{i}].url", "a NATS receiver needs a url",
                        "set `url: nats://127.0.0.1:4222`")
        if rc.max_attempts < 1:
            raise _fail(source, f"$.receivers[{i}].max_attempts", "must be >= 1", "set e.g. `max_attempts: 8`")
        for field in ("timeout", "backoff", "max_backoff"):
            _check_duration(source, f"$.receivers[{i}].{field}", getattr(rc, field))
    _check_route(source, "$.route", cfg.route, receivers, True)
    for i, ir in enumerate(cfg.inhibit_rules):
        from tidegauge.alerting.routing import Matcher

        for side in ("source_matchers", "target_matchers"):
            for j, m in enumerate(getattr(ir, side)):
                try:
                    Matcher.parse(m)
                except ConfigError as exc:
                    raise _fail(source, f"$.inhibit_rules[{i}].{side}[{j}]", str(exc),
                                "write name=value, name!=value, name=~regex") from exc
    _check_duration(source, "$.flap.window", cfg.flap.window)
    _check_duration(source, "$.resolved_retention", cfg.resolved_retention)
    return cfg


def load_config(path: str | Path) -> AlertingConfig:
    """Read and validate a ``rules.yaml`` file.

    Raises
    ------
    ConfigError
        If the file is not valid YAML or does not describe valid rules; the message names the path and the fix.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the rules file ({exc.strerror}); check the path") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc}); fix the syntax at the line shown") from exc
    return parse_config(data, source=str(p))


def default_config() -> AlertingConfig:
    """The demo's fleet health rules (``default_rules.yaml`` shipped with the package)."""
    text = resources.files("tidegauge.alerting").joinpath("default_rules.yaml").read_text(encoding="utf-8")
    return parse_config(yaml.safe_load(text), source="default_rules.yaml")

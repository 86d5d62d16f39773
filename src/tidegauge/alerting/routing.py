"""Label matchers, the route tree, inhibition and silences (Alertmanager semantics).

>>> m = Matcher.parse('severity=~"critical|major"')
>>> m.matches({"severity": "major"})
True
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tidegauge._time import parse_duration
from tidegauge.alerting.config import InhibitRuleConfig, RouteConfig
from tidegauge.errors import ConfigError

__all__ = ["Inhibitor", "Matcher", "Route", "Silence", "compile_route"]

logger = logging.getLogger(__name__)

Op = Literal["=", "!=", "=~", "!~"]
_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$')


@dataclass(frozen=True)
class Matcher:
    """``name op value`` with op one of ``=``, ``!=``, ``=~`` (full regex match), ``!~``."""

    name: str
    op: Op
    value: str

    @classmethod
    def parse(cls, text: str) -> Matcher:
        m = _MATCHER.match(text)
        if not m:
            raise ConfigError(f"{text!r} is not a matcher; write name=value, name!=value, name=~regex or name!~regex")
        name, op, value = m.group(1), m.group(2), m.group(3)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise ConfigError(f"{text!r}: bad regular expression ({exc})") from exc
        return cls(name, op, value)  # type: ignore[arg-type]

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.name, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        hit = re.fullmatch(self.value, v) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


@dataclass
class Route:
    """A compiled route; ``group_by`` of ``None`` means every label (``['...']`` in the file)."""

    path: str
    receiver: str
    matchers: tuple[Matcher, ...]
    group_by: tuple[str, ...] | None
    group_wait_us: int
    group_interval_us: int
    repeat_interval_us: int
    continue_: bool
    children: list[Route] = field(default_factory=list)

    def match(self, labels: Mapping[str, str]) -> list[Route]:
        """The routes an alert with ``labels`` goes to (depth first; ``continue`` keeps looking)."""
        if not matches_all(self.matchers, labels):
            return []
        out: list[Route] = []
        for child in self.children:
            hit = child.match(labels)
            out.extend(hit)
            if hit and not child.continue_:
                break
        return out or [self]

    def group_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        if self.group_by is None:
            return dict(labels)
        return {k: labels.get(k, "") for k in self.group_by}

    def walk(self) -> Iterable[Route]:
        yield self
        for c in self.children:
            yield from c.walk()


def compile_route(cfg: RouteConfig, parent: Route | None = None, path: str = "{}") -> Route:
    """Compile the route tree, children inheriting unset values from their parent."""
    def dur(value: str | int | float | None, inherited: int | None, default: str) -> int:
        if value is not None:
            return parse_duration(value)
        return inherited if inherited is not None else parse_duration(default)

    matchers = tuple(Matcher.parse(m) for m in cfg.matchers)
    if cfg.group_by is not None:
        group_by: tuple[str, ...] | None = None if "..." in cfg.group_by else tuple(cfg.group_by)
    else:
        group_by = parent.group_by if parent else ("alertname",)
    receiver = cfg.receiver or (parent.receiver if parent else "")
    if not receiver:
        raise ConfigError("route: the root route needs a receiver")
    route = Route(
        path=path,
        receiver=receiver,
        matchers=matchers,
        group_by=group_by,
        group_wait_us=dur(cfg.group_wait, parent.group_wait_us if parent else None, "30s"),
        group_interval_us=dur(cfg.group_interval, parent.group_interval_us if parent else None, "5m"),
        repeat_interval_us=dur(cfg.repeat_interval, parent.repeat_interval_us if parent else None, "4h"),
        continue_=cfg.continue_,
    )
    for i, child in enumerate(cfg.routes):
        inner = ",".join(str(m) for m in (Matcher.parse(x) for x in child.matchers))
        route.children.append(compile_route(child, route, f"{path}/{i}:{{{inner}}}"))
    return route


@dataclass
class Silence:
    """Mutes alerts whose labels match every matcher, from ``starts_at`` until ``ends_at`` (always finite)."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: int
    ends_at: int
    created_by: str
    comment: str
    created_at: int

    def active(self, now_us: int) -> bool:
        return self.starts_at <= now_us < self.ends_at

    def state(self, now_us: int) -> Literal["pending", "active", "expired"]:
        if now_us < self.starts_at:
            return "pending"
        return "active" if now_us < self.ends_at else "expired"

    def matches(self, labels: Mapping[str, str]) -> bool:
        return matches_all(self.matchers, labels)


class Inhibitor:
    """Mutes target alerts while a matching source alert fires with the same ``equal`` label values."""

    def __init__(self, rules: Sequence[InhibitRuleConfig]) -> None:
        self.rules = [
            (tuple(Matcher.parse(m) for m in r.source_matchers), tuple(Matcher.parse(m) for m in r.target_matchers),
             tuple(r.equal))
            for r in rules
        ]

    def muted(self, firing: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        """Map fingerprint -> inhibiting fingerprint, for every alert of ``firing`` (fp -> labels) that is muted."""
        out: dict[str, str] = {}
        for src_m, tgt_m, equal in self.rules:
            sources: dict[tuple[str, ...], str] = {}
            for fp, labels in firing.items():
                if matches_all(src_m, labels):
                    sources.setdefault(tuple(labels.get(k, "") for k in equal), fp)
            if not sources:
                continue
            for fp, labels in firing.items():
                if fp in out or not matches_all(tgt_m, labels):
                    continue
                src = sources.get(tuple(labels.get(k, "") for k in equal))
                # an alert matching both sides never mutes itself
                if src is not None and src != fp and not matches_all(src_m, labels):
                    out[fp] = src
        return out

"""Bearer tokens with scopes, checked in constant time, and a token-bucket rate limit per token.

Only digests of tokens are kept (:class:`~tidegauge.server.config.ResolvedToken`); a presented token is
hashed and compared with :func:`hmac.compare_digest` against *every* configured digest, so the time taken
does not tell which token (or how much of one) matched. Neither clear tokens nor digests are ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tidegauge.server.config import RateLimitConfig, ResolvedToken

__all__ = ["Authenticator", "Principal", "RateLimiter"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name, scopes, and (for device tokens) the sensors it may write or (for
    edge agents' tokens) the edge nodes it may act as."""

    name: str
    scopes: frozenset[str]
    sensors: frozenset[str] | None = None
    nodes: frozenset[str] | None = None

    def may_write(self, sensor_id: str) -> bool:
        return self.sensors is None or sensor_id in self.sensors

    def edge_refusal(self, node_id: str) -> str | None:
        """Why this token may not act as edge node ``node_id`` (``None``: it may)."""
        if self.sensors is not None:
            return (f"token {self.name!r} is limited to sensors and may not act as an edge node; give the agent "
                    "a token of its own (server.tokens[].nodes)")
        if self.nodes is not None and node_id not in self.nodes:
            return (f"token {self.name!r} may not act as edge node {node_id!r} (it may act as "
                    f"{', '.join(sorted(self.nodes))})")
        return None


ANONYMOUS = Principal("anonymous", frozenset())


class Authenticator:
    """Resolves an ``Authorization: Bearer <token>`` header to a :class:`Principal` (or ``None``)."""

    def __init__(self, tokens: Sequence[ResolvedToken]) -> None:
        self._tokens = list(tokens)
        # built once, not per request (a frozen dataclass's __init__ is slow, and this is every request)
        self._principals = [(t.digest, Principal(t.name, t.scopes, t.sensors, t.nodes)) for t in self._tokens]

    def authenticate(self, header: str | None) -> Principal | None:
        if not header or not self._tokens:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).digest()
        found: Principal | None = None
        for known, principal in self._principals:  # no early exit: constant time in the position of the match
            if hmac.compare_digest(digest, known):
                found = principal
        return found


class RateLimiter:
    """A token bucket per principal name: ``requests_per_s`` sustained, ``burst`` at once.

    Parameters
    ----------
    config:
        The rate and burst.
    clock:
        Seconds, monotonic (injectable for tests).
    """

    def __init__(self, config: RateLimitConfig, clock: Callable[[], float]) -> None:
        if config.requests_per_s <= 0 or config.burst < 1:
            raise ValueError(f"rate limit {config}: requests_per_s must be > 0 and burst >= 1")
        self.rate = config.requests_per_s
        self.burst = float(config.burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, last time)

    def take(self, name: str) -> float:
        """Take one request's token; returns 0 if allowed, else the seconds to wait (for Retry-After)."""
        now = self.clock()
        tokens, last = self._buckets.get(name, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[name] = (tokens - 1.0, now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return max(1.0, math.ceil((1.0 - tokens) / self.rate))

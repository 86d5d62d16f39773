"""The registry of agents: who exists, who is online, and how available each has been.

An agent is *online* from a heartbeat until ``timeout`` passes without another one; then it is *offline*
(the transition happens on the registry's clock, at the next :meth:`AgentRegistry.expire`). Availability
is time online / time known over a sliding ``window``: an online stretch runs from the first heartbeat of
the stretch to now while the agent is online, and to its last heartbeat once it went offline (the last
moment it was known to be alive), so a dead agent's silence counts against it from its last heartbeat,
not from when the timeout noticed.

After a restart the registry is read back from its store. An agent that was online then gets one full
``timeout`` to heartbeat again before it is declared offline, counted from the first heartbeat this
process takes (or from one timeout after its start, if none has come by then): its silence during the
upstream's own downtime, start-up included, is not its fault. (If it does come back in time, the
downtime counts as online for it: the coordinator cannot tell, and gives it the benefit of the doubt.)
Likewise a *stall* of the coordinator's own process (its event loop held by a long batch, the process
suspended), reported by :meth:`AgentRegistry.credit`, does not count as the agents' silence.

>>> from tidegauge._time import ManualClock
>>> clock = ManualClock(0)
>>> reg = AgentRegistry(timeout="10s", window="1h", clock=clock)
>>> _ = reg.record(Heartbeat(node_id="gw-1", sent_at_us=0, version="1"))
>>> clock.advance("30s"); [a.node_id for a in reg.expire()]
['gw-1']
>>> clock.advance("30s"); round(reg.availability("gw-1"), 2)  # alive 0s of 60s known
0.0
"""

from __future__ import annotations

import logging
from collections import deque

from tidegauge._time import Clock, Duration, SystemClock, parse_duration
from tidegauge.edge.heartbeat import Heartbeat
from tidegauge.edge.store import AgentState, CoordinatorStore

__all__ = ["AgentRegistry"]

logger = logging.getLogger(__name__)

_MAX_STALLS = 64  # stalls long enough to report are rare; older ones than an agent's last heartbeat do not count


class AgentRegistry:
    """Agents by node id, their liveness and availability, persisted in a :class:`CoordinatorStore`.

    Parameters
    ----------
    timeout:
        An agent with no heartbeat for this long is offline (several heartbeat intervals: 3 is usual).
    window:
        The availability window.
    clock:
        Processing-time clock (a :class:`~tidegauge._time.ManualClock` in tests).
    store:
        Where the registry is kept (default: in memory, lost at exit).
    """

    def __init__(self, *, timeout: Duration = "15s", window: Duration = "1h", clock: Clock | None = None,
                 store: CoordinatorStore | None = None) -> None:
        self.timeout_us = parse_duration(timeout, name="heartbeat_timeout")
        self.window_us = parse_duration(window, name="availability_window")
        if self.timeout_us <= 0:
            raise ValueError(f"heartbeat_timeout={timeout!r}: must be > 0, e.g. '15s'")
        if self.window_us < self.timeout_us:
            raise ValueError(f"availability_window={window!r} is shorter than the heartbeat timeout {timeout!r}")
        self.clock = clock or SystemClock()
        self.store = store or CoordinatorStore()
        self.agents: dict[str, AgentState] = self.store.load_agents()
        self.started_us = self.clock.now_us()
        self.first_heartbeat_us: int | None = None
        self._stalls: deque[tuple[int, int]] = deque(maxlen=_MAX_STALLS)  # (end, length) of own stalls
        if self.agents:
            logger.info("registry: %d agents restored from %s", len(self.agents), self.store.path)

    def now_us(self) -> int:
        return self.clock.now_us()

    def record(self, hb: Heartbeat) -> tuple[AgentState, bool]:
        """Take a heartbeat; returns the agent's state and whether it just came (back) online.

        Call :meth:`expire` first, so an agent whose timeout passed is offline before its late heartbeat
        brings it back (that gap is downtime).
        """
        now = self.now_us()
        if self.first_heartbeat_us is None:
            self.first_heartbeat_us = now
        a = self.agents.get(hb.node_id)
        if a is None:
            a = AgentState(hb.node_id, hb, first_seen_us=now, last_seen_us=now, online=True, span_start_us=now)
            self.agents[hb.node_id] = a
            logger.info("agent %s registered (version %s, capacity %d)", hb.node_id, hb.version, hb.capacity)
            came = True
        else:
            came = not a.online
            a.heartbeat, a.last_seen_us = hb, now
            if came:
                a.online, a.span_start_us = True, now
                logger.info("agent %s back online", hb.node_id)
        self._prune(a, now)
        return a, came

    def expire(self) -> list[AgentState]:
        """Mark offline every online agent whose timeout passed; returns them."""
        now = self.now_us()
        restart = self.started_us + self.timeout_us if self.first_heartbeat_us is None else self.first_heartbeat_us
        gone = []
        for a in self.agents.values():
            since = max(a.last_seen_us, restart)
            stalled = sum(length for end, length in self._stalls if end > since)
            if a.online and now - since - stalled > self.timeout_us:
                a.online = False
                start = a.span_start_us if a.span_start_us is not None else a.last_seen_us
                a.spans.append((start, a.last_seen_us))
                a.span_start_us = None
                self._prune(a, now)
                gone.append(a)
                logger.warning("agent %s offline: no heartbeat for %.1fs", a.node_id,
                               (now - a.last_seen_us) / 1e6)
        return gone

    def credit(self, length_us: int) -> None:
        """The coordinator could not listen for the last ``length_us`` (its own stall): not the agents' fault."""
        self._stalls.append((self.now_us(), length_us))
        logger.warning("coordinator stalled for %.1fs: agents' timeouts extended by as much", length_us / 1e6)

    def _prune(self, a: AgentState, now: int) -> None:
        lo = now - self.window_us
        if a.spans and a.spans[0][1] < lo:
            a.spans = [(s, e) for s, e in a.spans if e >= lo]

    def online(self) -> list[AgentState]:
        return [a for a in self.agents.values() if a.online]

    def availability(self, node_id: str) -> float:
        return self.agents[node_id].availability(self.now_us(), self.window_us)

    def save(self, agents: list[AgentState] | None = None) -> None:
        """Persist these agents (all by default)."""
        self.store.save_agents(self.agents.values() if agents is None else agents)

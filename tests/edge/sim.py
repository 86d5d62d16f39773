"""In-process agents obeying the assignment protocol, on a manual clock, with a double-processing check."""

from __future__ import annotations

from dataclasses import dataclass, field

from tidegauge._time import ManualClock
from tidegauge.edge.coordinator import Coordinator
from tidegauge.edge.heartbeat import Assignment, Heartbeat, Resources

S = 1_000_000
T0 = 1_767_225_600 * S


@dataclass
class SimAgent:
    """Processes exactly the sensors of the last assignment it received; drops them when its lease lapses."""

    node_id: str
    location: tuple[float, float] | None = None
    capacity: int = 1000
    battery: float | None = None
    alive: bool = True
    generation: int = 0
    sensors: list[str] = field(default_factory=list)
    last_ok_us: int = 0
    lease_s: float = 0.0

    def beat(self, c: Coordinator, now_us: int) -> Assignment:
        if self.lease_s and now_us - self.last_ok_us > self.lease_s * S:
            self.sensors = []  # an obedient agent stops when its lease lapsed
        hb = Heartbeat(node_id=self.node_id, sent_at_us=now_us, version="test", location=self.location,
                       capacity=self.capacity, resources=Resources(cpu_pct=10.0, battery_pct=self.battery),
                       sensors=list(self.sensors), generation=self.generation, load=float(len(self.sensors)))
        a = c.heartbeat(hb)
        self.generation, self.sensors, self.last_ok_us, self.lease_s = a.generation, list(a.sensors), now_us, a.lease_s
        return a

    def restart(self) -> None:
        self.alive, self.generation, self.sensors = True, 0, []


class Fleet:
    """Agents beating every ``interval_s`` on one manual clock; checks no sensor runs on two agents."""

    def __init__(self, c: Coordinator, clock: ManualClock, agents: list[SimAgent]) -> None:
        self.c, self.clock, self.agents = c, clock, {a.node_id: a for a in agents}
        self.max_overlap = 0

    def processing(self) -> dict[str, set[str]]:
        now = self.clock.now_us()
        out = {}
        for a in self.agents.values():
            lapsed = a.lease_s > 0 and now - a.last_ok_us > a.lease_s * S
            if a.alive and not lapsed:
                out[a.node_id] = set(a.sensors)
        return out

    def check(self) -> None:
        seen: dict[str, str] = {}
        for node, sensors in self.processing().items():
            for s in sensors:
                assert s not in seen, f"{s} processed by {seen[s]} and {node} at {self.clock.now_us() - T0}us"
                seen[s] = node

    def run(self, seconds: int, interval_s: float = 1.0) -> None:
        steps = int(seconds / interval_s)
        for _ in range(steps):
            for a in self.agents.values():
                if a.alive:
                    a.beat(self.c, self.clock.now_us())
                    self.check()
            self.clock.advance(interval_s)
            self.c.tick()
            self.check()

    def held(self) -> dict[str, int]:
        return {n: len(s) for n, s in self.processing().items()}

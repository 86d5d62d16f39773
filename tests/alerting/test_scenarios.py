"""Scenario tests: the exact notifications (content and time) on a manual clock, with and without a restart
in the middle (the manager is closed and rebuilt on the same store: a SQLite file, or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.alerting.helpers import T0, Recorder, S, batch
from tidegauge._time import ManualClock
from tidegauge.alerting import AlertManager, parse_config


def config(rules: list[dict[str, Any]], **extra: Any) -> Any:
    route = {"receiver": "rec", "group_by": ["alertname"], "group_wait": "30s", "group_interval": "5m",
             "repeat_interval": "1h", **extra.pop("route", {})}
    return parse_config({"rules": rules, "route": route, "receivers": [{"name": "rec", "kind": "log"}], **extra})


HOT = {"name": "hot", "expr": "temperature > 40", "for": "1m", "annotations": {"summary": "{sensor_id} {temperature}"}}


_OPEN: list[Harness] = []


@pytest.fixture(autouse=True)
def _close_harnesses() -> Iterator[None]:
    """Close every manager a test built (a PostgreSQL store holds a connection until closed)."""
    yield
    while _OPEN:
        _OPEN.pop().manager.close()


class Harness:
    def __init__(self, cfg: Any, db: Path | str) -> None:
        _OPEN.append(self)
        self.cfg, self.db = cfg, db
        self.clock = ManualClock(T0)
        self.rec = Recorder("rec", self.clock)
        self.restarts: list[int] = []
        self.manager = self._new()

    def _new(self) -> AlertManager:
        return AlertManager(self.cfg, store=self.db, clock=self.clock, notifiers={"rec": self.rec})

    def restart(self) -> None:
        """Close the manager and build a new one on the same store (at the clock's current time)."""
        self.manager.close()
        self.manager = self._new()
        self.restarts.append((self.clock.now_us() - T0) // S)

    def run(self, steps: int, readings: Callable[[int], dict[str, float]], *, every: int = 30,
            restart_at: int | Sequence[int] | None = None, start: int = 0, **extra: Any) -> None:
        """Feed ``readings(t)`` every ``every`` seconds for ``steps`` steps (t in seconds after T0).

        ``restart_at`` (seconds after T0, one or several) restarts the manager at exactly that time, also
        between two steps (mid-sequence: after the step before it, before the step at or after it); a
        restart time outside the run is an error rather than a silently skipped restart.
        """
        pending = sorted([restart_at] if isinstance(restart_at, int) else (restart_at or []))
        end = start + (steps - 1) * every
        if pending and not (start <= pending[0] and pending[-1] <= end):
            raise ValueError(f"restart_at={restart_at}: outside the run ({start}..{end} s)")
        for i in range(steps):
            t = start + i * every
            while pending and pending[0] <= t:
                self.clock.set(T0 + pending.pop(0) * S)
                self.restart()
            self.clock.set(T0 + t * S)
            rows = readings(t)
            if rows:
                self.manager.evaluate(batch(rows, t_us=self.clock.now_us(), **extra))
            else:
                self.manager.tick()


@pytest.fixture(params=[None, "restart"])
def restart(request: pytest.FixtureRequest) -> str | None:
    return request.param  # type: ignore[no-any-return]


def test_pending_then_firing_then_resolved(store_target: str, restart: str | None) -> None:
    h = Harness(config([HOT]), store_target)
    # restarts while pending, as it fires, between firing and its page, between resolving and its page
    h.run(16, lambda t: {"a": 50.0 if t < 300 else 20.0, "b": 20.0},
          restart_at=[30, 60, 75, 330] if restart else None)
    # pending at 0, firing at 60 (for: 1m), first flush group_wait later; resolved at 300, next flush at 390
    assert h.rec.summary() == [(90, "firing", [("a", "firing")]), (390, "resolved", [("a", "resolved")])]
    p = h.rec.sent[0][1]
    assert p["groupKey"] == '{}:{alertname="hot"}' and p["version"] == "4"
    assert p["alerts"][0]["annotations"]["summary"] == "a 50.0"
    assert p["alerts"][0]["startsAt"] == "2026-01-01T00:01:00.000000Z"
    assert len(p["alerts"][0]["fingerprint"]) == 16
    assert h.rec.sent[1][1]["alerts"][0]["endsAt"] == "2026-01-01T00:05:00.000000Z"


def test_pending_that_clears_never_notifies(store_target: str, restart: str | None) -> None:
    h = Harness(config([HOT]), store_target)
    h.run(10, lambda t: {"a": 50.0 if t < 30 else 20.0}, restart_at=[15, 30] if restart else None)
    assert h.rec.summary() == []
    assert h.manager.list_alerts() == []


def test_keep_firing_for_delays_resolution(store_target: str, restart: str | None) -> None:
    rule = {**HOT, "keep_firing_for": "2m"}
    h = Harness(config([rule]), store_target)
    h.run(20, lambda t: {"a": 50.0 if t < 300 else 20.0}, restart_at=[75, 330, 389] if restart else None)
    # last active at 270: stays firing until 390, resolution notified at the next flush (390 -> 390+... )
    resolved = [a for a in h.manager.list_alerts() if a.state == "resolved"]
    assert resolved and resolved[0].resolved_at == T0 + 390 * S
    assert h.rec.summary() == [(90, "firing", [("a", "firing")]), (390, "resolved", [("a", "resolved")])]


def test_keep_firing_for_bridges_a_short_gap(store_target: str, restart: str | None) -> None:
    rule = {**HOT, "keep_firing_for": "2m"}
    h = Harness(config([rule]), store_target)
    h.run(16, lambda t: {"a": 20.0 if 150 <= t < 210 else 50.0}, restart_at=[165, 180] if restart else None)
    assert h.rec.summary() == [(90, "firing", [("a", "firing")])]


def test_many_sensors_grouped_into_one_notification(store_target: str, restart: str | None) -> None:
    n = 10_000
    h = Harness(config([{**HOT, "for": "0s"}]), store_target)
    hot = {f"s{i:05d}": 50.0 for i in range(n)}
    h.run(3, lambda t: hot, restart_at=[15, 30] if restart else None)
    assert len(h.rec.sent) == 1
    t, p = h.rec.sent[0]
    assert (t - T0) // S == 30 and len(p["alerts"]) == n and p["status"] == "firing"
    assert len({a["fingerprint"] for a in p["alerts"]}) == n


def test_burst_of_10000_sensors_gives_one_notification_per_group(store_target: str, restart: str | None) -> None:
    n = 10_000
    rule = {**HOT, "for": "0s", "by": ["sensor_id", "site"]}
    h = Harness(config([rule], route={"group_by": ["alertname", "site"]}), store_target)
    hot = {f"s{i:05d}": 50.0 for i in range(n)}
    sites = [f"site-{i % 3}" for i in range(n)]
    h.run(3, lambda t: hot, restart_at=15 if restart else None, site=sites)
    # one page per site at group_wait (30 s), none at 60: the same alerts are still firing
    pages = sorted(((t - T0) // S, p["groupLabels"]["site"], len(p["alerts"])) for t, p in h.rec.sent)
    assert pages == [(30, "site-0", 3334), (30, "site-1", 3333), (30, "site-2", 3333)]
    for _, p in h.rec.sent:
        assert {a["labels"]["site"] for a in p["alerts"]} == {p["groupLabels"]["site"]}


def test_repeat_interval(store_target: str, restart: str | None) -> None:
    h = Harness(config([HOT], route={"repeat_interval": "20m"}), store_target)
    # restarts between two repeats, mid-step just before a repeat is due (1290), in the very second it is due
    # (1320: before that step's tick) and right after one went out (1325 and 2530)
    restarts = [600, 1290, 1320, 1325, 2530]
    h.run(50, lambda t: {"a": 50.0}, every=60, restart_at=restarts if restart else None)
    # ticks every minute: first flush at 120 (due 90), then every 5 m; repeats once 20 m passed
    assert [s[0] for s in h.rec.summary()] == [120, 1320, 2520]
    assert h.restarts == (restarts if restart else [])


def test_acknowledged_alert_does_not_repeat(store_target: str) -> None:
    h = Harness(config([HOT], route={"repeat_interval": "20m"}), store_target)
    h.run(5, lambda t: {"a": 50.0}, every=60)
    (alert,) = h.manager.list_alerts(state="firing")
    h.manager.acknowledge(alert.fingerprint, by="ana", comment="on it")
    h.restart()
    assert h.manager.list_alerts()[0].ack_by == "ana"
    h.run(50, lambda t: {"a": 50.0}, every=60, start=300)
    assert [s[0] for s in h.rec.summary()] == [120]


def test_inhibition_mutes_lower_severity(store_target: str, restart: str | None) -> None:
    rules = [
        {"name": "warm", "expr": "temperature > 30", "severity": "warning"},
        {"name": "burning", "expr": "temperature > 80", "severity": "critical"},
    ]
    inhibit = [{"source_matchers": ["severity=critical"], "target_matchers": ["severity=~warning|minor"],
                "equal": ["sensor_id"]}]
    h = Harness(config(rules, inhibit_rules=inhibit), store_target)
    h.run(4, lambda t: {"a": 90.0, "b": 35.0}, restart_at=30 if restart else None)
    got = sorted(h.rec.summary())
    # a's warning is muted by a's critical; b's warning is not (different sensor_id)
    assert got == [(30, "firing", [("a", "firing")]), (30, "firing", [("b", "firing")])]
    assert h.rec.sent[0][1]["alerts"][0]["labels"]["alertname"] in ("burning", "warm")
    names = {p["alerts"][0]["labels"]["alertname"]: p["alerts"][0]["labels"]["sensor_id"] for _, p in h.rec.sent}
    assert names == {"burning": "a", "warm": "b"}


def test_inhibition_lifts_when_the_critical_resolves(store_target: str, restart: str | None) -> None:
    rules = [
        {"name": "warm", "expr": "temperature > 30", "severity": "warning"},
        {"name": "burning", "expr": "temperature > 80", "severity": "critical"},
    ]
    inhibit = [{"source_matchers": ["severity=critical"], "target_matchers": ["severity=warning"],
                "equal": ["sensor_id"]}]
    h = Harness(config(rules, inhibit_rules=inhibit, route={"group_interval": "1m"}), store_target)
    # a burns until 150, then is only warm; restarts while muted, as the critical resolves, before the page
    h.run(12, lambda t: {"a": 90.0 if t < 150 else 35.0}, restart_at=[60, 140, 150] if restart else None)
    got = h.rec.summary()
    names = [p["groupLabels"]["alertname"] for _, p in h.rec.sent]
    # 30: burning pages, warm is muted (no page at 30 or 90); 150 (30 + 2 x 1 m): burning resolves in that
    # evaluation, and the flushes right after page its resolution and warm's first page, now nothing mutes it
    assert list(zip(got, names, strict=True)) == [
        ((30, "firing", [("a", "firing")]), "burning"),
        ((150, "resolved", [("a", "resolved")]), "burning"),
        ((150, "firing", [("a", "firing")]), "warm"),
    ]


def test_silence_created_and_expiring(store_target: str, restart: str | None) -> None:
    h = Harness(config([{**HOT, "for": "0s"}], route={"group_interval": "1m"}), store_target)
    h.manager.add_silence(["sensor_id=a"], duration="10m", created_by="ops", comment="maintenance")
    # restarts while silenced, in the second it expires, between its expiry and the page
    h.run(30, lambda t: {"a": 50.0}, restart_at=[300, 600, 615] if restart else None)
    # silenced until 600; the next flush after that (group ticks every minute from 30) notifies
    assert h.rec.summary() == [(630, "firing", [("a", "firing")])]
    assert [s.state(h.clock.now_us()) for s in h.manager.silences()] == ["expired"]


def test_silence_expired_early_from_the_api(tmp_path: Path) -> None:
    h = Harness(config([{**HOT, "for": "0s"}], route={"group_interval": "1m"}), tmp_path / "a.db")
    s = h.manager.add_silence(["sensor_id=~a|b"], duration="1h", created_by="ops")
    h.run(5, lambda t: {"a": 50.0})
    assert h.manager.expire_silence(s.id)
    h.run(10, lambda t: {"a": 50.0}, start=150)
    assert h.rec.summary() == [(150, "firing", [("a", "firing")])]


def test_flapping_sensor_is_held_firing(store_target: str, restart: str | None) -> None:
    rule = {**HOT, "for": "0s"}
    h = Harness(config([rule], route={"group_wait": "0s", "group_interval": "30s"}, flap={"window": "10m"}),
                store_target)
    # flips every 30 s for 5 minutes, then stays cool
    h.run(60, lambda t: {"a": 50.0 if (t < 300 and (t // 30) % 2 == 0) else 20.0},
          restart_at=[120, 500] if restart else None)
    got = h.rec.summary()
    assert got[:4] == [(0, "firing", [("a", "firing")]), (30, "resolved", [("a", "resolved")]),
                       (60, "firing", [("a", "firing")]), (90, "resolved", [("a", "resolved")])]
    # the third firing (at 120) marks it flapping: it stays firing, no more pages until stable for 10 minutes
    # (last active at 240 -> resolved at 840)
    assert got[4:] == [(120, "firing", [("a", "firing")]), (840, "resolved", [("a", "resolved")])]
    assert h.rec.sent[4][1]["alerts"][0]["annotations"]["flapping"] == "true"


def test_failing_receiver_is_retried_with_backoff(tmp_path: Path) -> None:
    h = Harness(config([{**HOT, "for": "0s"}], route={"group_wait": "0s"}), tmp_path / "a.db")
    h.rec.fail = True
    h.run(1, lambda t: {"a": 50.0})
    assert h.rec.attempts == 1 and h.manager.metrics()["notification_attempts_failed_total"] == {"rec": 1}
    for dt in (1, 2, 4):  # backoff 1 s, doubling
        h.clock.advance(dt)
        h.manager.tick()
    assert h.rec.attempts == 4
    h.rec.fail = False
    h.clock.advance(8)
    h.manager.tick()
    assert len(h.rec.sent) == 1 and h.manager.metrics()["notifications_sent_total"] == {"rec": 1}
    log = h.manager.store.notifications()
    assert [(e.state, e.attempts) for e in log] == [("sent", 5)]

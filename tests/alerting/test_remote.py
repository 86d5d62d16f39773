"""Alerts raised elsewhere (an edge agent's rules) taken into a manager with :meth:`AlertManager.receive`."""

from __future__ import annotations

from pathlib import Path

from tests.alerting.helpers import T0, Recorder, S, batch
from tidegauge._time import ManualClock
from tidegauge.alerting import AlertManager, parse_config
from tidegauge.alerting.lifecycle import RemoteTransition

CONFIG = parse_config({
    "rules": [{"name": "hot", "expr": "temperature > 100", "by": ["sensor_id"], "severity": "critical"}],
    "route": {"receiver": "rec", "group_wait": "0s", "group_interval": "1s", "group_by": ["sensor_id"]},
    "receivers": [{"name": "rec", "kind": "log"}],
    "resolved_retention": "15m",
})


def _t(sensor: str, state: str, at_s: int, *, notify: bool = True) -> RemoteTransition:
    return RemoteTransition(rule="hot", severity="critical", state=state, at_us=T0 + at_s * S, notify=notify,
                            labels={"alertname": "hot", "severity": "critical", "sensor_id": sensor})


def _manager(tmp: Path, clock: ManualClock, rec: Recorder) -> AlertManager:
    return AlertManager(CONFIG, store=tmp / "alerts.db", clock=clock, notifiers={"rec": rec}, delivery="inline")


def test_remote_alerts_keep_their_times_notify_only_when_asked_and_survive_a_restart(tmp_path: Path) -> None:
    clock = ManualClock(T0 + 3600 * S)  # an hour after the edge raised them: a long outage
    rec = Recorder("rec", clock)
    m = _manager(tmp_path, clock, rec)
    assert m.receive([_t("a", "firing", 10), _t("a", "resolved", 20)], labels={"edge_node": "gw"}, now_us=None) == 2
    m.receive([_t("b", "firing", 30, notify=False), _t("b", "resolved", 40, notify=False),
               _t("c", "pending", 45, notify=False), _t("c", "firing", 50)], labels={"edge_node": "gw"})
    sent = [(a["labels"]["sensor_id"], a["status"], a["startsAt"][:19]) for _, p in rec.sent for a in p["alerts"]]
    # a: fired and resolved, both to notify, in one flush: the firing one is what the group says (resolved
    # alerts are shown only to a group that notified them firing); c: firing with its time on the edge
    assert ("c", "firing", "2026-01-01T00:00:50") in sent
    assert not [s for s in sent if s[0] == "b"], "b was recorded only"
    by = {a.labels["sensor_id"]: a for a in m.list_alerts()}
    assert set(by) == {"a", "b", "c"} and by["b"].state == "resolved" and by["c"].state == "firing"
    assert by["b"].fired_at == T0 + 30 * S and by["b"].resolved_at == T0 + 40 * S
    assert all(a.labels["edge_node"] == "gw" and a.remote for a in by.values())
    # the manager's own rule of the same name neither adopts nor resolves the edge's alert
    clock.advance(60)
    m.evaluate(batch({"c": 20.0}, t_us=clock.now_us()))
    m.tick()
    assert {a.labels["sensor_id"]: a.state for a in m.list_alerts()}["c"] == "firing"
    m.close()
    m2 = _manager(tmp_path, clock, rec)  # restarted: the remote alerts are restored, still remote
    assert {a.labels["sensor_id"]: (a.state, a.remote) for a in m2.list_alerts()} == {
        "a": ("resolved", True), "b": ("resolved", True), "c": ("firing", True)}
    n = len(rec.sent)
    m2.receive([_t("c", "resolved", 4000)], labels={"edge_node": "gw"})
    clock.advance(1)  # the group's next flush (group_interval after the last)
    m2.tick()
    assert [(a["labels"]["sensor_id"], a["status"]) for a in rec.sent[n][1]["alerts"]] == [("c", "resolved")]
    # resolved remote alerts are kept for the retention from when they came, not from their time on the edge
    clock.advance(14 * 60 - 1)
    m2.tick()  # a and b came 15 minutes ago, c's resolution 14: their times on the edge are an hour old
    assert [a.labels["sensor_id"] for a in m2.list_alerts()] == ["c"]
    clock.advance(2 * 60)
    m2.tick()
    assert m2.list_alerts() == []
    m2.close()


def test_silences_apply_to_remote_alerts(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    rec = Recorder("rec", clock)
    m = _manager(tmp_path, clock, rec)
    m.add_silence(['edge_node="gw-2"'], duration="1h", created_by="ops")
    m.receive([_t("a", "firing", 0)], labels={"edge_node": "gw-2"})
    m.receive([_t("b", "firing", 0)], labels={"edge_node": "gw-1"})
    assert [p["alerts"][0]["labels"]["edge_node"] for _, p in rec.sent] == ["gw-1"]
    assert len(m.list_alerts(state="firing")) == 2
    m.close()

"""The alert store's operations on every backend (SQLite, PostgreSQL), and the PostgreSQL URL handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidegauge.alerting.lifecycle import new_alert
from tidegauge.alerting.store import AlertStore, GroupState, open_store

S = 1_000_000


def test_round_trips_and_outbox(store_target: str) -> None:
    store = open_store(store_target)
    try:
        a = new_alert("f1", "hot", {"alertname": "hot", "sensor_id": "a"}, "critical", now_us=5 * S)
        g = GroupState("k", "/", "rec", {"alertname": "hot"}, ["f1"], next_flush=2**62)
        with store.transaction() as conn:
            store.save_alerts(conn, [a])
            store.save_groups(conn, [g])
            store.save_rule_state(conn, {"hot": b"\x00\xffstate"})
            store.enqueue(conn, [("k", "rec", "firing", {"n": i}, 10 * S) for i in range(3)])
        a.state = "firing"
        with store.transaction() as conn:
            store.save_alerts(conn, [a])  # an upsert, not a second row
        assert [(x.fingerprint, x.state, x.labels) for x in store.load_alerts()] == [("f1", "firing", a.labels)]
        assert store.load_groups() == [g] and store.load_rule_state() == {"hot": b"\x00\xffstate"}
        assert store.pending_count("rec") == 3 and store.next_due("rec") == 10 * S and store.next_due("x") is None
        assert store.drop_oldest_pending("rec", keep=1) == 2
        (due,) = store.due("rec", 10 * S)
        assert due.payload == {"n": 2}
        store.mark(due.id, state="sent", attempts=1, next_attempt=10 * S, delivered_at=11 * S, error=None)
        assert [(e.state, e.last_error) for e in store.notifications()] == [
            ("dropped", "outbox full"), ("dropped", "outbox full"), ("sent", None)]
        with pytest.raises(ZeroDivisionError), store.transaction() as conn:
            store.delete_alerts(conn, ["f1"])
            raise ZeroDivisionError  # rolled back: the alert stays
        assert len(store.load_alerts()) == 1
    finally:
        store.close()


def test_silences(store_target: str) -> None:
    store = open_store(store_target)
    try:
        s = store.add_silence(["sensor_id=a"], starts_at=10 * S, ends_at=20 * S, created_by="ops", comment="",
                              now_us=S)
        assert store.silences() == [s]
        assert store.expire_silence(s.id, now_us=5 * S)  # not started yet: becomes empty
        assert store.silences()[0].state(5 * S) == "expired"
        assert not store.expire_silence(s.id, now_us=6 * S) and not store.expire_silence("nope", now_us=6 * S)
    finally:
        store.close()


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    store = open_store(tmp_path / "x.db")
    assert type(store) is AlertStore
    store.close()


def test_postgres_url_password_is_not_shown() -> None:
    from tidegauge.alerting.postgres import _redacted

    assert _redacted("postgresql://tg:s3cret@db:5432/x") == "postgresql://tg:***@db:5432/x"
    assert _redacted("postgresql://tg@db/x") == "postgresql://tg@db/x"

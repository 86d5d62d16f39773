"""Rule kinds, the rules file validation, and AlertStep inside a flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.alerting.helpers import T0, Recorder, S, batch
from tidegauge._time import ManualClock
from tidegauge.alerting import AlertManager, default_config, load_config, parse_config
from tidegauge.errors import ConfigError


def manager(rule: dict[str, Any]) -> tuple[AlertManager, ManualClock]:
    cfg = parse_config({"rules": [rule], "route": {"receiver": "log"}, "receivers": [{"name": "log", "kind": "log"}]})
    clock = ManualClock(T0)
    return AlertManager(cfg, clock=clock, notifiers={"log": Recorder("log", clock)}), clock


def states(m: AlertManager) -> dict[str, str]:
    return {a.labels.get("sensor_id", a.rule): a.state for a in m.list_alerts()}


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"rules": [{"name": "x", "expr": "temperature >"}]}, "$.rules[0].expr"),
        ({"rules": [{"name": "x", "expr": "a > 1", "forr": "1m"}]}, "$.rules[0]"),
        ({"rules": [{"name": "x", "expr": "a > 1", "for": "soon"}]}, "$.rules[0].for"),
        ({"rules": [{"name": "x", "expr": "a > 1", "severity": "huge"}]}, "$.rules[0].severity"),
        ({"rules": [{"name": "x", "kind": "count", "expr": "a > 1", "within": "1m"}]}, "$.rules[0].at_least"),
        ({"rules": [{"name": "x", "expr": "a"}, {"name": "x", "expr": "b"}]}, "$.rules[1].name"),
        ({"rules": [], "route": {"receiver": "pager"}}, "$.route.receiver"),
        ({"rules": [], "route": {"receiver": "log", "matchers": ["sev~~x"]}}, "$.route.matchers[0]"),
        ({"rules": [{"name": "x", "expr": "a", "annotations": {"s": "{oops"}}]}, "$.rules[0].annotations.s"),
    ],
)
def test_bad_rules_are_refused_with_the_path(data: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, source="rules.yaml")
    assert f"rules.yaml: {where}" in str(exc.value)


def test_load_config_file_errors(tmp_path: Path) -> None:
    p = tmp_path / "rules.yaml"
    p.write_text("rules: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("rules:\n  - name: hot\n    expr: temperature > 40\n")
    assert load_config(p).rules[0].name == "hot"


def test_default_rules_load() -> None:
    names = {r.name for r in default_config().rules}
    assert {"HighAnomalyRate", "CriticalAnomaly", "SensorSilent", "EdgeBatteryLow"} <= names


def test_hysteresis_resolve_condition() -> None:
    m, clock = manager({"name": "hot", "expr": "temperature > 40", "resolve": "temperature < 35"})
    for v, want in [(45.0, "firing"), (38.0, "firing"), (34.0, "resolved"), (38.0, "resolved")]:
        clock.advance("10s")
        m.evaluate(batch({"a": v}, t_us=clock.now_us()))
        assert states(m) == {"a": want}, v


def test_rate_of_change() -> None:
    m, clock = manager({"name": "jump", "kind": "rate", "column": "temperature", "per": "1m", "above": 5})
    for v in (20.0, 21.0, 30.0):  # +1/min then +9/min
        clock.advance("1m")
        m.evaluate(batch({"a": v, "b": 20.0}, t_us=clock.now_us()))
    assert states(m) == {"a": "firing"}


def test_no_data_on_processing_time() -> None:
    m, clock = manager({"name": "silent", "kind": "no_data", "silent_for": "5m"})
    m.evaluate(batch({"a": 1.0, "b": 1.0}, t_us=T0))
    clock.advance("4m")
    m.evaluate(batch({"b": 1.0}, t_us=clock.now_us()))
    clock.advance("1m")
    m.tick()
    assert states(m) == {"a": "firing"}
    clock.advance("10s")
    m.evaluate(batch({"a": 1.0}, t_us=clock.now_us()))
    assert states(m) == {"a": "resolved"}


def test_sequence_count_absence_and_fleet() -> None:
    seq, _ = manager({"name": "seq", "kind": "sequence", "first": "temperature > 40", "then": "temperature > 60",
                      "within": "1m"})
    seq.evaluate(pl.concat([batch({"a": 45.0, "b": 65.0}, t_us=T0), batch({"a": 65.0, "b": 45.0}, t_us=T0 + 30 * S)]))
    assert states(seq) == {"a": "firing"}

    cnt, _ = manager({"name": "cnt", "kind": "count", "expr": "temperature > 40", "at_least": 3, "within": "1m"})
    cnt.evaluate(pl.concat([batch({"a": 45.0, "b": 45.0}, t_us=T0 + i * 10 * S) for i in range(2)]
                           + [batch({"a": 45.0}, t_us=T0 + 20 * S)]))
    assert states(cnt) == {"a": "firing"}

    ab, _ = manager({"name": "ab", "kind": "absence", "first": "temperature > 40", "then": "temperature < 30",
                     "within": "1m"})
    ab.evaluate(batch({"a": 45.0, "b": 45.0}, t_us=T0))
    ab.evaluate(batch({"b": 20.0, "c": 25.0}, t_us=T0 + 30 * S))
    assert states(ab) == {}
    ab.evaluate(batch({"c": 25.0}, t_us=T0 + 90 * S))
    assert states(ab) == {"a": "firing"}

    fleet, _ = manager({"name": "rate", "kind": "fleet", "expr": "temperature > 40", "over": "5m",
                            "when": "ratio > 0.15", "min_readings": 10})
    fleet.evaluate(batch({f"s{i}": 50.0 if i < 2 else 20.0 for i in range(20)}, t_us=T0))
    assert states(fleet) == {}
    fleet.evaluate(batch({f"s{i}": 50.0 if i < 8 else 20.0 for i in range(20)}, t_us=T0 + 60 * S))
    (alert,) = fleet.list_alerts()
    assert alert.state == "firing" and alert.values["ratio"] == pytest.approx(10 / 40)


def test_rule_without_its_columns_stays_dormant() -> None:
    m, _ = manager({"name": "battery", "expr": "battery_pct < 20", "by": ["node_id"]})
    assert m.evaluate(batch({"a": 1.0}, t_us=T0)).height == 0


def test_alert_step_in_a_flow(tmp_path: Path) -> None:
    from tidegauge.alerting import AlertStep
    from tidegauge.dataflow import Flow
    from tidegauge.testing import MemorySink, MemorySource

    cfg = parse_config({"rules": [{"name": "hot", "expr": "temperature > 40"}], "route": {"receiver": "log"},
                        "receivers": [{"name": "log", "kind": "log"}]})
    flow = Flow("alerts")
    out = MemorySink()
    flow.source(MemorySource(batch({"a": 50.0, "b": 20.0}, t_us=T0))).then(
        AlertStep(cfg, store=tmp_path / "a.db", delivery="none"), name="alerts").sink(out)
    flow.run()
    rows = out.to_frame()
    assert rows.select("rule", "state").rows() == [("hot", "pending"), ("hot", "firing")]


def test_an_alert_shows_the_values_that_met_its_condition() -> None:
    """Within one batch, a reading that meets the condition followed by one that does not: the alert's
    values and text are those of the matching reading, not of a later one that contradicts them."""
    m, clock = manager({"name": "hot", "expr": "temperature > 40", "keep_firing_for": "1m",
                        "annotations": {"summary": "temperature {temperature:.1f}"}})
    clock.advance("10s")
    m.evaluate(batch({"a": 45.0, "b": 10.0}, t_us=clock.now_us()))
    clock.advance("10s")
    t = clock.now_us()
    m.evaluate(pl.concat([batch({"a": 50.0}, t_us=t), batch({"a": 20.0}, t_us=t + 1)]))
    (alert,) = m.list_alerts()
    assert alert.state == "firing" and alert.values["temperature"] == 50.0
    assert alert.annotations["summary"] == "temperature 50.0"
    assert not alert.active, "the condition no longer holds at the end of the batch (keep_firing_for runs)"

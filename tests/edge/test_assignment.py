"""The agent acting on the coordinator's assignment (``--follow-assignment``, :mod:`tidegauge.edge.follow`)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import polars as pl

from tidegauge._time import ManualClock
from tidegauge.edge.follow import AssignmentView
from tidegauge.edge.heartbeat import Assignment


def frame(t0: int = 0) -> pl.DataFrame:
    return pl.DataFrame({"sensor_id": ["a", "b", "c", "a"], "v": [1, 2, 3, 4],
                         "timestamp": [t0 + 10, t0 + 11, t0 + 12, t0 + 13]})


def test_follows_only_once_an_assignment_came_and_logs_what_it_applied(tmp_path: Path) -> None:
    clock = ManualClock(0)
    log = tmp_path / "assignments.jsonl"
    view = AssignmentView(follow=True, log=log, clock=lambda: clock.now_us() / 1e6)
    assert view.keep_assigned(frame()).height == 0, "no answer from the coordinator yet: nothing"
    view.received(Assignment(node_id="gw", generation=0, sensors=[]), sent_at=0.0)
    assert view.keep_assigned(frame()).height == 0, "generation 0: nothing granted yet"
    view.received(Assignment(node_id="gw", generation=2, sensors=["a", "c"], lease_s=2.0,
                             detection={"a": "edge", "c": "cloud"}), sent_at=0.0)
    assert (view.applied_generation, view.applied_sensors) == (0, []), "received is not applied"
    assert view.keep_assigned(frame(100))["v"].to_list() == [1, 3, 4]
    assert (view.applied_generation, view.applied_sensors) == (2, ["a", "c"])
    assert view.keep_edge_detection(frame())["sensor_id"].to_list() == ["a", "b", "a"]
    clock.advance(2.5)  # no heartbeat answered for longer than the lease: stop processing
    assert view.keep_assigned(frame(200)).height == 0
    assert (view.applied_generation, view.applied_sensors) == (2, [])
    view.received(view.assignment, sent_at=2.5)  # type: ignore[arg-type]
    assert view.keep_assigned(frame(300)).height == 3
    assert (view.skipped, view.processed) == (4 + 4 + 1 + 4 + 1, 6)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["generation"], x["sensors"], x["event_from_us"]) for x in lines] == [
        (0, [], 10), (2, ["a", "c"], 110), (2, [], 210), (2, ["a", "c"], 310)]
    assert all(a["mono_ns"] <= b["mono_ns"] for a, b in itertools.pairwise(lines))


def test_an_upstream_without_coordinator_means_every_sensor() -> None:
    view = AssignmentView(follow=True)
    view.no_coordinator = True
    assert view.keep_assigned(frame()).height == 4
    assert view.wanted() == (0, None)


def test_not_following_ignores_it(tmp_path: Path) -> None:
    view = AssignmentView(follow=False, assignment=Assignment(node_id="gw", generation=5, sensors=["a"]),
                          log=tmp_path / "a.jsonl")
    assert view.keep_assigned(frame()).height == 4
    assert view.applied_sensors == [] and not (tmp_path / "a.jsonl").exists()

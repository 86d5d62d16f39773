"""The agent acting on the coordinator's assignment (``--follow-assignment``)."""

from __future__ import annotations

import polars as pl

from tidegauge.edge.agent import AssignmentView
from tidegauge.edge.heartbeat import Assignment


def frame() -> pl.DataFrame:
    return pl.DataFrame({"sensor_id": ["a", "b", "c", "a"], "v": [1, 2, 3, 4]})


def test_follows_only_once_an_assignment_came() -> None:
    view = AssignmentView(follow=True)
    assert view.keep_assigned(frame()).height == 4, "no coordinator yet: everything"
    view.assignment = Assignment(node_id="gw", generation=0, sensors=[])
    assert view.keep_assigned(frame()).height == 4, "generation 0 is no assignment"
    view.assignment = Assignment(node_id="gw", generation=2, sensors=["a", "c"],
                                 detection={"a": "edge", "c": "cloud"})
    assert view.keep_assigned(frame())["v"].to_list() == [1, 3, 4]
    assert view.skipped == 1
    assert view.keep_edge_detection(frame())["sensor_id"].to_list() == ["a", "b", "a"]


def test_not_following_ignores_it() -> None:
    view = AssignmentView(follow=False, assignment=Assignment(node_id="gw", generation=5, sensors=["a"]))
    assert view.keep_assigned(frame()).height == 4

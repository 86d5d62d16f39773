"""Restoring a checkpoint into a changed pipeline: nodes added since start empty (as in Flink); a node
removed, or of another kind under the same name, is refused with a message naming it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tidegauge.dataflow import CheckpointConfig, Flow, Runner
from tidegauge.errors import CheckpointError
from tidegauge.testing import MemorySink, MemorySource

ROWS = pl.DataFrame({
    "sensor_id": ["a", "b"] * 10,
    "timestamp": pl.datetime_range(pl.datetime(2026, 1, 1, time_zone="UTC"), pl.datetime(2026, 1, 1, 0, 0, 19,
                                   time_zone="UTC"), "1s", eager=True),
    "v": [float(i) for i in range(20)],
})


def _run(tmp: Path, *, added: bool = False, removed: bool = False, retyped: bool = False) -> dict[str, MemorySink]:
    flow = Flow("f")
    sinks = {"out": MemorySink(), "extra": MemorySink()}
    src = flow.source(MemorySource(ROWS, batch_rows=5))
    if not removed:
        step = src.filter("v >= 0", name="keep") if not retyped else src.map_batches(lambda df: df, name="keep")
        step.sink(sinks["out"], name="out")
    else:
        src.sink(sinks["out"], name="out")
    if added:
        src.filter("v >= 10", name="late_step").sink(sinks["extra"], name="extra")
    Runner(flow, checkpoint=CheckpointConfig(tmp / "cp", every_batches=1)).run()
    return sinks


def test_a_node_added_since_the_checkpoint_starts_empty_and_the_rest_resumes(tmp_path: Path) -> None:
    first = _run(tmp_path)
    assert first["out"].to_frame().height == 20
    again = _run(tmp_path, added=True)
    # the source resumed where the checkpoint left it (at the end): nothing replayed through the old path,
    # and the new branch, with no state of its own, saw only what the source emits from there: nothing
    assert again["out"].to_frame().height == 0
    assert again["extra"].to_frame().height == 0


@pytest.mark.parametrize(("change", "named"), [("removed", "keep"), ("retyped", "keep (FilterStep -> ")])
def test_a_node_removed_or_of_another_kind_is_refused_by_name(tmp_path: Path, change: str, named: str) -> None:
    _run(tmp_path)
    with pytest.raises(CheckpointError, match="different pipeline") as err:
        _run(tmp_path, **{change: True})
    assert named in str(err.value)

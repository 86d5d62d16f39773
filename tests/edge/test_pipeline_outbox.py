"""``sink: {outbox: STREAM}`` in a pipeline file: forwarded by ``tidegauge agent --pipeline``, refused elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidegauge.dataflow import CheckpointConfig, Runner
from tidegauge.edge.outbox import Outbox, StreamPolicy
from tidegauge.edge.sink import OutboxSink, agent_outbox
from tidegauge.errors import ConfigError
from tidegauge.pipeline import build_pipeline, load_pipeline
from tidegauge.simulate import FleetConfig
from tidegauge.simulate.files import write_readings

YAML = """
name: gateway
source: {file: readings.parquet}
steps:
  - filter: "temperature > -100"
sink: [{outbox: raw}, {file: local.parquet}]
"""


def test_outbox_sink_in_a_pipeline_file(tmp_path: Path) -> None:
    write_readings(tmp_path / "readings.parquet", FleetConfig(sensors=5, rate=100.0, seed=1), rows=500)
    path = tmp_path / "pipeline.yaml"
    path.write_text(YAML)
    config = load_pipeline(path)
    with pytest.raises(ConfigError, match="tidegauge agent --pipeline"):
        build_pipeline(config, base_dir=tmp_path)
    box = Outbox(tmp_path / "o.db", {"alerts": StreamPolicy()})
    with agent_outbox(box, {"raw": StreamPolicy(priority=3, max_bytes=10**8)}):
        built = build_pipeline(config, base_dir=tmp_path)
    sinks = [n.definition for n in built.flow.nodes.values() if n.kind == "sink"]
    assert any(isinstance(s, OutboxSink) and s.stream == "raw" for s in sinks)
    assert box.streams["raw"].priority == 3
    Runner(built.flow, checkpoint=CheckpointConfig(tmp_path / "cp", interval="1h")).run()
    rows = box.read("raw", after=0, limit=10_000)
    assert [s for s, _, _ in rows] == list(range(1, 501))

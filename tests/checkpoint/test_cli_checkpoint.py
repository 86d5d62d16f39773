"""`tidegauge checkpoint ls|inspect` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest
from typer.testing import CliRunner

from tidegauge.checkpoint import CheckpointStore
from tidegauge.checkpoint.codec import ArrayBlob, pack_array
from tidegauge.cli import _register, app
from tidegauge.errors import CheckpointError

_register()
runner = CliRunner()


class State(msgspec.Struct, frozen=True, tag="cli-test-v1"):
    offset: int
    sums: ArrayBlob
    table: bytes


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    store = CheckpointStore(tmp_path, keep=5)
    for e in (1, 2):
        store.write(
            e,
            {"source:readings": State(e, pack_array(np.arange(4.0)), b"ARROW1xx"), "step:map": None},
            meta={"flow": "demo", "watermark": 5},
        )
    (tmp_path / "chk-0000000003").mkdir()
    return tmp_path


def test_ls(store_dir: Path) -> None:
    res = runner.invoke(app, ["checkpoint", "ls", str(store_dir)])
    assert res.exit_code == 0, res.output
    assert "source:readings" in res.output and "yes" in res.output
    assert "no" in res.output and "incomplete" in res.output


def test_inspect_json(store_dir: Path) -> None:
    res = runner.invoke(app, ["checkpoint", "inspect", str(store_dir), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["epoch"] == 2 and doc["meta"] == {"flow": "demo", "watermark": 5}
    e = doc["entries"]["source:readings"]
    assert e["type"].endswith("State") and e["bytes"] > 0
    assert e["summary"]["offset"] == 2 and e["summary"]["sums"] == "<array <f8 shape [4]>"
    assert e["summary"]["table"].startswith("<Arrow IPC")
    assert doc["entries"]["step:map"]["summary"] is None


def test_inspect_text_and_epoch_envvar(store_dir: Path) -> None:
    res = runner.invoke(app, ["checkpoint", "inspect", str(store_dir)], env={"TIDEGAUGE_CHECKPOINT_EPOCH": "1"})
    assert res.exit_code == 0, res.output
    assert "checkpoint 1" in res.output and "source:readings" in res.output and "flow" in res.output


def test_inspect_errors_are_clean(store_dir: Path) -> None:
    res = runner.invoke(app, ["checkpoint", "inspect", str(store_dir), "--epoch", "3"])
    assert isinstance(res.exception, CheckpointError) and "incomplete" in str(res.exception)
    res = runner.invoke(app, ["checkpoint", "inspect", str(store_dir / "nothing")])
    assert isinstance(res.exception, CheckpointError) and "no complete checkpoint" in str(res.exception)
    res = runner.invoke(app, ["checkpoint", "ls", str(store_dir / "nothing")])
    assert isinstance(res.exception, CheckpointError)


def test_help_shows_envvars() -> None:
    res = runner.invoke(app, ["checkpoint", "inspect", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for var in ("TIDEGAUGE_CHECKPOINT_DIR", "TIDEGAUGE_CHECKPOINT_EPOCH", "TIDEGAUGE_CHECKPOINT_JSON"):
        assert var in res.output

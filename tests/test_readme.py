"""The README's examples run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tidegauge.simulate import FleetConfig
from tidegauge.simulate.files import write_readings

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture
def readings_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_readings(tmp_path / "readings.parquet", FleetConfig(sensors=20, rate=50.0, seed=1), rows=20_000)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_python_example_runs(readings_dir: Path) -> None:
    (code,) = [b for b in blocks("python") if "Flow(" in b]
    exec(compile(code, "README.md", "exec"), {})
    out = pl.read_parquet(readings_dir / "windows.parquet")
    assert out.height > 0
    assert {"sensor_id", "window_start", "window_end", "temperature_count", "temperature_p99"} <= set(out.columns)


def test_pipeline_file_example_runs(readings_dir: Path) -> None:
    (yaml_text,) = [b for b in blocks("yaml") if b.startswith("# pipeline.yaml")]
    (readings_dir / "pipeline.yaml").write_text(yaml_text)
    done = subprocess.run([sys.executable, "-m", "tidegauge", "run", "pipeline.yaml"], capture_output=True,
                          text=True, cwd=readings_dir)
    assert done.returncode == 0, done.stderr
    assert pl.read_parquet(readings_dir / "windows.parquet")["temperature_count"].sum() == 20_000
    ls = subprocess.run([sys.executable, "-m", "tidegauge", "checkpoint", "ls", "state"], capture_output=True,
                        text=True, cwd=readings_dir)
    assert ls.returncode == 0 and "yes" in ls.stdout


def test_bad_pipeline_error_shown_in_readme_is_real(readings_dir: Path) -> None:
    (yaml_text,) = [b for b in blocks("yaml") if b.startswith("# pipeline.yaml")]
    (readings_dir / "pipeline.yaml").write_text(yaml_text.replace("interval: 1s", "intervall: 1s"))
    done = subprocess.run([sys.executable, "-m", "tidegauge", "run", "pipeline.yaml"], capture_output=True,
                          text=True, cwd=readings_dir)
    assert done.returncode == 2
    shown = next(line for b in blocks("text") for line in b.splitlines() if line.startswith("error:"))
    assert done.stderr.strip().replace("\n", " ") == shown


def test_alerting_example_runs(readings_dir: Path) -> None:
    (pipeline,) = [b for b in blocks("yaml") if b.startswith("# pipeline.yaml")]
    (rules,) = [b for b in blocks("yaml") if b.startswith("# rules.yaml")]
    (section,) = [b for b in blocks("yaml") if b.startswith("# add to pipeline.yaml")]
    (readings_dir / "pipeline.yaml").write_text(pipeline + section)
    (readings_dir / "rules.yaml").write_text(rules)
    done = subprocess.run([sys.executable, "-m", "tidegauge", "run", "pipeline.yaml"], capture_output=True,
                          text=True, cwd=readings_dir)
    assert done.returncode == 0, done.stderr
    ls = subprocess.run([sys.executable, "-m", "tidegauge", "alerts", "ls", "--db", "alerts.db", "--json"],
                        capture_output=True, text=True, cwd=readings_dir)
    assert ls.returncode == 0, ls.stderr
    alerts = json.loads(ls.stdout)
    windows = pl.read_parquet(readings_dir / "windows.parquet")
    ever = set(windows.filter(pl.col("temperature_max") > 35)["sensor_id"].to_list())
    last = windows.sort("window_end").group_by("sensor_id").last()
    still = set(last.filter(pl.col("temperature_max") > 35)["sensor_id"].to_list())
    # the window rule saw the window results: an alert (pending: `for` runs on processing time) for each
    # sensor whose last window was hot, none for a sensor never hot (one that cooled down in a later batch
    # is inactive again; in the same batch it stays pending until the next evaluation)
    got = {a["labels"]["sensor_id"] for a in alerts if a["rule"] == "Overheating"}
    assert still and still <= got <= ever and len(ever) < windows["sensor_id"].n_unique()
    assert {a["state"] for a in alerts if a["rule"] == "Overheating"} == {"pending"}
    assert all(a["labels"]["team"] == "plant" for a in alerts if a["rule"] == "Overheating")
    # the rate rule runs on the windows' 10 s means: only a sensor whose mean climbed over 0.5 C a second
    # between two windows can have it (on raw readings, noise between close readings fired it for most)
    steps = (windows.sort("sensor_id", "window_start")
             .with_columns(rate=pl.col("temperature_mean").diff().over("sensor_id")
                           / pl.col("window_start").diff().over("sensor_id").dt.total_seconds()))
    climbed = set(steps.filter(pl.col("rate") > 0.5)["sensor_id"].to_list())
    jumped = {a["labels"]["sensor_id"] for a in alerts if a["rule"] == "TemperatureJump"}
    assert jumped <= climbed and len(climbed) < windows["sensor_id"].n_unique() // 2, (jumped, climbed)


def test_server_example_is_a_valid_pipeline_file(tmp_path: Path) -> None:
    from tidegauge.pipeline import build_pipeline, load_pipeline, server_config

    (yaml_text,) = [b for b in blocks("yaml") if b.startswith("# served.yaml")]
    (tmp_path / "served.yaml").write_text(yaml_text)
    config = load_pipeline(tmp_path / "served.yaml")
    server = server_config(config, base_dir=tmp_path)
    assert server is not None and server.tls is not None and server.history.postgres is not None
    assert [t.name for t in server.tokens] == ["gateway", "device-7", "ops", "gw-north"]
    assert server.tokens[1].sensors == ["S00007"] and server.tokens[3].nodes == ["gw-north"]
    build_pipeline(config, base_dir=tmp_path)


def test_dashboard_example_is_a_valid_pipeline_file(tmp_path: Path) -> None:
    from tidegauge.cli.serve import served_pipeline
    from tidegauge.pipeline import build_pipeline, load_pipeline

    (yaml_text,) = [b for b in blocks("yaml") if b.startswith("# plant.yaml")]
    (tmp_path / "plant.yaml").write_text(yaml_text)
    config = load_pipeline(tmp_path / "plant.yaml")
    served = served_pipeline(tmp_path / "plant.yaml", config, build_pipeline(config, base_dir=tmp_path))
    assert served.live is not None and served.live.fields == ["temperature", "pressure"]
    assert served.live.history_s == 600
    nodes = served.runner.flow.nodes
    assert nodes["dashboard"].inputs[0][0].startswith("detect")
    assert nodes["dashboard_windows"].inputs[0][0].startswith("window")

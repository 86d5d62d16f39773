"""Pipeline files: every mistake is refused with the path inside the file and the fix."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tidegauge.errors import ConfigError
from tidegauge.pipeline import build_pipeline, load_pipeline

GOOD = """
source: {file: readings.csv}
steps:
  - filter: "temperature > -40"
  - window:
      type: sliding
      size: 1m
      slide: 10s
      aggregate: {temperature: [count, p50, {name: spread, expr: "max(temperature) - min(temperature)"}]}
sink: {file: out.parquet}
dead_letter: {file: dead.jsonl}
late: {file: late.jsonl}
checkpoint: {dir: state, interval: 5s, every_batches: 10}
watermark: {max_delay: 2s, idle_timeout: 30s, max_future: 10m}
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "readings.csv").write_text("sensor_id,timestamp,temperature\na,2026-01-01T00:00:00Z,1.0\n")
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_a_full_pipeline_builds(tmp_path: Path) -> None:
    built = build_pipeline(load_pipeline(write(tmp_path, GOOD)), base_dir=tmp_path)
    kinds = [n.kind for n in built.flow.nodes.values()]
    assert kinds.count("sink") == 3
    assert built.checkpoint is not None and built.checkpoint.every_batches == 10
    assert built.flow.watermark.max_delay == 2_000_000 and built.flow.watermark.max_future == 600_000_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("interval: 5s", "intervall: 5s"), r"unknown field `intervall` - at `\$.checkpoint`; valid keys here: dir"),
        (("max_delay: 2s", "max_delay: 2 parsecs"), r"watermark.max_delay: '2 parsecs' is not a duration"),
        (("max_future: 10m", "max_future: 1s"), r"at \$.watermark: watermark.max_future .* must be greater than"),
        (("max_future: 10m", "max_future: 10m, future_window: 0"), r"at \$.watermark: watermark.future_window"),
        (("type: sliding", "type: hopping"), r"\$.steps\[1\].window.*hopping"),
        (("slide: 10s", "slide: 7s"), r"multiple"),
        (("- filter: \"temperature > -40\"", "- filtre: \"x\""), r"\$.steps\[0\]: each step is a mapping with one key"),
        (("- filter: \"temperature > -40\"", "- filter: \"temperature >>> 4\""), r"not a valid SQL condition"),
        (("[count, p50", "[count, p101"), r"p101"),
        (("source: {file: readings.csv}", "source: {file: readings.csv, simulator: {}}"), r"exactly one of"),
    ],
)
def test_bad_files_are_refused_precisely(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    assert change[0] in GOOD
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises((ConfigError, ValueError), match=message):
        build_pipeline(load_pipeline(path), base_dir=tmp_path)


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(write(tmp_path, "source: [unclosed"))
    with pytest.raises(ConfigError, match="no such pipeline file"):
        load_pipeline(tmp_path / "nope.yaml")


def test_a_simulator_source_runs_from_a_pipeline_file(tmp_path: Path) -> None:
    import polars as pl

    text = """
source: {simulator: {sensors: 7, rate: 70, seed: 3, start: "2026-01-01T00:00:00Z", faults: {late: 0.01, late_by: 2m}},
         limit: 700}
sink: {file: out.parquet}
"""
    built = build_pipeline(load_pipeline(write(tmp_path, text)), base_dir=tmp_path)
    built.flow.run()
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.height == 700 and out["sensor_id"].n_unique() == 7
    first = out.filter(pl.col("truth_fault") != "late")["timestamp"].min()
    assert isinstance(first, datetime) and first.isoformat().startswith("2026-01-01T00:00:00")
    with pytest.raises(ConfigError, match=r"\.simulator: unknown simulator option 'sensor'; valid: .*sensors"):
        build_pipeline(load_pipeline(write(tmp_path, text.replace("sensors: 7", "sensor: 7"))), base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown fault option 'lat'"):
        build_pipeline(load_pipeline(write(tmp_path, text.replace("late: 0.01", "lat: 0.01"))), base_dir=tmp_path)


@pytest.mark.parametrize(("steps", "message"), [
    ("[{window: {type: tumbling, size: 10s, aggregate: {temperature: [mean]}}}]",
     r"\$\.steps\[0\]\.window: aggregate field\(s\) \['temperature'\] not in the stream's columns"),
    ("[{detect: {type: zscore, fields: [pressure]}}]", r"detector field\(s\) \['pressure'\]"),
    ("[{filter: 'v > 1'}, {key_by: site}]", r"\$\.steps\[1\]\.key_by: key column \['site'\]"),
])
def test_steps_using_a_column_the_http_schema_lacks_are_refused_at_load(
        tmp_path: Path, steps: str, message: str) -> None:
    """A served pipeline would accept such records and fail on them at every restart: refuse the file."""
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsource: {http: {log_dir: intake, schema: {sensor_id: str, timestamp: timestamp, "
                    f"v: float}}}}}}\nsteps: {steps}\nsink: {{file: out/x.parquet}}\n")
    with pytest.raises(ConfigError, match=message):
        build_pipeline(load_pipeline(path), base_dir=tmp_path)


def test_columns_a_detector_adds_can_be_aggregated(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsource: {http: {log_dir: intake, schema: {sensor_id: str, timestamp: timestamp, "
                    "v: float}}}\nsteps: [{detect: {type: zscore, fields: [v]}}, {window: {type: tumbling, "
                    "size: 10s, aggregate: {v: [mean], score: [max], is_anomaly: [sum]}}}]\n"
                    "sink: {file: out/x.parquet}\n")
    assert build_pipeline(load_pipeline(path), base_dir=tmp_path).flow is not None


def test_a_file_sink_ending_in_a_slash_writes_a_directory_of_parts(tmp_path: Path) -> None:
    import polars as pl

    text = """
source: {simulator: {sensors: 3, rate: 30, seed: 1, start: "2026-01-01T00:00:00Z"}, limit: 90}
sink: {file: out/, format: jsonl}
"""
    build_pipeline(load_pipeline(write(tmp_path, text)), base_dir=tmp_path).flow.run()
    parts = sorted((tmp_path / "out").glob("*.jsonl"))
    assert parts and sum(pl.read_ndjson(p).height for p in parts) == 90
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(ConfigError, match=r"\$\.sink\.file: .*writes a directory of parts: pass format="):
        build_pipeline(load_pipeline(write(tmp_path, text.replace(", format: jsonl", ""))), base_dir=tmp_path)


def test_the_run_command_gives_back_the_signal_handlers_it_took(tmp_path: Path) -> None:
    """Run in-process (a test runner, a notebook), ``tidegauge run`` must not leave its Ctrl-C handler
    behind: it would stop a finished flow and swallow the caller's next Ctrl-C."""
    import signal

    from typer.testing import CliRunner

    from tidegauge.cli import _register, app

    _register()
    text = """
source: {simulator: {sensors: 2, rate: 20, seed: 1, start: "2026-01-01T00:00:00Z"}, limit: 20}
sink: {file: out.parquet}
"""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    done = CliRunner().invoke(app, ["run", str(write(tmp_path, text)), "--quiet"])
    assert done.exit_code == 0, done.output
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before

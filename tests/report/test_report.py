"""`tidegauge report` on a real run: every figure drawn and embedded, numbers equal to polars computed
independently, the time range cuts them, and missing parts are said, not crashed on."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import polars as pl
import pytest

from tidegauge.alerting import AlertStore
from tidegauge.report import ReportConfig, ReportResult, build_report, find_run
from tidegauge.report.loading import read_table

from .fixture_run import START, make_run

FLEET_FIGURES = {"throughput", "latency", "anomalies", "scores", "alerts", "edge"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """What a report page shows: summary cells by key, embedded images by figure, sections."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.images: dict[str, tuple[str, bytes]] = {}  # section id -> (data-file, decoded PNG)
        self.missing: dict[str, str] = {}  # section id -> note
        self._section: str | None = None
        self._in_missing_note = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._section = a.get("id")
        elif tag == "td" and "data-key" in a:
            self.values[a["data-key"]] = a["data-value"]
        elif tag == "img" and self._section:
            src = a["src"]
            assert src.startswith("data:image/png;base64,"), src[:40]
            self.images[self._section] = (a["data-file"], base64.b64decode(src.split(",", 1)[1]))
        elif tag == "p" and a.get("class") == "missing":
            self._in_missing_note = True

    def handle_data(self, data: str) -> None:
        if self._in_missing_note and self._section:
            self.missing[self._section] = self.missing.get(self._section, "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self._in_missing_note = False
        elif tag == "section":
            self._section = None


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReportResult]:
    data_dir = tmp_path_factory.mktemp("history")
    run_dir = make_run(data_dir)
    return run_dir, build_report(ReportConfig(data_dir=str(data_dir), out=str(run_dir.parent / "out")))


def _page(result: ReportResult) -> Page:
    return Page(result.html.read_text(encoding="utf-8"))


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    img = matplotlib.image.imread(path)
    h, w = img.shape[:2]
    assert 600 <= w <= 2000 and 250 <= h <= 2000, (path.name, w, h)
    # something is drawn: many distinct colours, not a blank canvas
    rgb = (img[..., :3] * 255).astype(np.uint32).reshape(-1, 3)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    assert len(np.unique(packed)) > 20, path.name
    assert (rgb < 200).any(axis=1).mean() > 0.01, path.name


def test_every_figure_is_drawn_as_a_png_and_embedded_in_the_page(full: tuple[Path, ReportResult]) -> None:
    _, result = full
    sensors = {n for n in result.pngs if n.startswith("sensor-")}
    assert set(result.pngs) == FLEET_FIGURES | sensors
    assert len(sensors) == 5
    assert result.missing == {}
    page = _page(result)
    for name, path in result.pngs.items():
        assert path.parent == result.html.parent
        _check_png(path)
        file, embedded = page.images[f"fig-{name}"]
        assert file == path.name
        assert embedded == path.read_bytes()
    assert page.missing == {}


def test_summary_numbers_equal_polars_computed_independently(full: tuple[Path, ReportResult]) -> None:
    run_dir, result = full
    v = _page(result).values
    r = pl.read_parquet(run_dir / "readings.parquet")
    assert int(v["readings"]) == r.height
    assert int(v["sensors"]) == r["sensor_id"].n_unique()
    assert int(v["anomalous"]) == r["is_anomaly"].sum()
    assert int(v["injected"]) == r["truth_anomaly"].sum()
    assert int(v["true_positive"]) == r.filter(pl.col("is_anomaly") & pl.col("truth_anomaly")).height
    assert float(v["latency_p99"]) == pytest.approx(r["latency_ms"].quantile(0.99, interpolation="linear"))
    assert float(v["latency_p50"]) == pytest.approx(r["latency_ms"].median())
    assert int(v["windows_1m"]) == pl.read_parquet(run_dir / "windows_1m.parquet").height
    dead = pl.read_ndjson(run_dir / "dead_letters.jsonl")
    assert int(v["dead_letters"]) == dead.height > 0
    assert int(v["edge_nodes"]) == 3
    store = AlertStore(run_dir / "alerts.sqlite")
    alerts = store.load_alerts()
    store.close()
    assert int(v["alerts"]) == len(alerts) > 0
    for rule, k in Counter(a.rule for a in alerts).items():
        assert int(v[f"rule_{rule}"]) == k
    html = result.html.read_text(encoding="utf-8")
    table = html[html.index('<table id="alerts">'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 1 + min(len(alerts), 50)  # the header and one row per alert
    # the top-sensor figures are the sensors with the most flagged readings
    flagged = r.group_by("sensor_id").agg(pl.col("is_anomaly").sum().alias("n")).sort("n", descending=True)
    fifth = flagged["n"][4]
    for name in (n for n in result.pngs if n.startswith("sensor-")):
        sensor = name.removeprefix("sensor-")
        assert flagged.filter(pl.col("sensor_id") == sensor)["n"].item() >= fifth
    manifest = json.loads((result.html.parent / "report.json").read_text())
    assert {s["key"]: s["value"] for sec in manifest["summary"] for s in sec["stats"]}["readings"] == r.height


def test_a_time_range_cuts_every_count(full: tuple[Path, ReportResult], tmp_path: Path) -> None:
    run_dir, whole = full
    start, end = START + timedelta(minutes=2), START + timedelta(minutes=4, seconds=30)
    out = tmp_path / "cut"
    # written over the whole-run report: its sensor figures that this one does not draw are removed
    shutil.copytree(whole.html.parent, out)
    before = {p.name for p in out.glob("sensor-*.png")}
    env = {**os.environ, "TIDEGAUGE_REPORT_START": start.isoformat()}
    done = subprocess.run(
        [sys.executable, "-m", "tidegauge", "report", "--data-dir", str(run_dir.parent), "--run", run_dir.name,
         "--end", end.strftime("%Y-%m-%dT%H:%M:%S"), "--out", str(out), "--top", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert str(out / "report.html") in done.stdout
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    assert len(list(out.glob("sensor-*.png"))) == 2 and len(before) == 5
    r = pl.read_parquet(run_dir / "readings.parquet").filter(pl.col("timestamp").is_between(start, end, closed="left"))
    whole_v = _page(whole).values
    v = page.values
    assert int(v["readings"]) == r.height < int(whole_v["readings"])
    assert int(v["anomalous"]) == r["is_anomaly"].sum()
    assert int(v["injected"]) == r["truth_anomaly"].sum()
    assert float(v["latency_p99"]) == pytest.approx(r["latency_ms"].quantile(0.99, interpolation="linear"))
    assert datetime.fromisoformat(v["first"]) >= start and datetime.fromisoformat(v["last"]) < end
    w = pl.read_parquet(run_dir / "windows_1m.parquet")
    assert int(v["windows_1m"]) == w.filter(pl.col("window_start").is_between(start, end, closed="left")).height
    edge = pl.read_parquet(run_dir / "edge.parquet")
    assert int(v["heartbeats"]) == edge.filter(pl.col("timestamp").is_between(start, end, closed="left")).height
    store = AlertStore(run_dir / "alerts.sqlite")
    alerts = store.load_alerts()
    store.close()
    lo, hi = (int(t.timestamp() * 1_000_000) for t in (start, end))
    overlapping = [a for a in alerts if a.active_since < hi and (a.resolved_at or a.updated_at) >= lo]
    assert int(v.get("alerts", 0)) == len(overlapping) > 0
    resolved_by_end = sum(a.resolved_at is not None and a.resolved_at < hi for a in overlapping)
    firing_by_end = sum(a.fired_at is not None and a.fired_at < hi for a in overlapping) - resolved_by_end
    assert int(v["alerts_resolved"]) == resolved_by_end
    assert int(v["alerts_firing"]) == firing_by_end
    assert int(v["alerts_pending"]) == len(overlapping) - resolved_by_end - firing_by_end
    for f in FLEET_FIGURES:
        assert f"fig-{f}" in page.images


def test_missing_parts_are_named_in_place_of_their_figures(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, sensors=5, rate=20.0, seconds=180, latency=False, alerts=False, edge=False)
    shutil.rmtree(run_dir / "windows_5m.parquet.parts")
    (run_dir / "windows_5m.parquet").unlink()
    # a run that did not stop cleanly: only the committed parts of the readings exist
    parts, _ = read_table(run_dir / "readings.parquet")
    assert parts is not None
    expected = parts.collect().height
    (run_dir / "readings.parquet").unlink()
    result = build_report(ReportConfig(data_dir=str(tmp_path), out=str(tmp_path / "out"), top=1))
    assert set(result.missing) == {"latency", "alerts", "edge"}
    page = _page(result)
    assert "latency_ms" in page.missing["fig-latency"]
    assert "alerts.sqlite" in page.missing["fig-alerts"]
    assert "edge.parquet" in page.missing["fig-edge"]
    assert int(page.values["readings"]) == expected > 0
    assert "committed parts" in page.values["source"]
    assert page.values["windows_5m"] == ""  # not in the run: no number, the note instead
    for name in ("throughput", "anomalies", "scores"):
        _check_png(result.pngs[name])


def test_an_older_run_without_detector_columns_and_an_empty_run(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, sensors=4, rate=20.0, seconds=60, alerts=False, edge=False)
    r = pl.read_parquet(run_dir / "readings.parquet")
    r.drop("score", "is_anomaly", "detector", "latency_ms").write_parquet(run_dir / "readings.parquet")
    shutil.rmtree(run_dir / "readings.parquet.parts")
    result = build_report(ReportConfig(data_dir=str(tmp_path), out=str(tmp_path / "old")))
    assert set(result.pngs) == {"throughput"}
    assert {"latency", "anomalies", "scores", "sensors", "alerts", "edge"} <= set(result.missing)
    assert int(_page(result).values["readings"]) == r.height

    empty = tmp_path / "run-20990101T000000"
    empty.mkdir()
    result = build_report(ReportConfig(data_dir=str(tmp_path), out=str(tmp_path / "empty")))
    assert result.run_dir == empty  # the newest run
    assert result.pngs == {}
    assert "readings.parquet is not in this run" in result.missing["throughput"]


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ReportConfig(start=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="top"):
        ReportConfig(top=-1)
    with pytest.raises(ValueError, match="not after start"):
        ReportConfig(start=datetime(2026, 1, 2, tzinfo=UTC), end=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(Exception, match="no history store"):
        find_run(tmp_path / "nothing")
    done = subprocess.run([sys.executable, "-m", "tidegauge", "report", "--data-dir", str(tmp_path), "--start",
                           "yesterday"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: --start: 'yesterday' is not an ISO 8601 time")


def test_a_range_holding_one_reading(full: tuple[Path, ReportResult], tmp_path: Path) -> None:
    run_dir, _ = full
    r = pl.read_parquet(run_dir / "readings.parquet").sort("timestamp")
    t = r["timestamp"][100]
    start, end = t, t + timedelta(microseconds=1)
    result = build_report(ReportConfig(data_dir=str(run_dir.parent), start=start, end=end, out=str(tmp_path), top=1))
    v = _page(result).values
    assert int(v["readings"]) == r.filter(pl.col("timestamp") == t).height == 1
    assert v["mean_rate"] == ""  # no span to measure a rate over
    assert np.isfinite(float(v["peak_rate"]))
    _check_png(result.pngs["throughput"])


def test_an_unreadable_part_is_left_out_and_said(full: tuple[Path, ReportResult], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    run_dir, _ = full
    parts = tmp_path / "readings.parquet.parts"
    shutil.copytree(run_dir / "readings.parquet.parts", parts)
    (good,) = sorted(parts.glob("part-*.parquet"))
    shutil.copy(good, parts / "part-0000000002-00000.parquet")
    (parts / "part-0000000003-00000.parquet").write_bytes(b"not parquet")
    lf, where = read_table(tmp_path / "readings.parquet")
    assert lf is not None
    assert lf.select(pl.len()).collect().item() == 2 * pl.read_parquet(good).height
    assert "1 unreadable, left out: part-0000000003-00000.parquet" in where
    assert "unreadable" in caplog.text
    for p in sorted(parts.glob("part-*.parquet"))[:2]:
        p.write_bytes(b"")
    lf, where = read_table(tmp_path / "readings.parquet")
    assert lf is None and where.startswith("readings.parquet is unreadable")

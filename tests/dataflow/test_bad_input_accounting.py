"""Malformed, future-stamped and late rows each end up where documented, counted, nothing else lost."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tidegauge.connectors.files import FileSink, FileSource
from tidegauge.dataflow import Flow, WatermarkConfig
from tidegauge.simulate import FaultConfig, FleetConfig
from tidegauge.simulate.files import write_readings
from tidegauge.windows import Tumbling


def test_every_row_is_accounted_for(tmp_path: Path) -> None:
    faults = FaultConfig(malformed=0.01, future=0.005, late=0.01, out_of_order=0.03, duplicates=0.0,
                         out_of_order_bound="3s", late_by="2m", future_by="2h")
    fleet = FleetConfig(sensors=50, rate=100.0, seed=3, faults=faults)
    src = tmp_path / "readings.csv"
    write_readings(src, fleet, rows=30_000)
    truth = pl.read_csv(src, infer_schema=False)  # every field as text, exactly as written

    flow = Flow("acct", watermark=WatermarkConfig.of(max_delay="5s", max_future="10m"))
    readings = flow.source(FileSource(src))
    windows = readings.window(Tumbling("10s"), {"temperature": ["count"]}, name="w")
    for stream, path in ((readings, "readings.parquet"), (windows, "windows.parquet"),
                         (windows.late(), "late.parquet"), (flow.dead_letters(), "dead.parquet")):
        stream.sink(FileSink(tmp_path / path))
    result = flow.run(max_batch=4096)

    ok = pl.read_parquet(tmp_path / "readings.parquet")
    dead = pl.read_parquet(tmp_path / "dead.parquet")
    late = pl.read_parquet(tmp_path / "late.parquet")
    wins = pl.read_parquet(tmp_path / "windows.parquet")

    by_fault = truth.group_by("truth_fault").len()
    n = dict(by_fault.iter_rows())
    assert n["malformed"] > 100 and n["future"] > 50 and n["late"] > 100

    # nothing lost: every input row is either accepted or dead-lettered, and every accepted row is
    # either counted in a window or in the late output
    assert ok.height + dead.height == truth.height
    assert int(wins["temperature_count"].sum()) + late.height == ok.height - ok["temperature"].null_count()
    assert result.records_in == truth.height

    # where each kind went, checked against the simulator's labels carried in the rows
    import json

    # payloads are the raw CSV line (rows the parser rejected) or the row as JSON (rows rejected later)
    dead_faults = pl.Series([json.loads(p)["truth_fault"] if p.startswith("{") else p.rsplit(",", 1)[-1]
                             for p in dead["payload"]])
    assert (dead_faults == "malformed").sum() == n["malformed"]
    assert (dead_faults == "future").sum() == n["future"]
    assert set(dead_faults.unique().to_list()) == {"malformed", "future"}
    assert set(late["truth_fault"].unique().to_list()) == {"late"}
    assert late.height == n["late"]
    assert (ok["truth_fault"] == "out_of_order").sum() == n["out_of_order"]  # within the bound: on time

    # the reasons say why, and the counters agree with the sinks
    reasons = dead["reason"].to_list()
    assert any(r.startswith("future: timestamp is") for r in reasons)
    # the distance stated is from the watermark (or the first batch's median): about future_by (2h)
    ahead = [float(r.split()[3].rstrip("s")) for r in reasons if r.startswith("future:")]
    assert ahead and all(600 < a < 3 * 7200 for a in ahead), sorted(ahead)[-3:]
    assert sum(result.dead_letters.values()) == dead.height
    assert result.late == late.height

"""FleetSimulator: determinism, distributions, episodes, status rules, clipping, snapshot/restore."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidegauge.simulate import (
    READING_SCHEMA,
    FaultConfig,
    FleetConfig,
    FleetSimulator,
    FleetSnapshot,
)


def frame(rows: int, **kw: object) -> pl.DataFrame:
    return FleetSimulator(FleetConfig(**kw)).next_batch(rows)  # type: ignore[arg-type]


def test_schema_and_naming() -> None:
    df = frame(1000, sensors=50, rate=100.0, seed=1)
    assert df.schema == READING_SCHEMA
    assert df["sensor_id"][0] == "sensor-00000"
    assert df["sensor_id"][51] == "sensor-00001"  # round-robin
    ts = df["timestamp"].dt.epoch("us")
    assert (ts.diff().drop_nulls() == 10_000).all()  # 1 / rate
    assert df["timestamp"][0] == datetime(2024, 1, 1, tzinfo=UTC)


def test_same_seed_same_frame_different_seed_differs() -> None:
    a = frame(50_000, seed=3)
    assert a.equals(frame(50_000, seed=3))
    assert not a.equals(frame(50_000, seed=4))


def test_batches_do_not_change_the_stream() -> None:
    whole = frame(100_000, sensors=37, seed=5)
    sim = FleetSimulator(FleetConfig(sensors=37, seed=5))
    parts = [sim.next_batch(n) for n in (1, 0, 999, 40_000, 59_000)]
    assert pl.concat(parts).equals(whole)
    assert sim.rows_emitted == 100_000


def test_base_values_and_noise() -> None:
    sensors, rounds = 4000, 25
    df = frame(sensors * rounds, sensors=sensors, anomaly_rate=0.0, seed=11)
    per = df.group_by("sensor_id").agg(
        pl.col("temperature", "humidity", "pressure", "vibration", "power_consumption", "latitude", "longitude")
        .mean()
        .name.suffix("_mean"),
        pl.col("temperature", "humidity", "pressure", "vibration", "power_consumption").var().name.suffix("_var"),
    )
    spec = {  # name: (base mean, base sd, noise sd)
        "temperature": (25, 5, 2),
        "humidity": (60, 15, 5),
        "pressure": (1013, 20, 5),
        "vibration": (0.5, 0.1, 0.1),
        "power_consumption": (100, 20, 5),
    }
    for name, (mu, sd, noise) in spec.items():
        means = per[f"{name}_mean"]
        assert means.mean() == pytest.approx(mu, abs=sd * 0.05), name
        # per-sensor means carry noise / sqrt(rounds) on top of the base spread
        assert means.std() == pytest.approx(np.sqrt(sd**2 + noise**2 / rounds), rel=0.05), name
        assert np.sqrt(per[f"{name}_var"].mean()) == pytest.approx(noise, rel=0.05), name
    assert per["latitude_mean"].min() >= -90 and per["latitude_mean"].max() <= 90  # type: ignore[operator]
    assert per["latitude_mean"].std() == pytest.approx(180 / np.sqrt(12), rel=0.05)
    assert per["longitude_mean"].std() == pytest.approx(360 / np.sqrt(12), rel=0.05)
    assert set(df["sensor_type"].unique()) == {"industrial", "environmental", "automotive", "medical"}


@pytest.fixture(scope="module")
def episodes() -> pl.DataFrame:
    # one reading per sensor per second, 50 sensors for 20,000 s: about 3,000 episodes
    return frame(1_000_000, sensors=50, rate=50.0, anomaly_rate=0.1, seed=2)


def test_episode_statistics(episodes: pl.DataFrame) -> None:
    assert episodes["truth_anomaly"].mean() == pytest.approx(0.1, abs=0.01)
    runs = (
        episodes.select("sensor_id", "truth_anomaly", "truth_type")
        .with_columns(run=pl.col("truth_anomaly").rle_id().over("sensor_id"))
        .group_by("sensor_id", "run")
        .agg(pl.col("truth_anomaly").first(), pl.len(), pl.col("truth_type").n_unique().alias("types"))
        .filter("truth_anomaly")
    )
    assert runs.height > 2000
    assert runs["len"].mean() == pytest.approx(30.0, rel=0.08)  # mean duration 30 s
    # shifts and types are drawn once per episode (adjacent episodes of one sensor merge rarely)
    assert (runs["types"] == 1).mean() > 0.95  # type: ignore[operator]
    types = episodes.filter("truth_anomaly")["truth_type"].value_counts(normalize=True)
    assert set(types["truth_type"]) == {"temperature", "vibration", "power", "combined"}
    assert types["proportion"].min() > 0.2  # type: ignore[operator]
    assert set(episodes.filter(~pl.col("truth_anomaly"))["truth_type"].unique()) == {"none"}


def test_shifts_match_truth_type(episodes: pl.DataFrame) -> None:
    base = (
        episodes.filter(~pl.col("truth_anomaly"))
        .group_by("sensor_id")
        .agg(pl.col("temperature", "vibration", "power_consumption").mean().name.suffix("_base"))
    )
    d = episodes.join(base, on="sensor_id").select(
        "truth_type",
        t=(pl.col("temperature") - pl.col("temperature_base")).abs(),
        v=pl.col("vibration") - pl.col("vibration_base"),
        p=(pl.col("power_consumption") - pl.col("power_consumption_base")).abs(),
    )
    m = d.group_by("truth_type").agg(pl.col("t", "v", "p").mean())
    got = {r["truth_type"]: r for r in m.iter_rows(named=True)}
    for kind, (t, v, p) in {
        "none": (1.6, 0.0, 4.0),
        "temperature": (15, 0.0, 4.0),
        "vibration": (1.6, 3.5, 4.0),
        "power": (1.6, 0.0, 45),
        "combined": (15, 3.5, 45),
    }.items():
        assert got[kind]["t"] == pytest.approx(t, abs=1.0), kind
        assert got[kind]["v"] == pytest.approx(v, abs=0.2), kind
        assert got[kind]["p"] == pytest.approx(p, abs=2.0), kind


def test_status_rules_row_by_row(episodes: pl.DataFrame) -> None:
    t, v, p = pl.col("temperature"), pl.col("vibration"), pl.col("power_consumption")
    expected = (
        pl.when(pl.col("truth_anomaly") | (t > 45) | (v > 3.0) | (p < 20))
        .then(pl.lit("alert"))
        .when((t > 35) | (v > 2.0) | (p < 50))
        .then(pl.lit("warning"))
        .otherwise(pl.lit("normal"))
    )
    check = episodes.select(ok=pl.col("operational_status") == expected, status=pl.col("operational_status"))
    assert check["ok"].all()
    assert set(check["status"].unique()) == {"normal", "warning", "alert"}


def test_values_are_clipped() -> None:
    df = frame(300_000, anomaly_rate=0.2, seed=9)
    bounds = {
        "temperature": (-40, 80),
        "humidity": (0, 100),
        "pressure": (900, 1100),
        "vibration": (0, 10),
        "power_consumption": (0, 500),
    }
    for name, (lo, hi) in bounds.items():
        assert df[name].min() >= lo and df[name].max() <= hi, name  # type: ignore[operator]
    assert (df["humidity"] == 100.0).sum() > 0  # the upper tail of N(60, 15) does get clipped


def test_snapshot_restore_through_msgpack() -> None:
    config = FleetConfig(sensors=33, anomaly_rate=0.3, seed=8, faults=FaultConfig(duplicates=0.05, late=0.01))
    sim = FleetSimulator(config)
    sim.next_batch(40_001)
    data = msgspec.msgpack.encode(sim.snapshot())
    again = FleetSimulator.restore(config, msgspec.msgpack.decode(data, type=FleetSnapshot))
    assert again.rows_emitted == 40_001
    assert again.next_batch(100_000).equals(sim.next_batch(100_000))


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(0, 3000), min_size=1, max_size=5), at=st.integers(0, 5000))
def test_restore_anywhere_continues_identically(cuts: list[int], at: int) -> None:
    config = FleetConfig(sensors=7, rate=5.0, anomaly_rate=0.3, episode_mean_s=3.0, seed=1)
    reference = FleetSimulator(config).next_batch(at + sum(cuts))
    sim = FleetSimulator(config)
    head = sim.next_batch(at)
    restored = FleetSimulator.restore(config, sim.snapshot())
    tail = pl.concat([restored.next_batch(n) for n in cuts])
    assert pl.concat([head, tail]).equals(reference)


def test_restore_rejects_other_config() -> None:
    snap = FleetSimulator(FleetConfig(seed=1)).snapshot()
    with pytest.raises(ValueError, match="does not match"):
        FleetSimulator.restore(FleetConfig(seed=2), snap)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sensors": 0}, "sensors=0"),
        ({"rate": -1.0}, "rate=-1.0"),
        ({"anomaly_rate": 1.5}, "anomaly_rate=1.5"),
        ({"start": datetime(2024, 1, 1)}, "naive datetime"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_config_errors_name_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FleetConfig(**kwargs)  # type: ignore[arg-type]


def test_fault_config_errors() -> None:
    with pytest.raises(ValueError, match="add up to"):
        FaultConfig(late=0.6, malformed=0.6)
    with pytest.raises(ValueError, match="must exceed"):
        FaultConfig(late_by="1s", out_of_order_bound="5s")
    with pytest.raises(ValueError, match="not a fraction"):
        FaultConfig(duplicates=-0.1)
    with pytest.raises(TypeError, match="sensors must be an int"):
        FleetConfig(sensors=True)

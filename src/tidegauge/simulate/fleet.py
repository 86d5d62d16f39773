"""The fleet simulator: vectorised, deterministic by seed, continuing exactly across calls and restores.

Readings are generated in fixed blocks of whole rounds (every sensor once per round), so the output does
not depend on how callers cut it into batches, and a snapshot (random states + episode state at the
start of the current block + the offset into it) restores the same continuation.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import polars as pl

from tidegauge.checkpoint.codec import ArrayBlob, pack_array, unpack_array
from tidegauge.simulate._episodes import EPISODE_TYPES, EpisodeState, episode_grid
from tidegauge.simulate._faults import MalformedVariant, duplicate_labels, plan_faults
from tidegauge.simulate.config import FAULT_KINDS, FleetConfig

__all__ = ["READING_SCHEMA", "SENSOR_TYPES", "STATUSES", "FleetSimulator", "FleetSnapshot"]

logger = logging.getLogger(__name__)

SENSOR_TYPES = ("industrial", "environmental", "automotive", "medical")
STATUSES = ("normal", "warning", "alert")
BLOCK_ROWS = 32_768
"""Target rows per generated block: big enough to amortise numpy/polars call overhead."""

READING_SCHEMA = pl.Schema(
    {
        "sensor_id": pl.String(),
        "sensor_type": pl.String(),
        "timestamp": pl.Datetime("us", "UTC"),
        "temperature": pl.Float64(),
        "humidity": pl.Float64(),
        "pressure": pl.Float64(),
        "vibration": pl.Float64(),
        "power_consumption": pl.Float64(),
        "operational_status": pl.String(),
        "latitude": pl.Float64(),
        "longitude": pl.Float64(),
        "truth_anomaly": pl.Boolean(),
        "truth_type": pl.String(),
        "truth_fault": pl.String(),
    }
)
"""Columns of every simulated frame; ``truth_*`` are ground truth that detectors must never read."""

_NOISE_SD = np.array([2.0, 5.0, 5.0, 0.1, 5.0])
_CLIP = ((-40.0, 80.0), (0.0, 100.0), (900.0, 1100.0), (0.0, 10.0), (0.0, 500.0))


class RngState(msgspec.Struct, frozen=True):
    """A PCG64 state (the 128-bit numbers as hex strings: msgpack integers stop at 64 bits)."""

    state: str
    inc: str
    has_uint32: int
    uinteger: int


class FleetSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Position of a :class:`FleetSimulator`; ``FleetSimulator.restore`` continues identically from it."""

    version: int = 1
    sensors: int
    seed: int
    block_start: int
    """Reading number of the first reading of the current block."""
    offset: int
    """Rows of the current block already handed out."""
    rows_emitted: int
    rngs: list[RngState]
    episodes: list[ArrayBlob]


def _rng_state(rng: np.random.Generator) -> RngState:
    st: Mapping[str, Any] = rng.bit_generator.state
    return RngState(
        state=hex(st["state"]["state"]),
        inc=hex(st["state"]["inc"]),
        has_uint32=int(st["has_uint32"]),
        uinteger=int(st["uinteger"]),
    )


def _set_rng_state(rng: np.random.Generator, s: RngState) -> None:
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int(s.state, 16), "inc": int(s.inc, 16)},
        "has_uint32": s.has_uint32,
        "uinteger": s.uinteger,
    }


@dataclass
class _Block:
    start: tuple[int, list[RngState], EpisodeState]
    frame: pl.DataFrame
    due_us: np.ndarray[Any, np.dtype[np.int64]]
    """Nominal (pre-fault) event time of every row: its place in the schedule when paced."""


class FleetSimulator:
    """Generate IoT fleet readings with labelled anomaly episodes and injected faults.

    Parameters
    ----------
    config:
        What to simulate (see :class:`FleetConfig`); base values of every sensor are drawn from
        ``config.seed`` once, here.

    Examples
    --------
    >>> sim = FleetSimulator(FleetConfig(sensors=4, rate=10.0, seed=7))
    >>> df = sim.next_batch(8)
    >>> df.height, df["sensor_id"][5]
    (8, 'sensor-00001')
    >>> again = FleetSimulator.restore(sim.config, sim.snapshot())
    >>> again.next_batch(3).equals(sim.next_batch(3))
    True
    """

    def __init__(self, config: FleetConfig) -> None:
        if not isinstance(config, FleetConfig):
            raise TypeError(f"config must be a FleetConfig, got {type(config).__name__}")
        self._config = config
        s = config.sensors
        base_seq, noise_seq, episode_seq, fault_seq = np.random.SeedSequence(config.seed).spawn(4)
        base = np.random.Generator(np.random.PCG64(base_seq))
        self._type_code = base.integers(0, len(SENSOR_TYPES), s)
        # Order of draws is part of the format: changing it changes every seeded run.
        self._base = np.stack(
            [
                base.normal(25.0, 5.0, s),
                base.normal(60.0, 15.0, s),
                base.normal(1013.0, 20.0, s),
                base.normal(0.5, 0.1, s),
                base.normal(100.0, 20.0, s),
            ]
        )
        self._lat = base.uniform(-90.0, 90.0, s)
        self._lon = base.uniform(-180.0, 180.0, s)
        # built in Python, not with polars' string expressions: those touch code pages (~3 MB resident)
        # that an idle edge agent running the simulated fleet has no other use for
        self._names = pl.Series("sensor_id", [f"sensor-{i:05d}" for i in range(s)], dtype=pl.String)
        self._rngs = [np.random.Generator(np.random.PCG64(q)) for q in (noise_seq, episode_seq, fault_seq)]
        self._episodes = EpisodeState.initial(
            self._rngs[1], s, config.start_us, config.anomaly_rate, config.episode_mean_s
        )
        self._rounds = max(1, math.ceil(BLOCK_ROWS / s))
        self._next_reading = 0
        self._blocks: deque[_Block] = deque()
        self._offset = 0
        self._emitted = 0

    @property
    def config(self) -> FleetConfig:
        return self._config

    @property
    def rows_emitted(self) -> int:
        """Rows handed out so far (duplicates included), across restores."""
        return self._emitted

    def next_batch(self, rows: int) -> pl.DataFrame:
        """The next ``rows`` rows (schema :data:`READING_SCHEMA`), continuing where the last call ended."""
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"rows={rows!r} must be an int >= 0")
        parts: list[pl.DataFrame] = []
        need = rows
        while need > 0:
            block = self._head()
            take = min(block.frame.height - self._offset, need)
            parts.append(block.frame.slice(self._offset, take))
            self._offset += take
            need -= take
            if self._offset == block.frame.height:
                self._blocks.popleft()
                self._offset = 0
        self._emitted += rows
        if not parts:
            return READING_SCHEMA.to_frame()
        return parts[0] if len(parts) == 1 else pl.concat(parts, rechunk=True)

    def rows_due(self, until_us: int, limit: int) -> int:
        """How many of the next ``limit`` rows are scheduled at or before ``until_us`` (nominal event time).

        Faults do not move a row in the schedule: a late row is *sent* on time with an old timestamp.
        """
        count = 0
        index = 0
        offset = self._offset
        while count < limit:
            block = self._block_at(index)
            due = block.due_us[offset : offset + (limit - count)]
            n = int(np.searchsorted(due, until_us, side="right"))
            count += n
            if n < due.size:
                break
            index += 1
            offset = 0
        return count

    def next_due_us(self, ahead: int = 0) -> int:
        """Scheduled (nominal, pre-fault) time of the upcoming row ``ahead`` (0: the next one)."""
        index, pos = 0, self._offset + ahead
        while pos >= self._block_at(index).due_us.size:
            pos -= self._block_at(index).due_us.size
            index += 1
        return int(self._block_at(index).due_us[pos])

    def snapshot(self) -> FleetSnapshot:
        """The position after the last row handed out."""
        if self._blocks:
            block_start, rngs, episodes = self._blocks[0].start
        else:
            block_start, rngs, episodes = self._state()
        return FleetSnapshot(
            sensors=self._config.sensors,
            seed=self._config.seed,
            block_start=block_start,
            offset=self._offset,
            rows_emitted=self._emitted,
            rngs=rngs,
            episodes=[pack_array(a) for a in episodes.arrays()],
        )

    @classmethod
    def restore(cls, config: FleetConfig, snapshot: FleetSnapshot) -> FleetSimulator:
        """A simulator continuing exactly where the one that took ``snapshot`` stood."""
        if not isinstance(snapshot, FleetSnapshot):
            raise TypeError(f"snapshot must be a FleetSnapshot, got {type(snapshot).__name__}")
        if snapshot.version != 1:
            raise ValueError(
                f"FleetSnapshot version {snapshot.version} is not supported; this tidegauge reads version 1"
            )
        if (snapshot.sensors, snapshot.seed) != (config.sensors, config.seed):
            raise ValueError(
                f"snapshot of sensors={snapshot.sensors}, seed={snapshot.seed} does not match the config "
                f"(sensors={config.sensors}, seed={config.seed}); restore with the config that took it"
            )
        sim = cls(config)
        for rng, st in zip(sim._rngs, snapshot.rngs, strict=True):
            _set_rng_state(rng, st)
        sim._episodes = EpisodeState(*(unpack_array(b) for b in snapshot.episodes))
        sim._next_reading = snapshot.block_start
        sim._emitted = snapshot.rows_emitted
        if snapshot.offset:
            sim._head()
            sim._offset = snapshot.offset
        return sim

    def _state(self) -> tuple[int, list[RngState], EpisodeState]:
        return self._next_reading, [_rng_state(r) for r in self._rngs], self._episodes.copy()

    def _head(self) -> _Block:
        return self._block_at(0)

    def _block_at(self, index: int) -> _Block:
        while len(self._blocks) <= index:
            self._blocks.append(self._generate())
        return self._blocks[index]

    def _generate(self) -> _Block:
        cfg = self._config
        start = self._state()
        s, k = cfg.sensors, self._rounds
        n = s * k
        g0 = self._next_reading
        self._next_reading += n
        noise_rng, episode_rng, fault_rng = self._rngs
        active, etype, sh_t, sh_v, sh_p = episode_grid(
            episode_rng,
            self._episodes,
            start_us=cfg.start_us,
            rate=cfg.rate,
            g0=g0,
            rounds=k,
            anomaly_rate=cfg.anomaly_rate,
            mean_s=cfg.episode_mean_s,
        )
        noise = noise_rng.standard_normal((5, k, s))
        values = self._base[:, None, :] + noise * _NOISE_SD[:, None, None]
        values[0] += sh_t
        values[3] += sh_v
        values[4] += sh_p
        for i, (lo, hi) in enumerate(_CLIP):
            np.clip(values[i], lo, hi, out=values[i])
        cols = values.reshape(5, n)
        temp, vib, power = cols[0], cols[3], cols[4]
        anomaly = active.reshape(n)
        alert = anomaly | (temp > 45.0) | (vib > 3.0) | (power < 20.0)
        warn = (temp > 35.0) | (vib > 2.0) | (power < 50.0)
        status = np.where(alert, 2, np.where(warn, 1, 0))
        reading = np.arange(g0, g0 + n, dtype=np.float64)
        due = cfg.start_us + np.floor(reading * 1e6 / cfg.rate).astype(np.int64)
        sensor = np.tile(np.arange(s), k)
        ts = due.copy()
        truth_type = etype.reshape(n)
        fault = np.zeros(n, dtype=np.int8)
        variant = None
        if cfg.faults.any:
            plan = plan_faults(fault_rng, cfg.faults, n)
            ts += plan.ts_shift_us
            cols = cols.copy()
            cols[0][plan.variant == MalformedVariant.NAN_TEMPERATURE] = np.nan
            cols[4][plan.variant == MalformedVariant.INF_POWER] = np.inf
            fault, variant = plan.code, plan.variant
            if plan.rows is not None:
                rows = plan.rows
                fault = duplicate_labels(fault, rows)
                cols, anomaly, status, due, sensor, ts = (
                    cols[:, rows], anomaly[rows], status[rows], due[rows], sensor[rows], ts[rows]
                )
                truth_type, variant = truth_type[rows], variant[rows]
        frame = self._frame(sensor, ts, cols, status, anomaly, truth_type, fault)
        if variant is not None and (variant >= 0).any():
            frame = frame.with_columns(
                pl.when(pl.lit(pl.Series(variant == MalformedVariant.NULL_KEY)))
                .then(None)
                .otherwise(pl.col("sensor_id"))
                .alias("sensor_id"),
                pl.when(pl.lit(pl.Series(variant == MalformedVariant.NULL_TIME)))
                .then(None)
                .otherwise(pl.col("timestamp"))
                .alias("timestamp"),
            )
        return _Block(start=start, frame=frame, due_us=due)

    def _frame(
        self, sensor: Any, ts: Any, cols: Any, status: Any, anomaly: Any, etype: Any, fault: Any
    ) -> pl.DataFrame:
        def pick(values: tuple[str, ...], codes: Any) -> pl.Series:
            return pl.Series(values, dtype=pl.String).gather(codes)

        return pl.DataFrame(
            [
                self._names.gather(sensor).alias("sensor_id"),
                pick(SENSOR_TYPES, self._type_code[sensor]).alias("sensor_type"),
                pl.Series("timestamp", ts).cast(pl.Datetime("us", "UTC")),
                pl.Series("temperature", cols[0]),
                pl.Series("humidity", cols[1]),
                pl.Series("pressure", cols[2]),
                pl.Series("vibration", cols[3]),
                pl.Series("power_consumption", cols[4]),
                pick(STATUSES, status).alias("operational_status"),
                pl.Series("latitude", self._lat[sensor]),
                pl.Series("longitude", self._lon[sensor]),
                pl.Series("truth_anomaly", anomaly),
                pick(EPISODE_TYPES, etype).alias("truth_type"),
                pick(FAULT_KINDS, fault).alias("truth_fault"),
            ]
        )

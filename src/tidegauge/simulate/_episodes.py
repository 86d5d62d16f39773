"""Anomaly episodes: a two-state (normal / episode) process per sensor, advanced block by block.

A sensor's state only changes at transition times (``next_change``); within a block, each round of
readings sees the state after the transitions that happened before its event time. The loop runs once
per *transition*, vectorised over the sensors that have one in the block, never once per reading.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["EPISODE_TYPES", "EpisodeState", "episode_grid"]

logger = logging.getLogger(__name__)

EPISODE_TYPES = ("none", "temperature", "vibration", "power", "combined")
"""Values of the ``truth_type`` column, in code order."""

NEVER = 2**62
"""``next_change`` of a sensor that never changes state (anomaly_rate 0)."""

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass
class EpisodeState:
    """Per-sensor episode state (arrays of length ``sensors``)."""

    active: npt.NDArray[np.bool_]
    next_change: I64
    etype: npt.NDArray[np.int8]
    shift_t: F64
    shift_v: F64
    shift_p: F64

    def copy(self) -> EpisodeState:
        return EpisodeState(
            self.active.copy(),
            self.next_change.copy(),
            self.etype.copy(),
            self.shift_t.copy(),
            self.shift_v.copy(),
            self.shift_p.copy(),
        )

    def arrays(self) -> tuple[npt.NDArray[np.generic], ...]:
        return (self.active, self.next_change, self.etype, self.shift_t, self.shift_v, self.shift_p)

    @classmethod
    def initial(
        cls, rng: np.random.Generator, sensors: int, start_us: int, anomaly_rate: float, mean_s: float
    ) -> EpisodeState:
        """Start every sensor in the stationary distribution (so the anomaly share holds from t=0)."""
        state = cls(
            active=np.zeros(sensors, dtype=np.bool_),
            next_change=np.full(sensors, NEVER, dtype=np.int64),
            etype=np.zeros(sensors, dtype=np.int8),
            shift_t=np.zeros(sensors),
            shift_v=np.zeros(sensors),
            shift_p=np.zeros(sensors),
        )
        if anomaly_rate <= 0:
            return state
        state.active[:] = rng.random(sensors) < anomaly_rate
        state.next_change[:] = start_us
        idx = np.arange(sensors)
        # Memoryless durations: the residual time of the spell in force at t=0 has the same law.
        _begin(rng, state, idx[state.active], mean_s)
        _end(rng, state, idx[~state.active], mean_s, anomaly_rate)
        return state


def _begin(rng: np.random.Generator, s: EpisodeState, idx: npt.NDArray[np.intp], mean_s: float) -> None:
    """Start episodes at ``next_change`` for sensors ``idx``; the shifts are drawn once per episode."""
    n = idx.size
    s.active[idx] = True
    s.next_change[idx] += (rng.exponential(mean_s * 1e6, n)).astype(np.int64) + 1
    etype = rng.integers(1, 5, n).astype(np.int8)
    sign_t = rng.choice(np.array([-1.0, 1.0]), n)
    mag_t = rng.uniform(10.0, 20.0, n)
    mag_v = rng.uniform(2.0, 5.0, n)
    sign_p = rng.choice(np.array([-1.0, 1.0]), n)
    mag_p = rng.uniform(30.0, 60.0, n)
    combined = etype == 4
    s.etype[idx] = etype
    s.shift_t[idx] = np.where((etype == 1) | combined, sign_t * mag_t, 0.0)
    s.shift_v[idx] = np.where((etype == 2) | combined, mag_v, 0.0)
    s.shift_p[idx] = np.where((etype == 3) | combined, sign_p * mag_p, 0.0)


def _end(
    rng: np.random.Generator, s: EpisodeState, idx: npt.NDArray[np.intp], mean_s: float, anomaly_rate: float
) -> None:
    """End episodes (or start normal spells) at ``next_change`` for sensors ``idx``."""
    normal_mean_s = mean_s * (1.0 - anomaly_rate) / anomaly_rate
    s.active[idx] = False
    s.etype[idx] = 0
    s.shift_t[idx] = 0.0
    s.shift_v[idx] = 0.0
    s.shift_p[idx] = 0.0
    s.next_change[idx] += (rng.exponential(normal_mean_s * 1e6, idx.size)).astype(np.int64) + 1


def _first_round_at_or_after(
    t_us: I64, start_us: int, rate: float, g0: int, sensors: int, rounds: int
) -> npt.NDArray[np.intp]:
    """Per sensor, the first round of the block read at or after ``t_us`` (``rounds`` if none)."""
    s = np.arange(sensors)
    approx = ((t_us - start_us).astype(np.float64) * rate / 1e6 - g0 - s) / sensors
    k = np.clip(np.ceil(approx), 0, rounds).astype(np.intp)

    def time_at(kk: npt.NDArray[np.intp]) -> I64:
        g = (g0 + kk * sensors + s).astype(np.float64)
        return start_us + np.floor(g * 1e6 / rate).astype(np.int64)

    for _ in range(2):  # the float estimate is off by at most one round; settle it exactly
        k -= (k > 0) & (time_at(np.maximum(k - 1, 0)) >= t_us)
        k += (k < rounds) & (time_at(np.minimum(k, rounds - 1)) < t_us)
    return k


def episode_grid(
    rng: np.random.Generator,
    state: EpisodeState,
    *,
    start_us: int,
    rate: float,
    g0: int,
    rounds: int,
    anomaly_rate: float,
    mean_s: float,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int8], F64, F64, F64]:
    """Episode columns of ``rounds`` full rounds of readings from reading ``g0``; advances ``state``.

    Returns ``(active, etype, shift_t, shift_v, shift_p)``, each of shape ``(rounds, sensors)``.
    """
    sensors = state.active.size
    history = [state.copy()]
    changes: npt.NDArray[np.int32] | None = None
    everyone = np.arange(sensors)
    while True:
        k = _first_round_at_or_after(state.next_change, start_us, rate, g0, sensors, rounds)
        moving = everyone[k < rounds]
        if moving.size == 0:
            break
        if changes is None:
            changes = np.zeros((rounds, sensors), dtype=np.int32)
        changes[k[moving], moving] += 1
        was_active = state.active[moving]
        _end(rng, state, moving[was_active], mean_s, anomaly_rate)
        _begin(rng, state, moving[~was_active], mean_s)
        history.append(state.copy())
    if changes is None:  # no transition in the block: one state per sensor for every round
        shape = (rounds, sensors)
        return (
            np.broadcast_to(state.active, shape),
            np.broadcast_to(state.etype, shape),
            np.broadcast_to(state.shift_t, shape),
            np.broadcast_to(state.shift_v, shape),
            np.broadcast_to(state.shift_p, shape),
        )
    # A sensor takes part in transitions 1..m of this block, in order, so the number of its transitions
    # before a round indexes the stacked history.
    nth = np.cumsum(changes, axis=0)
    out = []
    for field in (0, 2, 3, 4, 5):
        stacked = np.stack([h.arrays()[field] for h in history])
        out.append(np.take_along_axis(stacked, nth, axis=0))
    return out[0], out[1], out[2], out[3], out[4]

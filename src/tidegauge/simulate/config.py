"""Configuration of the fleet simulator: the fleet, its anomalies and the faults to inject.

Both structs are frozen ``msgspec.Struct`` objects validated at construction, so a bad value fails
where it is written, with a message that names it and the fix.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta

import msgspec

from tidegauge._time import Duration, parse_duration, to_micros

__all__ = ["DEFAULT_START", "FAULT_KINDS", "FaultConfig", "FleetConfig", "fleet_from_mapping"]

logger = logging.getLogger(__name__)

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)
"""Event time of the first reading unless told otherwise: fixed, so runs are reproducible."""

FAULT_KINDS = ("none", "out_of_order", "late", "duplicate", "malformed", "future")
"""Values of the ``truth_fault`` column, in code order."""


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number between 0 and 1, got {value!r}")
    f = float(value)
    if not (0.0 <= f <= 1.0):
        raise ValueError(f"{name}={value!r} is not a fraction; pass a number between 0 and 1 (e.g. 0.01)")
    return f


class FaultConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Faults to inject so the engine's handling of bad input can be tested.

    Each fraction is the probability that one *reading* gets that fault; the kinds are mutually
    exclusive (their sum must be <= 1). Every faulted row is labelled in ``truth_fault``.

    ``out_of_order``
        the event time moves back by ``U(0, out_of_order_bound]``: the row arrives behind newer ones,
        but within the bound.
    ``late``
        the event time moves back by ``U(late_by, 2 * late_by)``: far beyond ``out_of_order_bound``.
    ``duplicates``
        the reading is sent twice, back to back; the second copy is labelled ``"duplicate"`` (so the
        output has about ``rows * (1 + duplicates)`` rows for a given number of readings).
    ``malformed``
        the row is unparsable. In frames and Parquet, one of: null ``sensor_id``, null ``timestamp``,
        ``temperature`` NaN, ``power_consumption`` +inf. In CSV/JSONL the same rows are written as,
        respectively: a missing ``sensor_id`` field, the timestamp ``"not-a-timestamp"``, the
        temperature ``"n/a"``, the power ``"1.2.3"``.
    ``future``
        a fast device clock: the event time moves forward by ``U(future_by, 2 * future_by)``.

    Examples
    --------
    >>> FaultConfig(late=0.01, late_by="5m").late
    0.01
    """

    out_of_order: float = 0.0
    late: float = 0.0
    duplicates: float = 0.0
    malformed: float = 0.0
    future: float = 0.0
    out_of_order_bound: Duration = "5s"
    late_by: Duration = "10m"
    future_by: Duration = "1h"

    def __post_init__(self) -> None:
        total = sum(
            _check_fraction(name, getattr(self, name))
            for name in ("out_of_order", "late", "duplicates", "malformed", "future")
        )
        if total > 1.0:
            raise ValueError(
                f"fault fractions add up to {total:g} > 1; lower them so each reading has at most one"
            )
        bound = parse_duration(self.out_of_order_bound, name="out_of_order_bound")
        late = parse_duration(self.late_by, name="late_by")
        future = parse_duration(self.future_by, name="future_by")
        if bound <= 0 or future <= 0:
            raise ValueError("out_of_order_bound and future_by must be > 0, e.g. '5s' and '1h'")
        if late <= bound:
            raise ValueError(
                f"late_by={self.late_by!r} must exceed out_of_order_bound={self.out_of_order_bound!r}: "
                "late rows are delayed far beyond the bound"
            )

    @property
    def fractions(self) -> tuple[float, ...]:
        """Fractions in :data:`FAULT_KINDS` order, without ``"none"``."""
        return (self.out_of_order, self.late, self.duplicates, self.malformed, self.future)

    @property
    def any(self) -> bool:
        """Whether any fault is requested."""
        return any(f > 0 for f in self.fractions)


class FleetConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What to simulate.

    Parameters
    ----------
    sensors:
        Number of sensors. Sensor ``i`` is named ``f"sensor-{i:05d}"``.
    rate:
        Readings per second across the fleet. Reading ``g`` (counting from 0) has the event time
        ``start + g / rate`` and comes from sensor ``g % sensors`` (round-robin), so each sensor
        reports every ``sensors / rate`` seconds.
    anomaly_rate:
        Expected fraction of each sensor's time spent in anomaly episodes (the stationary share of a
        two-state process: normal spells last ``Exp(episode_mean * (1 - r) / r)``, episodes
        ``Exp(episode_mean)``). ``0`` disables anomalies.
    episode_mean_s:
        Mean duration of an anomaly episode, in seconds.
    seed:
        Seed of every random draw: the same config gives the same readings.
    start:
        Event time of the first reading, timezone-aware (naive datetimes are rejected).
    faults:
        Faults to inject (none by default).

    Examples
    --------
    >>> FleetConfig(sensors=10, rate=100.0, seed=1).sensors
    10
    """

    sensors: int = 200
    rate: float = 2000.0
    anomaly_rate: float = 0.02
    episode_mean_s: float = 30.0
    seed: int = 0
    start: datetime = DEFAULT_START
    faults: FaultConfig = FaultConfig()

    def __post_init__(self) -> None:
        if isinstance(self.sensors, bool) or not isinstance(self.sensors, int):
            raise TypeError(f"sensors must be an int, got {self.sensors!r}")
        if not 1 <= self.sensors <= 10_000_000:
            raise ValueError(f"sensors={self.sensors} is out of range; pass 1 to 10,000,000")
        for name in ("rate", "episode_mean_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} must be a finite number > 0")
        if _check_fraction("anomaly_rate", self.anomaly_rate) >= 1.0:
            raise ValueError("anomaly_rate=1 leaves no normal time; pass a fraction below 1 (e.g. 0.02)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an int >= 0")
        if not isinstance(self.start, datetime):
            raise TypeError(f"start must be a timezone-aware datetime, got {self.start!r}")
        to_micros(self.start)  # rejects naive datetimes with the fix in the message
        if not isinstance(self.faults, FaultConfig):
            raise TypeError(f"faults must be a FaultConfig, got {type(self.faults).__name__}")

    @property
    def start_us(self) -> int:
        """``start`` in microseconds since the epoch."""
        return to_micros(self.start)

    def event_time_us(self, reading: int) -> int:
        """Nominal event time (before faults) of reading number ``reading``.

        >>> FleetConfig(rate=4.0, start=DEFAULT_START).event_time_us(2) - to_micros(DEFAULT_START)
        500000
        """
        return self.start_us + math.floor(reading * 1e6 / self.rate)

    def readings_for(self, duration: Duration | timedelta) -> int:
        """Number of readings covering ``duration`` of event time (``rate * duration``)."""
        return math.floor(parse_duration(duration, name="duration") * self.rate / 1e6)


def fleet_from_mapping(values: dict[str, object]) -> FleetConfig:
    """A :class:`FleetConfig` from plain values (a config file's mapping): ``start`` as an ISO string,
    ``faults`` as a mapping.

    (``msgspec.convert`` cannot do it: the ``Duration`` union of ``FaultConfig`` holds several str-like types.)

    >>> fleet_from_mapping({"sensors": 5, "start": "2026-01-01T00:00:00Z", "faults": {"late": 0.01}}).faults.late
    0.01
    """
    fields = set(FleetConfig.__struct_fields__)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise TypeError(f"unknown simulator option {unknown[0]!r}; valid: {', '.join(sorted(fields))}")
    kwargs: dict[str, object] = dict(values)
    start = kwargs.get("start")
    if isinstance(start, str):
        try:
            kwargs["start"] = datetime.fromisoformat(start)
        except ValueError:
            raise ValueError(f"start={start!r} is not an ISO 8601 time, e.g. '2026-01-01T00:00:00Z'") from None
    faults = kwargs.get("faults")
    if isinstance(faults, dict):
        allowed = set(FaultConfig.__struct_fields__)
        bad = sorted(set(faults) - allowed)
        if bad:
            raise TypeError(f"unknown fault option {bad[0]!r}; valid: {', '.join(sorted(allowed))}")
        kwargs["faults"] = FaultConfig(**faults)
    return FleetConfig(**kwargs)  # type: ignore[arg-type]

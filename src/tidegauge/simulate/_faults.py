"""Fault injection over one block of readings (vectorised; see :class:`FaultConfig` for the kinds)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tidegauge._time import parse_duration
from tidegauge.simulate.config import FaultConfig

__all__ = ["DUPLICATE", "FaultPlan", "MalformedVariant", "plan_faults"]

logger = logging.getLogger(__name__)

NONE, OUT_OF_ORDER, LATE, DUPLICATE, MALFORMED, FUTURE = range(6)


class MalformedVariant:
    """How a malformed row is broken (codes in the plan's ``variant`` array)."""

    NULL_KEY = 0
    NULL_TIME = 1
    NAN_TEMPERATURE = 2
    INF_POWER = 3


@dataclass
class FaultPlan:
    """Faults for ``n`` readings: what to do to each one.

    ``code`` is the ``truth_fault`` code per reading (before duplication), ``ts_shift_us`` the change to
    its event time, ``variant`` the :class:`MalformedVariant` (-1 if not malformed), and ``rows`` the
    reading index of every output row (``None`` when nothing is duplicated).
    """

    code: npt.NDArray[np.int8]
    ts_shift_us: npt.NDArray[np.int64]
    variant: npt.NDArray[np.int8]
    rows: npt.NDArray[np.intp] | None


def plan_faults(rng: np.random.Generator, faults: FaultConfig, n: int) -> FaultPlan:
    """Draw the faults of ``n`` readings; the number of draws depends only on ``n`` (for replay)."""
    u = rng.random(n)
    magnitude = rng.random(n)
    variant_draw = rng.integers(0, 4, n).astype(np.int8)
    edges = np.cumsum(np.array(faults.fractions))
    # Reading kinds in FAULT_KINDS order: u below the first edge is out_of_order, and so on.
    code = np.searchsorted(edges, u, side="right").astype(np.int8) + 1
    code[code > FUTURE] = NONE
    shift = np.zeros(n, dtype=np.int64)
    bound = parse_duration(faults.out_of_order_bound)
    late_by = parse_duration(faults.late_by)
    future_by = parse_duration(faults.future_by)
    ooo = code == OUT_OF_ORDER
    shift[ooo] = -(1 + np.floor(magnitude[ooo] * bound).astype(np.int64))
    late = code == LATE
    shift[late] = -(late_by + np.floor(magnitude[late] * late_by).astype(np.int64))
    fut = code == FUTURE
    shift[fut] = future_by + np.floor(magnitude[fut] * future_by).astype(np.int64)
    variant = np.where(code == MALFORMED, variant_draw, np.int8(-1)).astype(np.int8)
    dup = code == DUPLICATE
    rows: npt.NDArray[np.intp] | None = None
    if dup.any():
        rows = np.repeat(np.arange(n), 1 + dup.astype(np.intp))
    # The original of a duplicated reading is clean; its second copy carries the label.
    code[dup] = NONE
    return FaultPlan(code=code, ts_shift_us=shift, variant=variant, rows=rows)


def duplicate_labels(code: npt.NDArray[np.int8], rows: npt.NDArray[np.intp]) -> npt.NDArray[np.int8]:
    """``truth_fault`` codes of the output rows: a row repeating the previous reading is a duplicate."""
    out = code[rows]
    again = np.zeros(rows.size, dtype=np.bool_)
    again[1:] = rows[1:] == rows[:-1]
    out[again] = DUPLICATE
    return out

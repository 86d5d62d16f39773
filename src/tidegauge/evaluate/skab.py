"""The SKAB evaluation protocol (Skoltech Anomaly Benchmark), as pure functions over arrays.

SKAB scores two problems on the same predictions, following its evaluation code (the ``tsad`` package):

* **Outlier detection**, a binary classification of every row against the ``anomaly`` column. The
  confusion counts are *pooled* over all labelled files, then
  ``F1 = TP / (TP + (FP + FN) / 2)``, ``FAR = FP / (FP + TN)`` and ``MAR = FN / (FN + TP)`` (in %).
* **Changepoint detection**, scored with SKAB's NAB variant. True changepoints are the rows with
  ``changepoint == 1``; predicted changepoints are the rows where the binary prediction changes
  (``|diff(prediction)|``, the first row counting as a change if it is predicted anomalous). Each true
  changepoint opens a scoring window to its *right*, ``[t_cp, t_cp + 60 s]``; when two windows overlap
  the right one is cut to start where the left one ends. In each window only the first predicted
  changepoint counts, earning ``A_tp`` at the window's start sliding to ``A_fp`` at its end along a
  tanh curve; every predicted changepoint outside all windows costs ``A_fp``; a window with none costs
  ``A_fn``. Scores are summed over files and normalised per profile,
  ``100 * (S - null) / (perfect - null)``, with ``null = n_windows * A_fn`` and
  ``perfect = n_windows * A_tp``.

>>> import numpy as np
>>> binary_metrics([np.array([0, 1, 1, 0])], [np.array([0, 1, 0, 1])]).f1
0.5
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "SKAB_NAB_PROFILES",
    "BinaryMetrics",
    "ChangepointFile",
    "SkabNabResult",
    "binary_metrics",
    "chance_scores",
    "changepoint_windows",
    "predicted_changepoints",
    "skab_nab",
    "tanh_reward",
]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]

SKAB_NAB_PROFILES: dict[str, tuple[float, float, float]] = {
    "standard": (1.0, -0.11, -1.0),
    "low_fp": (1.0, -0.22, -1.0),
    "low_fn": (1.0, -0.11, -2.0),
}
"""``(A_tp, A_fp, A_fn)`` per profile, as in SKAB's evaluation code."""

_CURVE_POINTS = 1000
"""SKAB samples its reward curve at 1000 points and picks the one at the detection's relative position."""


@dataclass(frozen=True, slots=True)
class BinaryMetrics:
    """Pooled confusion counts and SKAB's outlier metrics (``far`` and ``mar`` in percent)."""

    tp: int
    tn: int
    fp: int
    fn: int
    f1: float
    far: float
    mar: float


def binary_metrics(true: Sequence[npt.ArrayLike], pred: Sequence[npt.ArrayLike]) -> BinaryMetrics:
    """Pool the row-wise confusion counts of every file and compute F1, FAR % and MAR %."""
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} label arrays but {len(pred)} prediction arrays")
    tp = tn = fp = fn = 0
    for t_raw, p_raw in zip(true, pred, strict=True):
        t = np.asarray(t_raw) == 1
        p = np.asarray(p_raw) == 1
        if t.shape != p.shape:
            raise ValueError(f"labels have {t.size} rows but predictions {p.size}")
        tp += int(np.count_nonzero(t & p))
        tn += int(np.count_nonzero(~t & ~p))
        fp += int(np.count_nonzero(~t & p))
        fn += int(np.count_nonzero(t & ~p))
    f1 = tp / (tp + (fn + fp) / 2) if tp + fn + fp else 1.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return BinaryMetrics(tp, tn, fp, fn, f1, far, mar)


def predicted_changepoints(prediction: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """Rows where a binary prediction changes; the first row counts when it is predicted anomalous.

    >>> predicted_changepoints([1, 1, 0, 0, 1]).tolist()
    [1, 0, 1, 0, 1]
    """
    p = (np.asarray(prediction) == 1).astype(np.int8)
    out: npt.NDArray[np.int8] = np.zeros(p.shape, dtype=np.int8)
    if p.size:
        out[0] = p[0]
        out[1:] = np.abs(np.diff(p))
    return out


def changepoint_windows(
    timestamps_us: IntArray, changepoints: npt.ArrayLike, window_us: int
) -> list[tuple[int, int]]:
    """Right-side scoring windows ``[t, t + window]`` of the true changepoints, overlaps cut on the right."""
    ts = np.asarray(timestamps_us, dtype=np.int64)
    cp = np.asarray(changepoints) == 1
    wins = [[int(t), int(t) + window_us] for t in ts[cp]]
    for i in range(len(wins) - 1):
        if wins[i][1] >= wins[i + 1][0]:
            wins[i + 1][0] = wins[i][1]
    return [(a, b) for a, b in wins]


def tanh_reward(relative_position: float, a_tp: float, a_fp: float) -> float:
    """SKAB's reward for a first detection at ``relative_position`` in [0, 1] of its window.

    >>> tanh_reward(0.0, 1.0, -0.11), round(tanh_reward(1.0, 1.0, -0.11), 6)
    (1.0, -0.11)
    """
    event = min(int(relative_position * _CURVE_POINTS), _CURVE_POINTS - 1)
    x = -math.pi / 2 + math.pi * event / (_CURVE_POINTS - 1)
    half = (a_tp - a_fp) / 2
    return -half * math.tanh(x) / math.tanh(math.pi / 2) + half + a_fp


@dataclass(frozen=True, slots=True)
class ChangepointFile:
    """One file for changepoint scoring: timestamps (µs), true changepoints, predicted changepoints."""

    timestamps_us: IntArray
    true_cp: npt.NDArray[np.int8]
    pred_cp: npt.NDArray[np.int8]


@dataclass(frozen=True, slots=True)
class SkabNabResult:
    """SKAB's NAB scores per profile (0 = null detector, 100 = perfect), misses and false positives."""

    scores: dict[str, float]
    missed: int
    false_positives: int
    n_changepoints: int


def skab_nab(files: Sequence[ChangepointFile], *, window_us: int = 60_000_000) -> SkabNabResult:
    """Score predicted changepoints with SKAB's NAB variant (60 s windows right of each changepoint)."""
    if window_us <= 0:
        raise ValueError(f"window_us must be > 0, got {window_us!r}")
    raw = dict.fromkeys(SKAB_NAB_PROFILES, 0.0)
    null = dict.fromkeys(SKAB_NAB_PROFILES, 0.0)
    perfect = dict.fromkeys(SKAB_NAB_PROFILES, 0.0)
    missed = fps = n_cp = 0
    for f in files:
        ts = np.asarray(f.timestamps_us, dtype=np.int64)
        wins = changepoint_windows(ts, f.true_cp, window_us)
        det = ts[np.asarray(f.pred_cp) == 1]
        in_any = np.zeros(det.size, dtype=bool)
        firsts: list[float] = []
        for start, end in wins:
            inside = (det >= start) & (det <= end)
            in_any |= inside
            if inside.any():
                span = end - start
                firsts.append(float(det[inside][0] - start) / span if span > 0 else 0.0)
            else:
                missed += 1
        n_fp = int(np.count_nonzero(~in_any))
        fps += n_fp
        n_cp += len(wins)
        for name, (a_tp, a_fp, a_fn) in SKAB_NAB_PROFILES.items():
            misses = len(wins) - len(firsts)
            raw[name] += a_fp * n_fp + a_fn * misses + sum(tanh_reward(r, a_tp, a_fp) for r in firsts)
            null[name] += a_fn * len(wins)
            perfect[name] += a_tp * len(wins)
    scores = {
        name: (
            100.0 * (raw[name] - null[name]) / (perfect[name] - null[name])
            if perfect[name] != null[name]
            else 0.0
        )
        for name in SKAB_NAB_PROFILES
    }
    return SkabNabResult(scores=scores, missed=missed, false_positives=fps, n_changepoints=n_cp)


def chance_scores(
    files: Sequence[ChangepointFile], *, window_us: int = 60_000_000, reps: int = 20, seed: int = 0
) -> dict[str, float]:
    """SKAB-NAB scores of timing-blind alarms: as many per file as predicted, evenly spaced, random phase.

    SKAB's NAB variant charges a false positive only ``0.11`` (standard) against ``1`` for a miss, so
    alarm *density* alone earns a good score: this is the reference a changepoint detector must beat
    by knowing *when* changes happen. The mean over ``reps`` seeded random phases.

    >>> ts = np.arange(0, 600, dtype=np.int64) * 1_000_000
    >>> cp = np.zeros(600, dtype=np.int8); cp[300] = 1
    >>> chance_scores([ChangepointFile(ts, cp, np.zeros(600, dtype=np.int8))])["standard"]
    0.0
    """
    rng = np.random.default_rng(seed)
    totals = dict.fromkeys(SKAB_NAB_PROFILES, 0.0)
    for _ in range(reps):
        placed = []
        for f in files:
            pred = np.asarray(f.pred_cp)
            k = int(np.count_nonzero(pred == 1))
            alarms = np.zeros(pred.shape, dtype=np.int8)
            if k:
                step = max(1, pred.size // k)
                alarms[int(rng.integers(0, step)) :: step] = 1
            placed.append(ChangepointFile(f.timestamps_us, f.true_cp, alarms))
        for name, value in skab_nab(placed, window_us=window_us).scores.items():
            totals[name] += value / reps
    return totals

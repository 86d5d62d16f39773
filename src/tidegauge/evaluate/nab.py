"""The Numenta Anomaly Benchmark (NAB v1.1) scorer, as pure functions over arrays.

What is scored, per file, row by row (rows in time order):

* **Probation.** The first ``min(floor(0.15 * n), 0.15 * 5000)`` rows are not scored at all.
* **Windows.** Each labelled anomaly window ``[start, end]`` (row indices, inclusive) counts once: the
  *earliest* detection inside it earns ``tp * S(-(end - i + 1) / width) / S(-1)``, where
  ``S(x) = 2 / (1 + exp(5x)) - 1`` is NAB's scaled sigmoid (so the first row of a window earns exactly
  ``tp``); a window with no detection costs ``-fn``; later detections in the same window are ignored.
* **False positives.** A detection outside every window costs ``fp * S((i - prev_end) / (prev_width - 1))``
  (smaller costs right after a window, the full ``-fp`` far from it or before any window;
  ``S(x) = -1`` for ``x >= 3``).
* **Threshold.** A row is a detection when its anomaly score is ``>= threshold``. One threshold is chosen
  for the whole corpus and each profile: the one that maximises the summed raw score, searched over the
  union of all score values (ties go to the highest threshold, as in NAB's stable sort).
* **Normalisation.** ``100 * (raw - null) / (perfect - null)`` where ``null`` is the raw score of NAB's
  null detector (a constant score of 0.5, optimised the same way) and ``perfect`` is ``tp`` times the
  number of labelled windows.

>>> import numpy as np
>>> f = NabFile("a.csv", np.r_[np.zeros(20), 1.0, np.zeros(9)], ((20, 24),))
>>> round(score_corpus([f])["standard"].score, 1)
100.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "NAB_PROFILES",
    "CostProfile",
    "NabFile",
    "NabProfileResult",
    "probation_length",
    "scaled_sigmoid",
    "score_corpus",
    "sweep_file",
    "windows_to_rows",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

_NO_DETECTION_THRESHOLD = 1.1
"""NAB's starting threshold: above every score in [0, 1], i.e. "detect nothing"."""

_NULL_DETECTOR_SCORE = 0.5
"""NAB's null detector outputs this constant for every row."""


@dataclass(frozen=True, slots=True)
class CostProfile:
    """A NAB application profile: the weights of a true positive, a false positive and a miss."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float

    def __post_init__(self) -> None:
        for attr in ("tp_weight", "fp_weight", "fn_weight"):
            if not getattr(self, attr) >= 0:
                raise ValueError(f"profile {self.name!r}: {attr} must be >= 0, got {getattr(self, attr)!r}")


NAB_PROFILES: tuple[CostProfile, ...] = (
    CostProfile("standard", 1.0, 0.11, 1.0),
    CostProfile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    CostProfile("reward_low_FN_rate", 1.0, 0.11, 2.0),
)
"""The three profiles of NAB v1.1 ``config/profiles.json``."""


@dataclass(frozen=True, slots=True)
class NabFile:
    """One scored file: the detector's anomaly scores and the labelled windows as row ranges.

    ``windows`` are ``(first_row, last_row)`` pairs, inclusive, sorted and not overlapping.
    """

    name: str
    scores: FloatArray
    windows: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        n = len(self.scores)
        prev_end = -1
        for start, end in self.windows:
            if not 0 <= start <= end < n:
                raise ValueError(f"{self.name}: window ({start}, {end}) is outside rows 0..{n - 1}")
            if start <= prev_end:
                raise ValueError(f"{self.name}: windows overlap or are unsorted at ({start}, {end})")
            prev_end = end


@dataclass(frozen=True, slots=True)
class NabProfileResult:
    """The corpus result for one profile; ``score`` is normalised (null = 0, perfect = 100)."""

    profile: CostProfile
    threshold: float
    raw: float
    null: float
    perfect: float
    score: float
    windows_detected: int
    windows_missed: int
    false_positives: int
    per_file: Mapping[str, float] = field(default_factory=dict)


def scaled_sigmoid(x: FloatArray) -> FloatArray:
    """NAB's ``2 * sigmoid(-5 x) - 1``, and exactly ``-1`` for ``x >= 3`` (far-away false positives).

    >>> [round(float(v), 5) for v in scaled_sigmoid(np.array([-1.0, 0.0, 3.0]))]
    [0.98661, 0.0, -1.0]
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        out = 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    return np.where(x >= 3.0, -1.0, out)


def probation_length(n_rows: int, fraction: float = 0.15) -> int:
    """Number of leading rows NAB leaves unscored: ``min(floor(fraction * n), fraction * 5000)``.

    >>> probation_length(100), probation_length(10_000)
    (15, 750)
    """
    limit = min(math.floor(fraction * n_rows), fraction * 5000)
    # NAB scores row i when i >= limit; for a fractional limit that is the ceiling.
    return math.ceil(limit - 1e-9)


def windows_to_rows(
    timestamps_us: npt.NDArray[np.int64], windows_us: Sequence[tuple[int, int]]
) -> tuple[tuple[int, int], ...]:
    """Map time windows (inclusive, microseconds) to inclusive row ranges of a sorted timestamp column.

    Windows that contain no row are dropped with a warning.
    """
    ts = np.asarray(timestamps_us, dtype=np.int64)
    out: list[tuple[int, int]] = []
    for start, end in windows_us:
        first = int(np.searchsorted(ts, start, side="left"))
        last = int(np.searchsorted(ts, end, side="right")) - 1
        if first > last:
            logger.warning("window (%s, %s) contains no row; ignored", start, end)
            continue
        out.append((first, last))
    return tuple(out)


def sweep_file(
    n_rows: int, windows: Sequence[tuple[int, int]], profile: CostProfile, *, probation_fraction: float = 0.15
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Per-row weighted score a detection there would earn, and each row's window id.

    Window ids: ``k >= 0`` for the k-th window, ``-1`` outside every window, ``-2`` in probation.
    """
    sweep = np.empty(n_rows, dtype=np.float64)
    wid = np.full(n_rows, -1, dtype=np.int64)
    idx = np.arange(n_rows, dtype=np.float64)
    max_tp = float(scaled_sigmoid(np.array([-1.0]))[0])
    # Rows before the first window: full false-positive cost.
    first_start = windows[0][0] if windows else n_rows
    sweep[:first_start] = -profile.fp_weight
    for k, (start, end) in enumerate(windows):
        width = end - start + 1
        inside = slice(start, end + 1)
        pos = -(end - idx[inside] + 1) / width
        sweep[inside] = scaled_sigmoid(pos) * profile.tp_weight / max_tp
        wid[inside] = k
        after_end = windows[k + 1][0] if k + 1 < len(windows) else n_rows
        after = slice(end + 1, after_end)
        if width > 1:
            past = np.abs(end - idx[after]) / (width - 1)
        else:
            # NAB divides by zero here; a one-row window gives no grace period after it.
            past = np.full(after_end - end - 1, 3.0)
        sweep[after] = scaled_sigmoid(past) * profile.fp_weight
    wid[: probation_length(n_rows, probation_fraction)] = -2
    return sweep, wid


@dataclass(frozen=True, slots=True)
class _Sweep:
    scores: FloatArray
    sweep: FloatArray
    window: npt.NDArray[np.int64]  # global window id, -1 outside
    file: npt.NDArray[np.int64]
    n_windows: int


def _collect(files: Sequence[NabFile], profile: CostProfile, probation_fraction: float) -> _Sweep:
    parts: list[tuple[FloatArray, FloatArray, npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
    offset = 0
    for fi, f in enumerate(files):
        sweep, wid = sweep_file(len(f.scores), f.windows, profile, probation_fraction=probation_fraction)
        keep = wid != -2
        gw = np.where(wid[keep] >= 0, wid[keep] + offset, -1)
        parts.append((np.asarray(f.scores, dtype=np.float64)[keep], sweep[keep], gw, np.full(gw.size, fi)))
        offset += len(f.windows)
    if not parts:
        empty = np.empty(0)
        return _Sweep(empty, empty, np.empty(0, np.int64), np.empty(0, np.int64), 0)
    return _Sweep(
        scores=np.concatenate([p[0] for p in parts]),
        sweep=np.concatenate([p[1] for p in parts]),
        window=np.concatenate([p[2] for p in parts]),
        file=np.concatenate([p[3] for p in parts]),
        n_windows=offset,
    )


def _sweep_thresholds(s: _Sweep, profile: CostProfile) -> tuple[FloatArray, FloatArray]:
    """Raw corpus score for "no detection" and for every distinct score value as threshold (descending)."""
    scored_windows = np.unique(s.window[s.window >= 0])
    order = np.argsort(-s.scores, kind="stable")
    sorted_scores = s.scores[order]
    new_group = (
        np.r_[True, sorted_scores[1:] != sorted_scores[:-1]] if sorted_scores.size else np.empty(0, bool)
    )
    group = np.cumsum(new_group)  # 1-based group of each sorted row; group 0 is "no detection"
    thresholds = sorted_scores[new_group]
    delta = np.zeros(thresholds.size + 1)
    win = s.window[order]
    sw = s.sweep[order]
    fp_rows = win < 0
    np.add.at(delta, group[fp_rows], sw[fp_rows])
    best = dict.fromkeys(scored_windows.tolist(), -profile.fn_weight)
    for g, w, v in zip(group[~fp_rows].tolist(), win[~fp_rows].tolist(), sw[~fp_rows].tolist(), strict=True):
        if v > best[w]:
            delta[g] += v - best[w]
            best[w] = v
    totals = -profile.fn_weight * scored_windows.size + np.cumsum(delta)
    return thresholds, totals


def _best_threshold(s: _Sweep, profile: CostProfile) -> tuple[float, float]:
    thresholds, totals = _sweep_thresholds(s, profile)
    j = int(np.argmax(totals))  # first maximum = highest threshold among ties
    if j == 0:
        top = float(thresholds[0]) if thresholds.size else 0.0
        thr = _NO_DETECTION_THRESHOLD if top < _NO_DETECTION_THRESHOLD else float(np.nextafter(top, np.inf))
    else:
        thr = float(thresholds[j - 1])
    return thr, float(totals[j])


def score_corpus(
    files: Sequence[NabFile],
    profiles: Sequence[CostProfile] = NAB_PROFILES,
    *,
    probation_fraction: float = 0.15,
) -> dict[str, NabProfileResult]:
    """Score a corpus under each profile with NAB v1.1's threshold optimisation and normalisation."""
    if not 0 <= probation_fraction < 1:
        raise ValueError(f"probation_fraction must be in [0, 1), got {probation_fraction!r}")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError("file names must be unique in a corpus")
    null_files = [NabFile(f.name, np.full(len(f.scores), _NULL_DETECTOR_SCORE), f.windows) for f in files]
    n_windows = sum(len(f.windows) for f in files)
    results: dict[str, NabProfileResult] = {}
    for profile in profiles:
        s = _collect(files, profile, probation_fraction)
        threshold, raw = _best_threshold(s, profile)
        _, null = _best_threshold(_collect(null_files, profile, probation_fraction), profile)
        perfect = profile.tp_weight * n_windows
        denom = perfect - null
        score = 100.0 * (raw - null) / denom if denom != 0 else 0.0
        detected = s.scores >= threshold
        in_win = s.window >= 0
        hit_windows = np.unique(s.window[detected & in_win])
        scored_windows = np.unique(s.window[in_win])
        per_file = _per_file(s, detected, names, profile)
        results[profile.name] = NabProfileResult(
            profile=profile,
            threshold=threshold,
            raw=raw,
            null=null,
            perfect=perfect,
            score=score,
            windows_detected=int(hit_windows.size),
            windows_missed=int(scored_windows.size - hit_windows.size),
            false_positives=int(np.count_nonzero(detected & ~in_win)),
            per_file=per_file,
        )
        logger.debug(
            "NAB %s: threshold %.6g raw %.4f null %.4f -> %.2f", profile.name, threshold, raw, null, score
        )
    return results


def _per_file(
    s: _Sweep, detected: npt.NDArray[np.bool_], names: Sequence[str], profile: CostProfile
) -> dict[str, float]:
    out = dict.fromkeys(names, 0.0)
    fp = detected & (s.window < 0)
    for fi, v in zip(s.file[fp].tolist(), s.sweep[fp].tolist(), strict=True):
        out[names[fi]] += v
    for w in np.unique(s.window[s.window >= 0]).tolist():
        rows = s.window == w
        hits = s.sweep[rows & detected]
        fi = int(s.file[rows][0])
        out[names[fi]] += float(hits.max()) if hits.size else -profile.fn_weight
    return out

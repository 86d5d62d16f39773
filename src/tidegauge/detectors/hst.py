"""``HalfSpaceTrees``: the streaming half-space forest of Tan, Ting & Liu (2011), vectorised per key."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from tidegauge._jit import lazy_njit
from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot, check_fields, check_positive

__all__ = ["HalfSpaceTrees", "HalfSpaceTreesSnapshot"]

logger = logging.getLogger(__name__)


class HalfSpaceTreesSnapshot(DetectorSnapshot, frozen=True, tag="detector/hst/1"):
    """State of :class:`HalfSpaceTrees`: reference and latest masses per key, tree and node."""


class HalfSpaceTrees(Detector):
    """Half-Space Trees over a record's fields (Tan, Ting & Liu, IJCAI 2011).

    ``n_trees`` random complete trees of depth ``height`` split a randomly perturbed workspace around
    ``limits`` at half-way points. Every key (``state="per_key"``) or the whole stream
    (``state="shared"``) keeps two masses per node: the *reference* window's and the *latest* window's;
    after ``window_size`` learned records the latest becomes the reference. A record walks each tree
    until a node's reference mass drops below ``size_limit`` and gets ``sum(mass * 2**depth)``; the
    score is ``1 - that / (n_trees * window_size * (2**(height + 1) - 1))`` as in River, so rarely
    visited regions score near 1. Raw HST scores cluster high for every point: wrap it in
    :class:`~tidegauge.detectors.Calibrated` so a threshold means the same across sensors.

    Scores are 0 during each key's first window (its warm-up). A record with any NaN, inf or null field
    is skipped (score 0, not learned). Memory is ``8 * n_trees * 2**(height + 1)`` bytes per key.

    Parameters
    ----------
    fields:
        Value columns (the feature vector).
    limits:
        ``{field: (low, high)}``: the expected range of each field, used to scale it to [0, 1]
        (fields not given are taken as already in [0, 1]).
    n_trees, height, window_size:
        Forest size, tree depth, records per mass window.
    state:
        ``"per_key"`` (one forest's masses per key) or ``"shared"`` (one for the whole stream).
    seed:
        Seed of the random tree structure.

    Examples
    --------
    >>> import numpy as np, polars as pl
    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(0.5, 0.05, 300), 0.95]
    >>> logic = HalfSpaceTrees(["x"], window_size=100, seed=1).build()
    >>> s = logic.score_learn(pl.DataFrame({"x": x}))["score"].to_numpy()
    >>> bool(s[-1] > s[200:300].max())
    True
    """

    kind = "hst"
    snapshot_type = HalfSpaceTreesSnapshot

    def __init__(
        self,
        fields: Sequence[str] | str,
        *,
        limits: Mapping[str, tuple[float, float]] | None = None,
        n_trees: int = 10,
        height: int = 6,
        window_size: int = 250,
        size_limit: float | None = None,
        state: Literal["per_key", "shared"] = "per_key",
        threshold: float = 0.9,
        seed: int = 0,
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=threshold, warmup=0, key=key, time=time)
        self.fields = check_fields(fields)
        check_positive("n_trees", n_trees, integer=True)
        check_positive("height", height, integer=True, upper=16)
        check_positive("window_size", window_size, integer=True)
        if size_limit is not None:
            check_positive("size_limit", size_limit)
        if state not in ("per_key", "shared"):
            raise ValueError(f"state={state!r}: give 'per_key' or 'shared'")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed={seed!r}: give an int")
        limits = dict(limits or {})
        unknown = set(limits) - set(self.fields)
        if unknown:
            raise ValueError(f"limits name {sorted(unknown)} which are not in fields={list(self.fields)}")
        lo = np.zeros(len(self.fields))
        hi = np.ones(len(self.fields))
        for j, f in enumerate(self.fields):
            if f in limits:
                pair = limits[f]
                if len(pair) != 2 or not all(math.isfinite(float(v)) for v in pair) or pair[0] >= pair[1]:
                    raise ValueError(f"limits[{f!r}]={pair!r}: give (low, high) with finite low < high")
                lo[j], hi[j] = float(pair[0]), float(pair[1])
        self.limits = {f: (float(lo[j]), float(hi[j])) for j, f in enumerate(self.fields)}
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.size_limit = 0.1 * window_size if size_limit is None else float(size_limit)
        self.state = state
        self.seed = seed
        self._lo = lo
        self._span = hi - lo
        self._feat, self._split = _build_trees(len(self.fields), n_trees, height, seed)

    def _new_logic(self) -> DetectorLogic:
        return _HSTLogic(self)


def _build_trees(n_features: int, n_trees: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split feature and value of every internal node (heap order) of every tree."""
    rng = np.random.default_rng(seed)
    n_nodes = 2 ** (height + 1) - 1
    feat = np.zeros((n_trees, n_nodes), dtype=np.int64)
    split = np.zeros((n_trees, n_nodes), dtype=np.float64)
    for t in range(n_trees):
        s = rng.uniform(size=n_features)
        r = 2.0 * np.maximum(s, 1.0 - s)
        lo = np.empty((n_nodes, n_features))
        hi = np.empty((n_nodes, n_features))
        lo[0], hi[0] = s - r, s + r
        for node in range(2**height - 1):
            q = int(rng.integers(n_features))
            mid = 0.5 * (lo[node, q] + hi[node, q])
            feat[t, node], split[t, node] = q, mid
            left, right = 2 * node + 1, 2 * node + 2
            lo[left], hi[left] = lo[node], hi[node]
            lo[right], hi[right] = lo[node], hi[node]
            hi[left, q] = mid
            lo[right, q] = mid
    return feat, split


class _HSTLogic(DetectorLogic):
    definition: HalfSpaceTrees

    def __init__(self, definition: HalfSpaceTrees) -> None:
        super().__init__(definition)
        shape = (definition.n_trees, 2 ** (definition.height + 1) - 1)
        self._declare("r_mass", shape, np.int32, 0)
        self._declare("l_mass", shape, np.int32, 0)
        self._declare("count", (), np.int64, 0)
        self._declare("windows", (), np.int64, 0)

    def _state_keys(self, batch: Batch) -> np.ndarray:
        if self.definition.state == "shared":
            return np.zeros(batch.height, dtype=np.int64)
        return batch.keys

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        d = self.definition
        self._warn_missing(d.fields, batch)
        keys = self._state_keys(batch)
        x = (batch.values(d.fields) - d._lo) / d._span
        a = self._arrays
        max_score = d.n_trees * d.window_size * (2.0 ** (d.height + 1) - 1.0)
        _hst_kernel(
            keys, x, d._feat, d._split, a["r_mass"], a["l_mass"], a["count"], a["windows"],
            d.height, d.window_size, d.size_limit, max_score, score, learn, out,
        )  # fmt: skip


@lazy_njit(cache=True, nogil=True)
def _hst_kernel(
    keys: np.ndarray,
    x: np.ndarray,
    feat: np.ndarray,
    split: np.ndarray,
    r_mass: np.ndarray,
    l_mass: np.ndarray,
    count: np.ndarray,
    windows: np.ndarray,
    height: int,
    window_size: int,
    size_limit: float,
    max_score: float,
    do_score: bool,
    do_learn: bool,
    out: np.ndarray,
) -> None:
    n, f = x.shape
    n_trees = feat.shape[0]
    for i in range(n):
        ok = True
        for j in range(f):
            if not math.isfinite(x[i, j]):
                ok = False
        if not ok:
            continue
        k = keys[i]
        if do_score and windows[k] > 0:
            total = 0.0
            for t in range(n_trees):
                node = 0
                for depth in range(height + 1):
                    m = r_mass[k, t, node]
                    total += m * (2.0**depth)
                    if m < size_limit or depth == height:
                        break
                    node = 2 * node + 1 if x[i, feat[t, node]] < split[t, node] else 2 * node + 2
            s = 1.0 - total / max_score
            out[i] = min(max(s, 0.0), 1.0)
        if do_learn:
            for t in range(n_trees):
                node = 0
                for depth in range(height + 1):
                    l_mass[k, t, node] += 1
                    if depth == height:
                        break
                    node = 2 * node + 1 if x[i, feat[t, node]] < split[t, node] else 2 * node + 2
            c = count[k] + 1
            if c >= window_size:
                r_mass[k] = l_mass[k]
                l_mass[k] = 0
                c = 0
                windows[k] += 1
            count[k] = c

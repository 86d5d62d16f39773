"""``IsolationForest``: per-group forests retrained in the background on recent readings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from tidegauge.checkpoint.codec import pack_array, unpack_array
from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot, check_fields, check_positive
from tidegauge.errors import MissingDependencyError

__all__ = ["IsolationForest", "IsolationForestSnapshot"]

logger = logging.getLogger(__name__)

_ALL = "*"


class IsolationForestSnapshot(DetectorSnapshot, frozen=True, tag="detector/isolation_forest/1"):
    """State of :class:`IsolationForest`: per group, its recent sample and its model's training sample.

    Models are not stored: they are refitted from their training sample and seed on restore, which gives
    the same trees (scikit-learn is deterministic for a ``random_state``).
    """


def _fit_model(sample: np.ndarray, n_estimators: int, max_samples: int, seed: int) -> Any:
    """Fit one scikit-learn IsolationForest (runs in the retraining thread)."""
    try:
        from sklearn.ensemble import IsolationForest as _SkIsolationForest  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("scikit-learn", "ml") from exc
    model = _SkIsolationForest(n_estimators=n_estimators, max_samples=min(max_samples, len(sample)), random_state=seed)
    return model.fit(sample)


@dataclass
class _Group:
    buf: np.ndarray
    count: int = 0
    fits: int = 0
    model: Any = None
    model_sample: np.ndarray | None = None
    pending: Future[Any] | None = None
    pending_sample: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class IsolationForest(Detector):
    """Isolation forests (Liu, Ting & Zhou 2008), one per ``group``, retrained on a sliding sample.

    Each group (a value of the ``group`` column, e.g. ``sensor_type``; one group when ``None``) keeps its
    last ``sample_size`` valid feature vectors. Every ``retrain_every`` learned records a new forest is
    fitted on that sample. With ``retrain="background"`` the fit runs in a worker thread and the previous
    model keeps scoring until the new one is ready (swapped in at the next batch): retraining never
    blocks the stream. ``retrain="inline"`` fits on the spot, which makes results independent of timing
    (batch results equal record-at-a-time results exactly; used in tests and replays).

    The score is scikit-learn's anomaly score ``2 ** (-E[path] / c(n))`` in (0, 1] (about 0.5 for
    ordinary points, near 1 for isolated ones); it is 0 until the group's first model exists. A record
    with any NaN, inf or null field is skipped (score 0, not learned). Needs ``scikit-learn``
    (``pip install 'tidegauge[ml]'``).

    Examples
    --------
    >>> import numpy as np, polars as pl
    >>> x = np.r_[np.random.default_rng(0).normal(0, 1, 400), 9.0]
    >>> det = IsolationForest(["x"], sample_size=200, retrain_every=200, retrain="inline", seed=1)
    >>> s = det.build().score_learn(pl.DataFrame({"x": x}))["score"].to_numpy()
    >>> bool(s[-1] > 0.7 > np.median(s[200:400]))
    True
    """

    kind = "isolation_forest"
    snapshot_type = IsolationForestSnapshot

    def __init__(
        self,
        fields: Sequence[str] | str,
        *,
        group: str | None = None,
        sample_size: int = 1024,
        retrain_every: int = 1024,
        n_estimators: int = 50,
        max_samples: int = 256,
        retrain: Literal["background", "inline"] = "background",
        threshold: float = 0.7,
        seed: int = 0,
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=threshold, warmup=0, key=key, time=time)
        self.fields = check_fields(fields)
        for label, v in (("sample_size", sample_size), ("retrain_every", retrain_every)):
            check_positive(label, v, integer=True)
        check_positive("n_estimators", n_estimators, integer=True)
        check_positive("max_samples", max_samples, integer=True)
        if sample_size < 16:
            raise ValueError(f"sample_size={sample_size!r}: a forest needs at least 16 readings, e.g. 1024")
        if retrain not in ("background", "inline"):
            raise ValueError(f"retrain={retrain!r}: give 'background' or 'inline'")
        if group is not None and (not isinstance(group, str) or not group):
            raise TypeError(f"group={group!r}: give a column name (e.g. 'sensor_type') or None")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed={seed!r}: give an int")
        self.group = group
        self.sample_size = sample_size
        self.retrain_every = retrain_every
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.retrain = retrain
        self.seed = seed

    def _new_logic(self) -> DetectorLogic:
        return _IsolationForestLogic(self)


class _IsolationForestLogic(DetectorLogic):
    definition: IsolationForest

    def __init__(self, definition: IsolationForest) -> None:
        super().__init__(definition)
        self.groups: dict[str, _Group] = {}
        self._executor: ThreadPoolExecutor | None = None

    def _fit_seed(self, fit_no: int) -> int:
        return (self.definition.seed * 1_000_003 + fit_no) % 2**31

    def _fit_now(self, sample: np.ndarray, fit_no: int) -> Any:
        d = self.definition
        return _fit_model(sample, d.n_estimators, d.max_samples, self._fit_seed(fit_no))

    def _install_ready(self, g: _Group) -> None:
        if g.pending is not None and g.pending.done():
            g.model = g.pending.result()
            g.model_sample = g.pending_sample
            g.pending = None
            g.pending_sample = None

    def _start_fit(self, g: _Group) -> None:
        d = self.definition
        m = min(g.count, d.sample_size)
        start = g.count % d.sample_size if g.count >= d.sample_size else 0
        sample = np.roll(g.buf, -start, axis=0)[:m].copy()
        g.fits += 1
        if d.retrain == "inline":
            g.model, g.model_sample = self._fit_now(sample, g.fits), sample
            return
        if g.pending is not None:
            # the previous fit is still running: skip this one rather than queue up stale work
            logger.warning("%s: retrain still running, skipping one", d.name)
            g.fits -= 1
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidegauge-iforest")
        g.pending_sample = sample
        g.pending = self._executor.submit(self._fit_now, sample, g.fits)

    def _group_ids(self, batch: Batch) -> tuple[list[str], np.ndarray]:
        d = self.definition
        if d.group is None:
            return [_ALL], np.zeros(batch.height, dtype=np.int64)
        col = batch.df[d.group] if d.group in batch.df.columns else pl.Series([None] * batch.height)
        labels = col.cast(pl.String).fill_null("<null>")
        names = labels.unique(maintain_order=True)
        codes = labels.replace_strict(names, pl.int_range(0, names.len(), eager=True), return_dtype=pl.Int64)
        return names.to_list(), codes.to_numpy()

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        d = self.definition
        self._warn_missing(d.fields, batch)
        x = batch.values(d.fields)
        valid = ~np.isnan(x).any(axis=1)
        names, codes = self._group_ids(batch)
        for gi, gname in enumerate(names):
            rows = np.flatnonzero((codes == gi) & valid)
            if not rows.size:
                continue
            g = self.groups.get(gname)
            if g is None:
                g = self.groups[gname] = _Group(buf=np.zeros((d.sample_size, len(d.fields))))
            pos = 0
            while pos < rows.size:
                self._install_ready(g)
                # records up to (and including) the next retrain point share one model
                to_retrain = d.retrain_every - g.count % d.retrain_every
                seg = rows[pos : pos + to_retrain] if learn else rows[pos:]
                if score and g.model is not None:
                    out[seg] = np.clip(-g.model.score_samples(x[seg]), 0.0, 1.0)
                if learn:
                    tail = seg[-d.sample_size :]
                    first = g.count + seg.size - tail.size
                    g.buf[(first + np.arange(tail.size)) % d.sample_size] = x[tail]
                    g.count += seg.size
                    if g.count % d.retrain_every == 0:
                        self._start_fit(g)
                pos += seg.size

    def wait_for_retrain(self, timeout: float | None = None) -> None:
        """Block until every pending background fit is installed (for tests and shutdown)."""
        for g in self.groups.values():
            if g.pending is not None:
                g.pending.result(timeout=timeout)
                self._install_ready(g)

    def snapshot(self) -> DetectorSnapshot:
        arrays = {}
        meta: dict[str, int | float | str | list[str]] = {"groups": list(self.groups)}
        for i, g in enumerate(self.groups.values()):
            arrays[f"{i}/buf"] = pack_array(g.buf)
            if g.model_sample is not None:
                arrays[f"{i}/model_sample"] = pack_array(g.model_sample)
            if g.pending_sample is not None:
                arrays[f"{i}/pending_sample"] = pack_array(g.pending_sample)
            meta[f"{i}/count"] = g.count
            meta[f"{i}/fits"] = g.fits
        return self.definition.snapshot_type(**self._state_snapshot(arrays=arrays, meta=meta))

    def restore(self, snap: DetectorSnapshot) -> None:
        super().restore(snap)
        groups = snap.meta.get("groups", [])
        assert isinstance(groups, list)
        for i, name in enumerate(groups):
            g = _Group(buf=unpack_array(snap.arrays[f"{i}/buf"]))
            g.count = int(snap.meta[f"{i}/count"])  # type: ignore[arg-type]
            g.fits = int(snap.meta[f"{i}/fits"])  # type: ignore[arg-type]
            pending = f"{i}/pending_sample" in snap.arrays
            model_fit = g.fits - 1 if pending else g.fits
            if f"{i}/model_sample" in snap.arrays:
                g.model_sample = unpack_array(snap.arrays[f"{i}/model_sample"])
                g.model = self._fit_now(g.model_sample, model_fit)
            if pending:
                sample = unpack_array(snap.arrays[f"{i}/pending_sample"])
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidegauge-iforest")
                g.pending_sample = sample
                g.pending = self._executor.submit(self._fit_now, sample, g.fits)
            self.groups[name] = g

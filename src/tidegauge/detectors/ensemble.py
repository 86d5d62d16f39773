"""``Ensemble``: several detectors on the same stream, their scores combined."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import msgspec
import numpy as np
import polars as pl

from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot

__all__ = ["Ensemble", "EnsembleSnapshot"]

logger = logging.getLogger(__name__)


class EnsembleSnapshot(DetectorSnapshot, frozen=True, tag="detector/ensemble/1"):
    """State of :class:`Ensemble`: its members' snapshots, in order."""


class Ensemble(Detector):
    """Run ``detectors`` side by side and combine their scores.

    ``combine``:

    - ``"max"``: the highest member score; ``is_anomaly`` when any member flags the record (or, with a
      ``threshold``, when the maximum reaches it);
    - ``"mean"``: the mean member score; ``is_anomaly`` when it reaches ``threshold`` (default 0.5);
    - ``"vote"``: the fraction of members that flag the record; ``is_anomaly`` when it reaches
      ``threshold`` (default 0.5, half of them).

    Every member sees every record and learns as it would alone.

    Examples
    --------
    >>> import polars as pl
    >>> from tidegauge.detectors import Threshold, Flatline
    >>> det = Ensemble([Threshold(["t"], upper=40.0), Flatline(["t"], n=3)], combine="max")
    >>> det.build().score_learn(pl.DataFrame({"t": [20.0, 50.0, 21.0, 21.0, 21.0]}))["is_anomaly"].to_list()
    [False, True, False, False, True]
    """

    kind = "ensemble"
    snapshot_type = EnsembleSnapshot

    def __init__(
        self,
        detectors: Sequence[Detector],
        *,
        combine: Literal["max", "mean", "vote"] = "max",
        threshold: float | None = None,
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=0.5 if threshold is None else threshold, warmup=0, key=key, time=time)
        if isinstance(detectors, Detector) or not isinstance(detectors, Sequence) or not detectors:
            raise TypeError("detectors: give a non-empty list of detectors, e.g. [ZScore(...)].")
        for d in detectors:
            if not isinstance(d, Detector):
                raise TypeError(f"detectors: {d!r} is not a Detector; build it with build_detector(...)")
        if combine not in ("max", "mean", "vote"):
            raise ValueError(f"combine={combine!r}: give 'max', 'mean' or 'vote'")
        self.detectors = tuple(detectors)
        self.combine = combine
        self.any_flag = combine == "max" and threshold is None

    def _new_logic(self) -> DetectorLogic:
        return _EnsembleLogic(self)


class _EnsembleLogic(DetectorLogic):
    definition: Ensemble

    def __init__(self, definition: Ensemble) -> None:
        super().__init__(definition)
        self.members = [d.build() for d in definition.detectors]
        self._last_flags: np.ndarray | None = None

    def run(self, batch: Batch, *, score: bool, learn: bool) -> np.ndarray:
        d = self.definition
        n = batch.height
        scores = np.zeros((len(self.members), n))
        flags = np.zeros((len(self.members), n), dtype=bool)
        for i, m in enumerate(self.members):
            m.now_us = self.now_us
            scores[i] = m.run(batch, score=score, learn=learn)
            flags[i] = m.flags(batch, scores[i])
        if d.combine == "max":
            out = scores.max(axis=0) if n else np.zeros(0)
        elif d.combine == "mean":
            out = scores.mean(axis=0) if n else np.zeros(0)
        else:
            out = flags.mean(axis=0) if n else np.zeros(0)
        self._last_flags = np.asarray(flags.any(axis=0)) if d.any_flag else None
        return out

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def flags(self, batch: Batch, scores: np.ndarray) -> np.ndarray:
        if self._last_flags is not None and self._last_flags.shape == scores.shape:
            return self._last_flags
        return super().flags(batch, scores)

    def on_tick(self, now_us: int, watermark: int) -> pl.DataFrame | None:
        frames = [f for m in self.members if (f := m.on_tick(now_us, watermark)) is not None]
        return pl.concat(frames, how="diagonal_relaxed") if frames else None

    def snapshot(self) -> DetectorSnapshot:
        children = [msgspec.msgpack.encode(m.snapshot()) for m in self.members]
        return self.definition.snapshot_type(**self._state_snapshot(children=children))

    def restore(self, snap: DetectorSnapshot) -> None:
        super().restore(snap)
        if len(snap.children) != len(self.members):
            raise ValueError(
                f"snapshot of {self.definition.name!r} has {len(snap.children)} members, the ensemble "
                f"{len(self.members)}: its detectors changed since the checkpoint"
            )
        self.members = [
            d.build(msgspec.msgpack.decode(raw, type=d.snapshot_type))
            for d, raw in zip(self.definition.detectors, snap.children, strict=True)
        ]

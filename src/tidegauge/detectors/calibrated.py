"""``Calibrated``: turn a detector's raw scores into per-key tail probabilities by online quantiles."""

from __future__ import annotations

import logging
import math

import msgspec
import numpy as np

from tidegauge._jit import lazy_njit
from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot, check_positive

__all__ = ["Calibrated", "CalibratedSnapshot"]

logger = logging.getLogger(__name__)

_LN10 = math.log(10.0)
# 1 - 2**-52: keeps -log(1 - s) finite (about 36) for scores that round to 1.0
_S_MAX = 1.0 - 2.0**-52


class CalibratedSnapshot(DetectorSnapshot, frozen=True, tag="detector/calibrated/1"):
    """State of :class:`Calibrated`: the inner detector's snapshot and two quantiles per key."""


class Calibrated(Detector):
    """Calibrate ``detector``'s scores per key, so one threshold means the same on every sensor.

    A raw score ``s`` is read as a surprisal ``r = -log(1 - s)``. Each key tracks the 90% and 99%
    quantiles of its own ``r`` online (stochastic-approximation quantiles with step ``eta``), and the
    calibrated score is ``1 - P(R > r)`` under an exponential tail through those two quantiles: the
    estimated probability that this key's normal traffic scores below ``r``. ``threshold=0.9999`` thus
    flags about one normal reading in 10,000 on every sensor, whatever the raw scale. The quantiles start
    at the values of a well-calibrated detector (``ln 10`` and ``ln 100``: a ``ZScore`` on normal noise),
    so calibration is close to the identity until a key's data say otherwise.

    Records the inner detector scores 0 (warm-up, bad values) score 0 and do not move the quantiles.
    A record the calibration flags moves them with ``flagged_weight`` times the step. With 1 (the
    default) every reading of a long anomaly pushes the key's 99% quantile up by ``0.99 * eta`` (a
    300-reading episode by about 6 nats), which can make the key blind to the next anomaly for tens
    of thousands of readings; a small weight (e.g. 0.01) avoids that, at the price of adapting slowly
    where a key's normal raw scores are far above the initial quantiles, so use it over a detector
    whose raw scores are already roughly calibrated (``ZScore``), as :func:`~tidegauge.detectors.default_detector` does.

    Examples
    --------
    >>> import numpy as np, polars as pl
    >>> from tidegauge.detectors import ZScore
    >>> det = Calibrated(ZScore(["x"], warmup=10))
    >>> x = np.r_[np.random.default_rng(0).normal(0, 1, 200), 12.0]
    >>> out = det.build().score_learn(pl.DataFrame({"x": x}))
    >>> out["is_anomaly"].to_list()[-1], int(out["is_anomaly"].sum())
    (True, 1)
    """

    kind = "calibrated"
    snapshot_type = CalibratedSnapshot

    def __init__(
        self,
        detector: Detector,
        *,
        threshold: float = 0.9999,
        eta: float = 0.02,
        flagged_weight: float = 1.0,
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        if not isinstance(detector, Detector):
            raise TypeError(f"detector={detector!r}: give a Detector, e.g. Calibrated(ZScore(['t']))")
        super().__init__(name=name or detector.name, threshold=threshold, warmup=0, key=key, time=time)
        check_positive("eta", eta, upper=1.0)
        self.detector = detector
        self.eta = float(eta)
        check_positive("flagged_weight", flagged_weight, upper=1.0)
        self.flagged_weight = float(flagged_weight)

    def _new_logic(self) -> DetectorLogic:
        return _CalibratedLogic(self)


class _CalibratedLogic(DetectorLogic):
    definition: Calibrated

    def __init__(self, definition: Calibrated) -> None:
        super().__init__(definition)
        self.inner = definition.detector.build()
        self._declare("q90", (), np.float64, _LN10)
        self._declare("q99", (), np.float64, 2.0 * _LN10)

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        self.inner.now_us = self.now_us
        raw = self.inner.run(batch, score=True, learn=learn)
        a = self._arrays
        d = self.definition
        _calibrate_kernel(
            batch.keys, raw, a["q90"], a["q99"], d.eta, d.eta * d.flagged_weight, d.threshold, score, learn, out
        )

    def on_tick(self, now_us: int, watermark: int) -> None:
        return None

    def snapshot(self) -> DetectorSnapshot:
        children = [msgspec.msgpack.encode(self.inner.snapshot())]
        return self.definition.snapshot_type(**self._state_snapshot(children=children))

    def restore(self, snap: DetectorSnapshot) -> None:
        super().restore(snap)
        inner_def = self.definition.detector
        if len(snap.children) != 1:
            raise ValueError(f"snapshot of {self.definition.name!r} should hold exactly one inner detector")
        self.inner = inner_def.build(msgspec.msgpack.decode(snap.children[0], type=inner_def.snapshot_type))


@lazy_njit(cache=True, nogil=True)
def _calibrate_kernel(
    keys: np.ndarray,
    raw: np.ndarray,
    q90: np.ndarray,
    q99: np.ndarray,
    eta: float,
    eta_flagged: float,
    threshold: float,
    do_score: bool,
    do_learn: bool,
    out: np.ndarray,
) -> None:
    ln10 = math.log(10.0)
    s_max = 1.0 - 2.0**-52
    for i in range(raw.shape[0]):
        s = raw[i]
        if not s > 0.0:
            continue
        k = keys[i]
        r = -math.log1p(-min(s, s_max))
        a = q90[k]
        b = q99[k]
        if b < a + 0.01:
            b = a + 0.01
        tail = 0.1 * math.exp(-(r - a) * ln10 / (b - a))
        cal = 1.0 - min(tail, 1.0)
        if do_score:
            out[i] = cal
        if do_learn:
            step = eta_flagged if cal >= threshold else eta
            q90[k] = a + step * (0.9 - (1.0 if r <= a else 0.0))
            q99[k] = q99[k] + step * (0.99 - (1.0 if r <= q99[k] else 0.0))

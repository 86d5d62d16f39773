"""``ZScore``: per-key EWMA mean and variance, scored by the two-sided normal tail."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from tidegauge._jit import lazy_njit
from tidegauge.checkpoint.codec import pack_array, unpack_array
from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot, check_fields, check_positive

__all__ = ["ZScore", "ZScoreSnapshot"]

logger = logging.getLogger(__name__)

_SQRT2 = math.sqrt(2.0)
_SUSTAIN = 10
"""Winsorised readings in a row that make a shift sustained when ``restart`` is off (else ``restart[0]``)."""


class ZScoreSnapshot(DetectorSnapshot, frozen=True, tag="detector/zscore/2"):
    """State of :class:`ZScore`: ``mean``, ``var``, ``count`` per key and field."""


class ZScore(Detector):
    """Exponentially weighted z-score per key and field.

    Each key keeps, per field, an exponentially weighted mean and variance with weight ``alpha``
    (bias-corrected: the first ``1/alpha`` values are averaged with weight ``1/n``, so the estimate is
    exact from the start). A value ``x`` gets ``z = |x - mean| / sd`` against the state before it and the
    score ``erf(z / sqrt(2))``: the probability mass of a normal within ``z`` standard deviations
    (``z = 3.29`` -> 0.999, ``z = 4`` -> 0.99994). A record's score is the maximum over its fields.

    Learning is winsorised: a value more than ``clip`` standard deviations away moves the mean by at most
    ``alpha * clip * sd`` and leaves the variance alone, so a sustained shift keeps being flagged for many
    readings instead of being absorbed at once, while a permanent change of level is still learned.
    When a mature baseline sees a sustained shift (``restart[0]`` winsorised values in a row), it
    remembers the level the shift left; a later value back within ``clip`` standard deviations of that
    level is scored against it and snaps the mean back, so the end of a long, absorbed anomaly is not
    flagged for thousands of readings.

    Parameters
    ----------
    fields:
        Value columns to score.
    alpha:
        Weight of a new value in the mean and variance, in (0, 1].
    threshold:
        ``is_anomaly`` when ``score >= threshold`` (0.999 is about 3.3 standard deviations).
    warmup:
        Values per key and field learned before scoring starts (score 0 until then).
    clip:
        Winsorising bound in standard deviations (``None``: plain EWMA updates).
    min_std:
        Floor on the standard deviation, so a constant signal does not make every jitter infinite.
    restart:
        ``(n, maturity)``: a key that has learned fewer than ``maturity`` values and then sees ``n``
        winsorised values in a row starts over (a new warm-up at the new level). A young baseline that
        was learned during an anomaly is thus dropped after ``n`` readings of normal data instead of
        flagging them for thousands; a mature baseline never restarts. ``None`` disables it.
    fleet:
        Judge restarts by a fleet prior: the detector also keeps, per field, a winsorised EWMA mean
        and variance of every key's values (weight ``fleet_alpha`` per reading). Once it has seen
        ``1/fleet_alpha`` values, a key contradicted for ``restart[0]`` readings in a row restarts,
        at any maturity, if and only if the new level is enough more typical of the fleet than the
        baseline: with ``zo``, ``zn`` the two levels in fleet standard deviations, when
        ``(zo**2 - zn**2) / 2`` (their log-likelihood ratio under a normal fleet) exceeds
        ``fleet_margin + count / restart[1]`` (prior odds against a baseline learned during an
        episode, growing with its age). So a baseline learned while a sensor was anomalous (it
        started mid-episode) is dropped when the sensor comes back to normal, while an anomaly in a
        sensor's life is not taken as its new normal (its old level is remembered as for a mature
        shift). When one field restarts, every field of the key contradicted for as long restarts
        with it (a multi-field episode ended). Before the fleet prior is ready, ``restart`` applies.
    fleet_alpha:
        Weight of one reading in the fleet prior (its time constant in readings, across all keys).
    fleet_margin:
        Log-likelihood ratio (nats) a restart needs beyond the age term.

    Examples
    --------
    >>> import polars as pl
    >>> det = ZScore(["t"], warmup=5, key="sensor")
    >>> logic = det.build()
    >>> df = pl.DataFrame({"sensor": ["a"] * 8, "t": [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 9.0]})
    >>> out = logic.score_learn(df)
    >>> out["is_anomaly"].to_list()
    [False, False, False, False, False, False, False, True]
    """

    kind = "zscore"
    snapshot_type = ZScoreSnapshot

    def __init__(
        self,
        fields: Sequence[str] | str,
        *,
        alpha: float = 0.02,
        threshold: float = 0.999,
        warmup: int = 30,
        clip: float | None = 3.0,
        min_std: float = 1e-6,
        restart: tuple[int, int] | None = (20, 1000),
        fleet: bool = False,
        fleet_alpha: float = 1e-4,
        fleet_margin: float = 0.0,
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=threshold, warmup=warmup, key=key, time=time)
        self.fields = check_fields(fields)
        check_positive("alpha", alpha, upper=1.0)
        if clip is not None:
            check_positive("clip", clip)
        check_positive("min_std", min_std)
        if restart is not None:
            if len(restart) != 2:
                raise ValueError(f"restart={restart!r}: give (readings, maturity), e.g. (20, 1000), or None")
            check_positive("restart[0]", restart[0], integer=True)
            check_positive("restart[1]", restart[1], integer=True)
        if not isinstance(fleet, bool):
            raise TypeError(f"fleet={fleet!r}: give True or False")
        check_positive("fleet_alpha", fleet_alpha, upper=1.0)
        if isinstance(fleet_margin, bool) or not isinstance(fleet_margin, int | float) or not fleet_margin >= 0:
            raise ValueError(f"fleet_margin={fleet_margin!r}: give a number of standard deviations >= 0")
        if fleet and restart is None:
            raise ValueError("fleet=True judges restarts: give restart=(readings, maturity) too")
        self.restart = restart
        self.fleet = fleet
        self.fleet_alpha = float(fleet_alpha)
        self.fleet_margin = float(fleet_margin)
        self.alpha = float(alpha)
        self.clip = None if clip is None else float(clip)
        self.min_std = float(min_std)

    def _new_logic(self) -> DetectorLogic:
        return _ZScoreLogic(self)


class _ZScoreLogic(DetectorLogic):
    definition: ZScore

    def __init__(self, definition: ZScore) -> None:
        super().__init__(definition)
        f = len(definition.fields)
        self._declare("mean", (f,), np.float64, 0.0)
        self._declare("var", (f,), np.float64, 0.0)
        self._declare("count", (f,), np.int64, 0)
        self._declare("run", (f,), np.int64, 0)
        self._declare("anchor", (f,), np.float64, np.nan)
        self._declare("anchor_var", (f,), np.float64, 0.0)
        self._declare("dropped", (f,), np.int8, 0)  # 1: the anchor is a level a fleet restart dropped
        if definition.fleet:
            self._declare("run_mean", (f,), np.float64, 0.0)  # mean of the values of the current run
        # fleet prior (one row per field, shared by every key): mean, variance, values seen
        self._fleet = np.zeros((f, 3), dtype=np.float64)

    def snapshot(self) -> DetectorSnapshot:
        extra = {"fleet": pack_array(self._fleet)} if self.definition.fleet else {}
        return self.definition.snapshot_type(**self._state_snapshot(arrays=extra))

    def restore(self, snap: DetectorSnapshot) -> None:
        super().restore(snap)
        if self.definition.fleet:
            if "fleet" not in snap.arrays:
                raise ValueError(f"snapshot of {self.definition.name!r} lacks the fleet prior (saved with fleet=False)")
            self._fleet = unpack_array(snap.arrays["fleet"]).astype(np.float64).reshape(self._fleet.shape)

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        d = self.definition
        self._warn_missing(d.fields, batch)
        a = self._arrays
        _zscore_kernel(
            batch.keys,
            batch.values(d.fields),
            a["mean"],
            a["var"],
            a["count"],
            a["run"],
            a["anchor"],
            a["anchor_var"],
            a["dropped"],
            a["run_mean"] if d.fleet else a["anchor"],
            d.alpha,
            -1.0 if d.clip is None else d.clip,
            d.min_std * d.min_std,
            d.warmup,
            0 if d.restart is None else d.restart[0],
            0 if d.restart is None else d.restart[1],
            _SUSTAIN if d.restart is None else d.restart[0],
            d.fleet,
            self._fleet,
            d.fleet_alpha,
            d.fleet_margin,
            score,
            learn,
            out,
        )


@lazy_njit(cache=True, nogil=True)
def _zscore_kernel(
    keys: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    count: np.ndarray,
    run: np.ndarray,
    anchor: np.ndarray,
    anchor_var: np.ndarray,
    dropped: np.ndarray,
    run_mean: np.ndarray,
    alpha: float,
    clip: float,
    min_var: float,
    warmup: int,
    restart_after: int,
    maturity: int,
    sustain: int,
    use_fleet: bool,
    fleet: np.ndarray,
    fleet_alpha: float,
    fleet_margin: float,
    do_score: bool,
    do_learn: bool,
    out: np.ndarray,
) -> None:
    n, f = x.shape
    fleet_ready = 1.0 / fleet_alpha
    settle = int(1.0 / alpha)
    for i in range(n):
        k = keys[i]
        best = 0.0
        fleet_restart = False
        for j in range(f):
            v = x[i, j]
            if math.isnan(v):
                continue
            c = count[k, j]
            m = mean[k, j]
            s2 = var[k, j]
            if s2 < min_var:
                s2 = min_var
            sd = math.sqrt(s2)
            dev = v - m
            anc = anchor[k, j]
            # back at the level held before the last sustained shift: the shift is over (or, if the
            # mean still sits there, nothing changes): judge the value against that level
            back = clip > 0.0 and not math.isnan(anc) and dropped[k, j] == 0 and abs(v - anc) <= clip * sd
            if do_score and c >= warmup and c > 0:
                z = abs(v - anc) if back and abs(v - anc) < abs(dev) else abs(dev)
                s = math.erf(z / sd / _SQRT2)
                if s > best:
                    best = s
            if do_learn:
                # the fleet's view, before this value (which state it judges)
                fm = fleet[j, 0]
                fsd = math.sqrt(fleet[j, 1]) if fleet[j, 1] > min_var else math.sqrt(min_var)
                ready = use_fleet and fleet[j, 2] >= fleet_ready
                if use_fleet:
                    _fleet_update(fleet, j, v, fleet_alpha, clip)
                c += 1
                count[k, j] = c
                a = 1.0 / c
                if a < alpha:
                    a = alpha
                if dropped[k, j] == 1 and c >= maturity:
                    # the level a restart adopted has held for a maturity: the dropped one is history
                    dropped[k, j] = 0
                    anchor[k, j] = math.nan
                prev = run[k, j]  # > 0: winsorised values in a row; <= 0: minus the settled ones
                if clip > 0.0 and c > warmup and c > 1 and abs(dev) > clip * sd:
                    if back and abs(v - anc) < abs(dev):
                        # return from a learned shift: snap to the earlier level (and its spread)
                        # instead of crawling back
                        mean[k, j] = anc
                        var[k, j] = anchor_var[k, j]
                        run[k, j] = 0
                        continue
                    r = (prev if prev > 0 else 0) + 1
                    if r == 1 and prev <= -settle:
                        # a shift leaves a level held for a time constant: that level is the one to
                        # return to (a run that starts soon after another keeps the older anchor, so
                        # a half-absorbed shift never becomes the reference)
                        anchor[k, j] = m
                        anchor_var[k, j] = var[k, j]
                        dropped[k, j] = 0
                    if use_fleet:
                        run_mean[k, j] = v if r == 1 else run_mean[k, j] + (v - run_mean[k, j]) / r
                        if (
                            dropped[k, j] == 1
                            and r >= restart_after
                            and abs(run_mean[k, j] - anc) <= clip * math.sqrt(max(anchor_var[k, j], min_var))
                        ):
                            # back for long at the level a restart dropped: the restart adopted an
                            # anomaly after all; undo it (that baseline was trusted: mature again).
                            # Until then the dropped level is not used to score: a new anomaly may
                            # sit near an old one.
                            mean[k, j] = anc
                            var[k, j] = anchor_var[k, j]
                            count[k, j] = max(c, maturity)
                            anchor[k, j] = math.nan
                            dropped[k, j] = 0
                            run[k, j] = 0
                            continue
                    if ready:
                        # the fleet decides which level is normal, judging the run's mean level (not
                        # one noisy value): the log-likelihood ratio of the two levels under a normal
                        # fleet must beat prior odds that grow with the baseline's age (a baseline
                        # learned during an episode is ever less likely)
                        zo = (m - fm) / fsd
                        zn = (run_mean[k, j] - fm) / fsd
                        evidence = 0.5 * (zo * zo - zn * zn)
                        restart = r >= restart_after and evidence > fleet_margin + c / maturity
                        keep = not restart
                        fleet_restart = fleet_restart or restart
                    else:
                        restart = restart_after > 0 and r >= restart_after and c < maturity
                        keep = c >= maturity or restart_after == 0
                    if r == sustain and keep and math.isnan(anchor[k, j]):
                        # a sustained shift of a trusted baseline: remember the level it leaves (single
                        # outliers never move it; the mean has moved only sustain bounded steps since)
                        anchor[k, j] = m
                        anchor_var[k, j] = var[k, j]
                        dropped[k, j] = 0
                    if restart:
                        # a baseline contradicted for long by a level that is more likely normal: start
                        # over at the new level. Without the fleet, forget the old one (it was learned
                        # during an anomaly); with it, keep the old level as a dropped anchor for a
                        # maturity, so that if the sensor goes back to it (the restart adopted an
                        # anomaly after all) the old baseline is restored at once
                        if ready:
                            anchor[k, j] = m
                            anchor_var[k, j] = var[k, j]
                            dropped[k, j] = 1
                        else:
                            anchor[k, j] = math.nan
                            dropped[k, j] = 0
                        mean[k, j] = v
                        var[k, j] = 0.0
                        count[k, j] = 1
                        run[k, j] = 0
                        continue
                    run[k, j] = r
                    # winsorised: bounded step for the mean, variance untouched; with the fleet judging
                    # restarts, a young baseline need not give in fast either (at 1/count a shift early
                    # in a sensor's life would be absorbed in a few dozen readings and inflate the
                    # variance), so the step is the slow rate alpha
                    step = alpha if use_fleet else a
                    mean[k, j] = m + step * math.copysign(clip * sd, dev)
                else:
                    run[k, j] = (prev if prev < 0 else 0) - 1 if prev > -settle else -settle
                    mean[k, j] = m + a * dev
                    var[k, j] = (1.0 - a) * (var[k, j] + a * dev * dev)
        if fleet_restart:
            # one field's baseline was learned during an anomaly: so were the other fields' that
            # are contradicted for as long (a multi-field episode ended), even where the fleet alone
            # is not conclusive
            for j in range(f):
                if run[k, j] >= restart_after and not math.isnan(x[i, j]):
                    anchor[k, j] = mean[k, j]
                    anchor_var[k, j] = var[k, j]
                    dropped[k, j] = 1
                    mean[k, j] = x[i, j]
                    var[k, j] = 0.0
                    count[k, j] = 1
                    run[k, j] = 0
        out[i] = best


@lazy_njit(cache=True, nogil=True)
def _fleet_update(fleet: np.ndarray, j: int, v: float, fleet_alpha: float, clip: float) -> None:
    """Winsorised EWMA of every key's values of field ``j`` (bias-corrected like the per-key state)."""
    c = fleet[j, 2] + 1.0
    fleet[j, 2] = c
    a = 1.0 / c
    if a < fleet_alpha:
        a = fleet_alpha
    dev = v - fleet[j, 0]
    fsd = math.sqrt(fleet[j, 1])
    if clip > 0.0 and c > 1.0 / fleet_alpha and abs(dev) > clip * fsd:
        fleet[j, 0] += a * math.copysign(clip * fsd, dev)
    else:
        fleet[j, 0] += a * dev
        fleet[j, 1] = (1.0 - a) * (fleet[j, 1] + a * dev * dev)

"""``NoData``: a deadman that fires for keys gone silent, from time alone."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import polars as pl

from tidegauge._time import Clock, Duration, SystemClock, parse_duration
from tidegauge.dataflow.base import KEY_ID, TS
from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot

__all__ = ["NoData", "NoDataSnapshot"]

logger = logging.getLogger(__name__)

_NEVER = np.iinfo(np.int64).min


class NoDataSnapshot(DetectorSnapshot, frozen=True, tag="detector/no_data/1"):
    """State of :class:`NoData`: when each key was last seen and whether its silence was reported."""


class NoData(Detector):
    """Report every key that has been silent for ``timeout`` (a deadman switch).

    Records themselves always score 0: they prove the key is alive. The alarm comes from
    :meth:`DetectorLogic.on_tick` (called by :class:`~tidegauge.detectors.DetectStep` after every batch
    and on every timer tick, even when nothing arrives), which returns one row per key whose silence
    just reached ``timeout``: ``_tg_key``, ``_tg_ts`` (the time of the check), ``score`` 1.0,
    ``is_anomaly`` True, ``detector`` and ``silent_us``. A key is reported once per silence; its next
    record re-arms it. Only keys seen at least once can go silent.

    Parameters
    ----------
    timeout:
        Silence that counts as "no data" (``"30s"``, ``timedelta``, seconds).
    clock:
        ``"processing"``: silence measured on the processing-time clock (``ctx.now_us`` in a flow, or
        ``time_source`` standalone); ``"event"``: measured as watermark minus the key's last event time.
    time_source:
        Clock used standalone, when no flow sets the processing time (default: the system clock).

    Examples
    --------
    >>> import polars as pl
    >>> from tidegauge._time import ManualClock
    >>> clock = ManualClock(0)
    >>> logic = NoData(timeout="30s", key="sensor", time_source=clock).build()
    >>> _ = logic.score_learn(pl.DataFrame({"sensor": ["a", "b"]}))
    >>> clock.advance("10s"); _ = logic.score_learn(pl.DataFrame({"sensor": ["b"]}))
    >>> clock.advance("25s"); logic.on_tick(clock.now_us(), 0)["sensor"].to_list()
    ['a']
    """

    kind = "no_data"
    snapshot_type = NoDataSnapshot

    def __init__(
        self,
        fields: object = None,
        *,
        timeout: Duration = "60s",
        clock: Literal["processing", "event"] = "processing",
        time_source: Clock | None = None,
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=0.5, warmup=0, key=key, time=time)
        self.timeout_us = parse_duration(timeout, name="timeout")
        if self.timeout_us <= 0:
            raise ValueError(f"timeout={timeout!r}: give a positive duration, e.g. '30s'")
        if clock not in ("processing", "event"):
            raise ValueError(f"clock={clock!r}: give 'processing' or 'event'")
        self.clock = clock
        self.time_source: Clock = time_source if time_source is not None else SystemClock()

    def _new_logic(self) -> DetectorLogic:
        return _NoDataLogic(self)


class _NoDataLogic(DetectorLogic):
    definition: NoData

    def __init__(self, definition: NoData) -> None:
        super().__init__(definition)
        self._declare("last_seen", (), np.int64, _NEVER)
        self._declare("reported", (), np.bool_, False)

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        if not learn:
            return
        d = self.definition
        seen = self._arrays["last_seen"]
        if d.clock == "processing":
            now = self.now_us if self.now_us is not None else d.time_source.now_us()
            seen[batch.keys] = now
        else:
            np.maximum.at(seen, batch.keys, batch.ts)
        self._arrays["reported"][batch.keys] = False

    def on_tick(self, now_us: int, watermark: int) -> pl.DataFrame | None:
        d = self.definition
        n = self._n_keys
        if not n:
            return None
        seen = self._arrays["last_seen"][:n]
        reported = self._arrays["reported"][:n]
        ref = now_us if d.clock == "processing" else watermark
        silent = (seen != _NEVER) & ~reported & (ref - seen >= d.timeout_us)
        ids = np.flatnonzero(silent)
        if not ids.size:
            return None
        reported[ids] = True
        logger.info("%s: %d key(s) silent for %d µs or more", d.name, ids.size, d.timeout_us)
        out = pl.DataFrame(
            {
                KEY_ID: pl.Series(ids, dtype=pl.UInt32),
                TS: pl.Series(np.full(ids.size, ref, dtype=np.int64), dtype=pl.Int64),
                "score": pl.Series(np.ones(ids.size), dtype=pl.Float64),
                "is_anomaly": pl.Series(np.ones(ids.size, dtype=bool), dtype=pl.Boolean),
                "detector": pl.Series([d.name] * ids.size, dtype=pl.String),
                "silent_us": pl.Series(ref - seen[ids], dtype=pl.Int64),
            }
        )
        if self._keys is not None and d.key is not None:
            out = out.with_columns(self._keys.decode(out[KEY_ID]).alias(d.key))
        return out

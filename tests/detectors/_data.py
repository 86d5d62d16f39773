"""Shared synthetic streams for the detector tests."""

from __future__ import annotations

import numpy as np
import polars as pl

FIELDS = ["temperature", "vibration", "power_consumption"]


def keyed_stream(n: int = 600, n_keys: int = 5, seed: int = 0, *, bad: bool = False) -> pl.DataFrame:
    """Interleaved readings of ``n_keys`` sensors with a few outliers (and bad values if ``bad``)."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, n_keys, n).astype(np.uint32)
    ts = np.cumsum(rng.integers(1, 2_000_000, n)).astype(np.int64)
    temp = 20.0 + keys + rng.normal(0, 2, n)
    vib = 0.5 + rng.normal(0, 0.1, n)
    power = 100.0 + rng.normal(0, 5, n)
    out = rng.random(n) < 0.02
    temp[out] += 15.0
    vib[rng.random(n) < 0.02] += 3.0
    # a stuck stretch for one key, so Flatline fires
    stuck = np.flatnonzero(keys == 1)[100:130]
    power[stuck] = 99.0
    df = pl.DataFrame(
        {
            "_tg_key": pl.Series(keys, dtype=pl.UInt32),
            "_tg_ts": pl.Series(ts, dtype=pl.Int64),
            "sensor_type": pl.Series(np.where(keys % 2 == 0, "a", "b")),
            "temperature": temp,
            "vibration": vib,
            "power_consumption": power,
        }
    )
    if bad:
        df = with_bad_rows(df, seed=seed)
    return df


def with_bad_rows(df: pl.DataFrame, *, seed: int = 0, every: int = 7) -> pl.DataFrame:
    """``df`` with a row of only bad values (NaN, inf, null) inserted after every ``every``-th row."""
    rng = np.random.default_rng(seed + 1)
    bad_idx = np.arange(0, df.height, every)
    bad = df[bad_idx]
    choices = [float("nan"), float("inf"), float("-inf"), None]
    bad = bad.with_columns(
        [pl.Series(f, [choices[int(c)] for c in rng.integers(0, 4, bad.height)], dtype=pl.Float64) for f in FIELDS]
    ).with_columns(pl.lit(True).alias("_bad"))
    good = df.with_columns(pl.lit(False).alias("_bad"))
    order = np.r_[np.arange(df.height), bad_idx + 0.5]
    both = pl.concat([good, bad]).with_columns(pl.Series("_ord", order)).sort("_ord").drop("_ord")
    return both

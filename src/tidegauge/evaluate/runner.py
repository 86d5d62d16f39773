"""Runners: feed labelled files through a detector as streams, then call the pure scorers.

Every file is one stream (one key), fed to a freshly built detector logic in time order through the
batch API, which the detector contract makes equivalent to feeding one row at a time: the detector
cannot look ahead. ``scores_out`` writes each file's per-row output as CSV at the same relative path so
any other scorer can check the figures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl

from tidegauge._time import parse_duration, timestamp_column_to_micros
from tidegauge.evaluate.nab import (
    NAB_PROFILES,
    CostProfile,
    NabFile,
    NabProfileResult,
    score_corpus,
    windows_to_rows,
)
from tidegauge.evaluate.skab import (
    BinaryMetrics,
    ChangepointFile,
    SkabNabResult,
    binary_metrics,
    chance_scores,
    predicted_changepoints,
    skab_nab,
)

__all__ = [
    "DetectorFactory",
    "DetectorLogic",
    "DetectorSpec",
    "NabReport",
    "SkabReport",
    "load_nab_profiles",
    "load_nab_windows",
    "run_nab",
    "run_skab",
    "skab_files",
]

logger = logging.getLogger(__name__)

KEY = "sensor_id"
SKAB_LABELS = ("anomaly", "changepoint")


class DetectorLogic(Protocol):
    """The running half of a detector: scores a batch of rows in order and learns from it."""

    def score_learn(self, batch: pl.DataFrame, /) -> pl.DataFrame: ...


@runtime_checkable
class DetectorSpec(Protocol):
    """An immutable detector definition (``build(resume_state) -> logic``)."""

    def build(self, resume_state: Any, /) -> DetectorLogic: ...


DetectorFactory = Callable[[Sequence[str]], DetectorSpec]
"""Builds a detector definition for a file's value columns (``fields``), e.g. ``build_detector`` by name."""


def _for_fields(detector: DetectorSpec | DetectorFactory, fields: Sequence[str]) -> DetectorSpec:
    """``detector`` itself, or the definition a factory builds for ``fields``."""
    if isinstance(detector, DetectorSpec):
        return detector
    return detector(list(fields))


@dataclass(frozen=True, slots=True)
class SkabReport:
    """SKAB results: pooled outlier metrics and SKAB-NAB changepoint scores."""

    files: int
    rows_scored: int
    score_from: int
    outlier: BinaryMetrics
    changepoint: SkabNabResult
    changepoint_chance: dict[str, float]
    """NAB scores of as many alarms per file placed blind to the data (:func:`chance_scores`)."""


@dataclass(frozen=True, slots=True)
class NabReport:
    """NAB results per profile."""

    files: int
    rows: int
    profiles: dict[str, NabProfileResult]


def _stream(detector: DetectorSpec, frame: pl.DataFrame) -> pl.DataFrame:
    out = detector.build(None).score_learn(frame)
    if out.height != frame.height or "score" not in out.columns or "is_anomaly" not in out.columns:
        raise ValueError("the detector must return one row per input row with `score` and `is_anomaly` columns")
    return out


def skab_files(data_dir: Path) -> list[Path]:
    """The labelled SKAB files under ``data_dir``: every ``*.csv`` except the anomaly-free one."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"SKAB data directory {data_dir} does not exist; pass --data DIR")
    files = sorted(p for p in data_dir.rglob("*.csv") if "anomaly-free" not in p.parts and "anomaly-free" not in p.name)
    if not files:
        raise FileNotFoundError(f"no SKAB csv files under {data_dir}")
    return files


def _read_skab(path: Path) -> pl.DataFrame:
    df = pl.read_csv(path, separator=";")
    missing = [c for c in ("datetime", *SKAB_LABELS) if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a SKAB file, columns {missing} are missing")
    ts = df["datetime"].str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us", time_zone="UTC")
    return df.with_columns(ts.alias("datetime")).sort("datetime", maintain_order=True)


def run_skab(
    data_dir: Path,
    detector: DetectorSpec | DetectorFactory,
    *,
    score_from: int = 400,
    window: str = "60s",
    scores_out: Path | None = None,
    changepoint_detector: DetectorSpec | DetectorFactory | None = None,
) -> SkabReport:
    """Run the SKAB protocol: each labelled file streamed through ``detector``, rows ``score_from:`` scored.

    ``score_from=400`` scores the test part only (the first 400 rows are each file's training set, as in
    SKAB's proposed leaderboard); ``score_from=0`` scores whole files (the v0.9 leaderboard).
    ``detector`` is a definition, or a :data:`DetectorFactory` called with each file's feature columns.

    Changepoints: with no ``changepoint_detector``, the predicted changepoints are the rows where
    ``detector``'s prediction changes (SKAB's rule for outlier detectors). With one, it streams every
    file too and its own output gives them: the flagged rows of a detector that marks changepoints
    (``emits_changepoints``, e.g. :class:`~tidegauge.detectors.Cusum`), else the rows where its
    prediction changes. The outlier metrics always come from ``detector``.
    """
    if score_from < 0:
        raise ValueError(f"score_from must be >= 0, got {score_from!r}")
    window_us = parse_duration(window, name="window")
    true_out, pred_out, cps = [], [], []
    rows = 0
    files = skab_files(data_dir)
    for path in files:
        df = _read_skab(path)
        features = [c for c in df.columns if c not in ("datetime", *SKAB_LABELS)]
        rel = path.relative_to(data_dir).as_posix()
        stream = df.select(
            pl.lit(rel).alias(KEY),
            pl.col("datetime").alias("timestamp"),
            *[pl.col(c).cast(pl.Float64) for c in features],
        )
        out = _stream(_for_fields(detector, features), stream)
        pred = out["is_anomaly"].fill_null(False).cast(pl.Int8).to_numpy()[score_from:]
        truth = df["anomaly"].cast(pl.Int8).to_numpy()[score_from:]
        true_out.append(truth)
        pred_out.append(pred)
        ts = timestamp_column_to_micros(df["datetime"]).to_numpy()[score_from:]
        if changepoint_detector is None:
            pred_cp = predicted_changepoints(pred)
        else:
            cp_spec = _for_fields(changepoint_detector, features)
            cp_flags = _stream(cp_spec, stream)["is_anomaly"].fill_null(False).cast(pl.Int8).to_numpy()
            if getattr(cp_spec, "emits_changepoints", False):
                pred_cp = cp_flags[score_from:]
            else:
                pred_cp = predicted_changepoints(cp_flags[score_from:])
        cps.append(ChangepointFile(ts, df["changepoint"].cast(pl.Int8).to_numpy()[score_from:], pred_cp))
        rows += truth.size
        if scores_out is not None:
            target = scores_out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            full_cp = np.zeros(df.height, dtype=np.int8)
            full_cp[score_from:] = pred_cp
            stream.select("timestamp", *features).with_columns(
                out["score"].alias("anomaly_score"),
                out["is_anomaly"].cast(pl.Int8).alias("prediction"),
                pl.Series("changepoint", full_cp, dtype=pl.Int8),
            ).write_csv(target)
    logger.info("SKAB: %d files, %d rows scored", len(files), rows)
    return SkabReport(
        files=len(files),
        rows_scored=rows,
        score_from=score_from,
        outlier=binary_metrics(true_out, pred_out),
        changepoint=skab_nab(cps, window_us=window_us),
        changepoint_chance=chance_scores(cps, window_us=window_us),
    )


def load_nab_windows(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Read a NAB ``combined_windows.json``: relative path -> list of ``[start, end]`` timestamps (µs)."""
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object mapping file paths to lists of [start, end] windows")
    out: dict[str, list[tuple[int, int]]] = {}
    for rel, wins in raw.items():
        if not isinstance(wins, list) or not all(isinstance(w, list) and len(w) == 2 for w in wins):
            raise ValueError(f"{path}: {rel!r} must map to a list of [start, end] pairs")
        bounds = pl.Series([str(x) for w in wins for x in w], dtype=pl.String)
        us = timestamp_column_to_micros(bounds).to_list() if len(bounds) else []
        if any(v is None for v in us):
            raise ValueError(f"{path}: {rel!r} has a window bound that is not a timestamp")
        out[rel.replace("\\", "/")] = [(int(us[i]), int(us[i + 1])) for i in range(0, len(us), 2)]
    return out


def load_nab_profiles(path: Path) -> tuple[CostProfile, ...]:
    """Read a NAB ``profiles.json`` (``{name: {"CostMatrix": {"tpWeight", "fpWeight", "fnWeight"}}}``)."""
    raw = json.loads(path.read_text())
    try:
        return tuple(
            CostProfile(
                name,
                float(p["CostMatrix"]["tpWeight"]),
                float(p["CostMatrix"]["fpWeight"]),
                float(p["CostMatrix"]["fnWeight"]),
            )
            for name, p in raw.items()
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: each profile needs CostMatrix.tpWeight/fpWeight/fnWeight ({exc})") from exc


def run_nab(
    data_dir: Path,
    windows: dict[str, list[tuple[int, int]]],
    detector: DetectorSpec | DetectorFactory,
    *,
    profiles: Sequence[CostProfile] = NAB_PROFILES,
    probation_fraction: float = 0.15,
    scores_out: Path | None = None,
) -> NabReport:
    """Stream every labelled ``timestamp,value`` file through ``detector`` and score it the NAB v1.1 way.

    ``detector`` is a definition, or a :data:`DetectorFactory` (called with ``["value"]``).
    """
    spec = _for_fields(detector, ["value"])
    files: list[NabFile] = []
    rows = 0
    for rel in sorted(windows):
        path = data_dir / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} is labelled in the windows file but does not exist")
        df = pl.read_csv(path)
        if not {"timestamp", "value"} <= set(df.columns):
            raise ValueError(f"{path}: expected columns timestamp,value, got {df.columns}")
        ts = timestamp_column_to_micros(df["timestamp"].cast(pl.String))
        stream = pl.DataFrame(
            {
                KEY: [rel] * df.height,
                "timestamp": ts.cast(pl.Datetime("us", "UTC")),
                "value": df["value"].cast(pl.Float64),
            }
        )
        out = _stream(spec, stream)
        scores = out["score"].fill_null(0.0).cast(pl.Float64).to_numpy()
        files.append(NabFile(rel, scores, windows_to_rows(ts.to_numpy(), windows[rel])))
        rows += df.height
        if scores_out is not None:
            target = scores_out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            df.select("timestamp", "value").with_columns(pl.Series("anomaly_score", scores)).write_csv(target)
    unlabelled = {p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*.csv")} - set(windows)
    if unlabelled:
        logger.warning("%d csv files have no labels and are not scored", len(unlabelled))
    result = score_corpus(files, profiles, probation_fraction=probation_fraction)
    return NabReport(files=len(files), rows=rows, profiles=result)

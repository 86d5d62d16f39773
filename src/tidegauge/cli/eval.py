"""``tidegauge eval``: score a detector on labelled data (SKAB, NAB, simulator ground truth)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from tidegauge.cli import app
from tidegauge.errors import ConfigError
from tidegauge.evaluate import (
    NAB_PROFILES,
    MahalanobisBaselineDetector,
    load_nab_profiles,
    load_nab_windows,
    run_nab,
    run_skab,
    score_simulation,
)
from tidegauge.evaluate.baseline import SKAB_BASELINE
from tidegauge.evaluate.runner import DetectorSpec

logger = logging.getLogger(__name__)

eval_app = typer.Typer(help="Score a detector configuration on labelled data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
console = Console()

_BASELINE = "mahalanobis_baseline"

DetectorOpt = Annotated[
    str | None,
    typer.Option("--detector", envvar="TIDEGAUGE_EVAL_DETECTOR", show_envvar=True, help="Detector name."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", envvar="TIDEGAUGE_EVAL_CONFIG", show_envvar=True, help="Detector config file (YAML/JSON)."
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", envvar="TIDEGAUGE_EVAL_JSON", show_envvar=True, help="Print JSON instead of a table."
    ),
]
ScoresOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--scores-out",
        envvar="TIDEGAUGE_EVAL_SCORES_OUT",
        show_envvar=True,
        help="Write each file's per-row output as CSV under this directory.",
    ),
]


def _detector(
    name: str | None, config: Path | None, *, train_rows: int = 400, baseline: DetectorSpec | None = None
) -> DetectorSpec:
    """Resolve --detector/--config; the default is the demo's default detector, else the baseline."""
    if name is not None and config is not None:
        raise ConfigError("give --detector or --config, not both")
    fallback = baseline or MahalanobisBaselineDetector(train_rows=train_rows)
    if name == _BASELINE:
        return fallback
    try:
        from tidegauge import detectors
    except ImportError:  # pragma: no cover - the package always exists
        detectors = None  # type: ignore[assignment]
    if config is not None:
        import yaml

        spec = yaml.safe_load(config.read_text())
        build = getattr(detectors, "build_detector", None)
        if build is None:
            raise ConfigError(
                f"{config}: detector configs need tidegauge.detectors.build_detector, not available"
            )
        return build(spec)  # type: ignore[no-any-return]
    if name is not None:
        build = getattr(detectors, "build_detector", None)
        if build is None:
            raise ConfigError(f"--detector {name!r}: unknown; available here: {_BASELINE}")
        return build(name)  # type: ignore[no-any-return]
    default = getattr(detectors, "default_detector", None)
    if default is not None:
        return default()  # type: ignore[no-any-return]
    logger.warning("tidegauge.detectors.default_detector is not available; evaluating %s", _BASELINE)
    return fallback


def _emit(payload: dict[str, Any], table: Table, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        console.print(table)


def _default_skab_dir() -> Path:
    return Path("..") / "shared" / "datasets" / "skab" / "data"


@eval_app.command("skab")
def skab_cmd(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            envvar="TIDEGAUGE_EVAL_SKAB_DATA",
            show_envvar=True,
            help="SKAB data directory [default: ../shared/datasets/skab/data].",
        ),
    ] = None,
    score_from: Annotated[
        int,
        typer.Option(
            "--score-from",
            envvar="TIDEGAUGE_EVAL_SCORE_FROM",
            show_envvar=True,
            help="First scored row of each file (400 = test part; 0 = whole file).",
        ),
    ] = 400,
    window: Annotated[
        str,
        typer.Option(
            "--window",
            envvar="TIDEGAUGE_EVAL_CP_WINDOW",
            show_envvar=True,
            help="Changepoint scoring window, right of each changepoint.",
        ),
    ] = "60s",
    detector: DetectorOpt = None,
    config: ConfigOpt = None,
    scores_out: ScoresOutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """SKAB: outlier F1/FAR/MAR pooled over the labelled files and changepoint NAB scores."""
    det = _detector(detector, config, baseline=SKAB_BASELINE)
    r = run_skab(
        data or _default_skab_dir(), det, score_from=score_from, window=window, scores_out=scores_out
    )
    o, c = r.outlier, r.changepoint
    payload = {
        "benchmark": "skab",
        "detector": getattr(det, "name", type(det).__name__),
        "files": r.files,
        "rows_scored": r.rows_scored,
        "score_from": r.score_from,
        "outlier": {
            "f1": o.f1,
            "far_pct": o.far,
            "mar_pct": o.mar,
            "tp": o.tp,
            "tn": o.tn,
            "fp": o.fp,
            "fn": o.fn,
        },
        "changepoint": {
            "nab": c.scores,
            "missed": c.missed,
            "false_positives": c.false_positives,
            "changepoints": c.n_changepoints,
        },
    }
    t = Table(title=f"SKAB ({r.files} files, rows {score_from}: scored, {payload['detector']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for label, text in (("F1", f"{o.f1:.3f}"), ("FAR %", f"{o.far:.2f}"), ("MAR %", f"{o.mar:.2f}")):
        t.add_row(label, text)
    for name, value in c.scores.items():
        t.add_row(f"NAB ({name})", f"{value:.2f}")
    t.add_row("missed CPs", str(c.missed))
    t.add_row("FP CPs", str(c.false_positives))
    _emit(payload, t, as_json)


@eval_app.command("nab")
def nab_cmd(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            envvar="TIDEGAUGE_EVAL_NAB_DATA",
            show_envvar=True,
            help="Directory of timestamp,value CSVs in category folders.",
        ),
    ],
    labels: Annotated[
        Path,
        typer.Option(
            "--labels",
            envvar="TIDEGAUGE_EVAL_NAB_LABELS",
            show_envvar=True,
            help="JSON mapping each relative path to its anomaly windows.",
        ),
    ],
    profiles: Annotated[
        Path | None,
        typer.Option(
            "--profiles", envvar="TIDEGAUGE_EVAL_NAB_PROFILES", show_envvar=True, help="NAB profiles.json."
        ),
    ] = None,
    detector: DetectorOpt = None,
    config: ConfigOpt = None,
    scores_out: ScoresOutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """NAB v1.1 scoring: probation, sigmoid rewards, one optimised threshold per profile, 0..100."""
    det = _detector(detector, config)
    profs = load_nab_profiles(profiles) if profiles else NAB_PROFILES
    r = run_nab(data, load_nab_windows(labels), det, profiles=profs, scores_out=scores_out)
    payload = {
        "benchmark": "nab",
        "files": r.files,
        "rows": r.rows,
        "profiles": {
            n: {
                "score": p.score,
                "threshold": p.threshold,
                "raw": p.raw,
                "null": p.null,
                "perfect": p.perfect,
                "windows_detected": p.windows_detected,
                "windows_missed": p.windows_missed,
                "false_positives": p.false_positives,
            }
            for n, p in r.profiles.items()
        },
    }
    t = Table(title=f"NAB ({r.files} files, {r.rows} rows)")
    for col in ("profile", "score", "threshold", "detected", "missed", "FP rows"):
        t.add_column(col, justify="right" if col != "profile" else "left")
    for n, p in r.profiles.items():
        t.add_row(
            n,
            f"{p.score:.2f}",
            f"{p.threshold:.4g}",
            str(p.windows_detected),
            str(p.windows_missed),
            str(p.false_positives),
        )
    _emit(payload, t, as_json)


@eval_app.command("sim")
def sim_cmd(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            envvar="TIDEGAUGE_EVAL_SIM_DATA",
            show_envvar=True,
            help="Simulator output (CSV or Parquet) with truth_anomaly, truth_type.",
        ),
    ],
    detector: DetectorOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Simulator ground truth: precision, recall, F1 per anomaly type, and detection delay."""
    det = _detector(detector, config, train_rows=100)
    frame = pl.read_parquet(data) if data.suffix == ".parquet" else pl.read_csv(data, try_parse_dates=True)
    key = "sensor_id"
    parts = [
        det.build(None).score_learn(g) for _, g in frame.sort("timestamp").group_by(key, maintain_order=True)
    ]
    res = score_simulation(pl.concat(parts, how="diagonal_relaxed"))
    payload = {
        "benchmark": "sim",
        "types": {
            k: {
                "events": v.events,
                "detected": v.detected,
                "precision": v.precision,
                "recall": v.recall,
                "f1": v.f1,
                "mean_delay": v.mean_delay,
            }
            for k, v in res.items()
        },
    }
    t = Table(title="Simulator ground truth")
    for col in ("type", "events", "precision", "recall", "F1", "mean delay"):
        t.add_column(col)
    for k, v in res.items():
        delay = "-" if v.mean_delay is None else f"{v.mean_delay:.3g}"
        t.add_row(k, str(v.events), f"{v.precision:.3f}", f"{v.recall:.3f}", f"{v.f1:.3f}", delay)
    _emit(payload, t, as_json)

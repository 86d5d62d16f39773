"""``tidegauge eval``: score a detector on labelled data (SKAB, NAB, simulator ground truth)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

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
)
from tidegauge.evaluate.baseline import SKAB_BASELINE, skab_changepoint_detector
from tidegauge.evaluate.runner import DetectorFactory, DetectorSpec
from tidegauge.evaluate.sim_runner import generate_simulation, run_simulation
from tidegauge.simulate import FleetConfig

logger = logging.getLogger(__name__)

eval_app = typer.Typer(help="Score a detector configuration on labelled data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
console = Console()

_BASELINE = "mahalanobis_baseline"
_SKAB_CP = "skab_cusum"

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
    typer.Option("--json", envvar="TIDEGAUGE_EVAL_JSON", show_envvar=True, help="Print JSON instead of a table."),
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


def _factory(
    name: str | None, config: Path | None, *, baseline: DetectorSpec, default: Literal["default", "baseline"]
) -> tuple[str, DetectorFactory]:
    """Resolve --detector/--config to a label and a factory building the detector for given value fields.

    A registry name (``zscore``, ``hst``, ...) or a config file is built with each input's value columns
    as ``fields``; ``mahalanobis_baseline`` is the evaluation baseline; with neither, ``default`` picks
    the demo's default detector or the baseline.
    """
    if name is not None and config is not None:
        raise ConfigError("give --detector or --config, not both")
    from tidegauge.detectors import build_detector, default_detector

    if name == _BASELINE or (name is None and config is None and default == "baseline"):
        return _BASELINE, lambda fields: baseline
    if config is not None:
        import yaml

        spec = yaml.safe_load(config.read_text())
        build_detector(spec, fields=["value"])  # fail on a bad config before reading any data
        return config.name, lambda fields: build_detector(spec, fields=fields)
    if name is not None:
        build_detector(name, fields=["value"])  # unknown names fail here, listing the valid ones
        return name, lambda fields: build_detector(name, fields=fields)
    return "default", lambda fields: default_detector(fields=fields)


def _changepoint_factory(name: str, outlier_label: str) -> tuple[str, DetectorFactory | None]:
    """``--changepoint-detector``: ``same`` (None: the outlier prediction's changes), the SKAB CUSUM, a name."""
    if name == "same":
        return outlier_label, None
    if name == _SKAB_CP:
        return _SKAB_CP, lambda fields: skab_changepoint_detector(fields)
    from tidegauge.detectors import build_detector

    build_detector(name, fields=["value"])  # unknown names fail here, listing the valid ones
    return name, lambda fields: build_detector(name, fields=fields)


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
    changepoint_detector: Annotated[
        str,
        typer.Option(
            "--changepoint-detector",
            envvar="TIDEGAUGE_EVAL_CP_DETECTOR",
            show_envvar=True,
            help="Detector whose alarms are the predicted changepoints: a registry name (e.g. cusum), "
            "'skab_cusum' (tuned for SKAB), or 'same' (where the outlier prediction changes, SKAB's rule).",
        ),
    ] = _SKAB_CP,
    scores_out: ScoresOutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """SKAB: outlier F1/FAR/MAR pooled over the labelled files and changepoint NAB scores."""
    label, factory = _factory(detector, config, baseline=SKAB_BASELINE, default="baseline")
    cp_label, cp_factory = _changepoint_factory(changepoint_detector, label)
    r = run_skab(
        data or _default_skab_dir(),
        factory,
        score_from=score_from,
        window=window,
        scores_out=scores_out,
        changepoint_detector=cp_factory,
    )
    o, c = r.outlier, r.changepoint
    payload = {
        "benchmark": "skab",
        "detector": label,
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
            "detector": cp_label,
            "nab": c.scores,
            "nab_chance": r.changepoint_chance,
            "missed": c.missed,
            "false_positives": c.false_positives,
            "changepoints": c.n_changepoints,
        },
    }
    t = Table(title=f"SKAB ({r.files} files, rows {score_from}: scored, {label}; changepoints: {cp_label})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for label, text in (("F1", f"{o.f1:.3f}"), ("FAR %", f"{o.far:.2f}"), ("MAR %", f"{o.mar:.2f}")):
        t.add_row(label, text)
    for name, value in c.scores.items():
        t.add_row(f"NAB ({name})", f"{value:.2f}")
    for name, value in r.changepoint_chance.items():
        t.add_row(f"NAB ({name}), as many blind alarms", f"{value:.2f}")
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
        typer.Option("--profiles", envvar="TIDEGAUGE_EVAL_NAB_PROFILES", show_envvar=True, help="NAB profiles.json."),
    ] = None,
    detector: DetectorOpt = None,
    config: ConfigOpt = None,
    scores_out: ScoresOutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """NAB v1.1 scoring: probation, sigmoid rewards, one optimised threshold per profile, 0..100."""
    label, factory = _factory(detector, config, baseline=MahalanobisBaselineDetector(train_rows=400), default="default")
    det = factory(["value"])
    profs = load_nab_profiles(profiles) if profiles else NAB_PROFILES
    r = run_nab(data, load_nab_windows(labels), det, profiles=profs, scores_out=scores_out)
    payload = {
        "benchmark": "nab",
        "detector": label,
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


SIM_FIELDS = ("temperature", "vibration", "power_consumption")
"""Value fields of the simulator that the detector scores (those its anomalies affect)."""


@eval_app.command("sim")
def sim_cmd(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            envvar="TIDEGAUGE_EVAL_SIM_DATA",
            show_envvar=True,
            help="Simulator output (CSV or Parquet) with truth_anomaly, truth_type [default: generate it].",
        ),
    ] = None,
    sensors: Annotated[
        int,
        typer.Option("--sensors", envvar="TIDEGAUGE_EVAL_SIM_SENSORS", show_envvar=True, help="Sensors to simulate."),
    ] = 200,
    rate: Annotated[
        float,
        typer.Option(
            "--rate", envvar="TIDEGAUGE_EVAL_SIM_RATE", show_envvar=True, help="Readings per second, fleet-wide."
        ),
    ] = 2000.0,
    duration: Annotated[
        str,
        typer.Option(
            "--duration", envvar="TIDEGAUGE_EVAL_SIM_DURATION", show_envvar=True, help="Simulated event time."
        ),
    ] = "10m",
    seed: Annotated[
        int, typer.Option("--seed", envvar="TIDEGAUGE_EVAL_SIM_SEED", show_envvar=True, help="Simulator seed.")
    ] = 0,
    probation: Annotated[
        int,
        typer.Option(
            "--probation",
            envvar="TIDEGAUGE_EVAL_SIM_PROBATION",
            show_envvar=True,
            help="Each sensor's first readings not scored (events in them censored, alarms not counted).",
        ),
    ] = 100,
    detector: DetectorOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Simulator ground truth: one detector over the whole stream, per-sensor state; metrics per anomaly type."""
    label, factory = _factory(detector, config, baseline=MahalanobisBaselineDetector(train_rows=100), default="default")
    det = factory(list(SIM_FIELDS))
    if data is not None:
        frame = pl.read_parquet(data) if data.suffix == ".parquet" else pl.read_csv(data, try_parse_dates=True)
        source = str(data)
    else:
        try:
            fleet = FleetConfig(sensors=sensors, rate=rate, seed=seed)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
        frame = generate_simulation(fleet, duration)
        source = f"simulator: {sensors} sensors, {rate:g} readings/s, {duration}, seed {seed}"
    r = run_simulation(frame, det, probation=probation)
    payload = {
        "benchmark": "sim",
        "detector": label,
        "source": source,
        "readings": r.readings,
        "sensors": r.sensors,
        "probation": r.probation,
        "types": {
            k: {
                "events": v.events,
                "detected": v.detected,
                "censored": v.censored,
                "precision": v.precision,
                "recall": v.recall,
                "f1": v.f1,
                "median_delay_readings": v.median_delay_rows,
                "mean_delay_s": v.mean_delay,
            }
            for k, v in r.types.items()
        },
    }
    t = Table(title=f"Simulator ground truth ({r.readings:,} readings, {r.sensors} sensors, {label})")
    for col in ("type", "events", "censored", "precision", "recall", "F1", "median delay (readings)"):
        t.add_column(col, justify="left" if col == "type" else "right")
    for k, v in r.types.items():
        delay = "-" if v.median_delay_rows is None else f"{v.median_delay_rows:g}"
        t.add_row(k, str(v.events), str(v.censored), f"{v.precision:.3f}", f"{v.recall:.3f}", f"{v.f1:.3f}", delay)
    _emit(payload, t, as_json)

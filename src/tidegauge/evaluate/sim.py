"""Scoring against the simulator's ground truth: precision, recall, F1 per anomaly type, detection delay.

The simulator labels every row with ``truth_anomaly`` (bool) and ``truth_type`` (the injected anomaly's
type, null on normal rows). Per type ``t``:

* an **event** is a maximal run of consecutive rows of one key labelled with type ``t``;
* **recall** is the fraction of events with at least one predicted row inside them;
* **precision** is ``TP_t / (TP_t + FP)`` over rows, where ``TP_t`` are predicted rows of type ``t`` and
  ``FP`` predicted normal rows (false alarms are not attributable to a type, so every type shares them);
* **F1** is the harmonic mean of the two;
* **delay** is the mean time from an event's first row to its first predicted row, over detected events,
  and ``median_delay_rows`` the median number of the key's readings between the two.

Censoring: an event already in progress at a key's first row has no observed onset and no normal
reference before it, so no online detector can see it begin; nor can one with a warm-up see an event that
starts while it is still learning. Such events (in progress at the first row, or starting within the first
``probation`` rows of their key) are *censored*: counted in ``censored`` and left out of ``events``,
recall and delay, and their rows count neither as hits nor as false alarms. Predictions on normal rows
within a key's first ``probation`` rows are not counted as false alarms either (the probationary period of
NAB). ``probation=0`` censors only events in progress at the first row.

>>> import polars as pl
>>> f = pl.DataFrame({"sensor_id": ["a"] * 4, "timestamp": [0, 1, 2, 3],
...     "truth_anomaly": [False, True, True, False], "truth_type": [None, "spike", "spike", None],
...     "is_anomaly": [False, False, True, False]})
>>> r = score_simulation(f)["spike"]
>>> r.recall, r.precision, r.mean_delay
(1.0, 1.0, 1.0)
>>> score_simulation(f, probation=2)["spike"].censored
1
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import polars as pl

__all__ = ["TypeMetrics", "score_simulation"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TypeMetrics:
    """Metrics for one anomaly type.

    ``mean_delay`` is in the time column's units (seconds for datetimes), ``median_delay_rows`` in readings
    of the key; both ``None`` if no event was detected. ``censored`` events are not in ``events``.
    """

    anomaly_type: str
    events: int
    detected: int
    precision: float
    recall: float
    f1: float
    mean_delay: float | None
    median_delay_rows: float | None = None
    censored: int = 0


def score_simulation(
    frame: pl.DataFrame,
    *,
    key: str = "sensor_id",
    time: str = "timestamp",
    prediction: str = "is_anomaly",
    truth: str = "truth_anomaly",
    truth_type: str = "truth_type",
    probation: int = 0,
) -> dict[str, TypeMetrics]:
    """Score predictions against simulator labels, per anomaly type (see the module docstring).

    ``probation`` is the number of each key's first rows in which events are censored and false alarms
    not counted (a detector's warm-up); 0 censors only events in progress at a key's first row.
    """
    if isinstance(probation, bool) or not isinstance(probation, int) or probation < 0:
        raise ValueError(f"probation={probation!r}: give a whole number of rows per key >= 0")
    missing = [c for c in (key, time, prediction, truth, truth_type) if c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} are missing; the frame has {frame.columns}")
    t_expr = pl.col(time)
    if isinstance(frame.schema[time], pl.Datetime):
        # Delays in seconds for datetime columns.
        t_expr = pl.col(time).dt.epoch("us").cast(pl.Float64) / 1e6
    df = (
        frame.with_row_index("_row")
        .sort([key, time, "_row"], maintain_order=True)
        .select(
            pl.col(key).alias("k"),
            t_expr.cast(pl.Float64).alias("t"),
            pl.col(prediction).fill_null(False).cast(pl.Boolean).alias("p"),
            pl.col(truth).fill_null(False).cast(pl.Boolean).alias("y"),
            pl.when(pl.col(truth)).then(pl.col(truth_type).cast(pl.String)).otherwise(None).alias("ty"),
        )
        .with_columns(pl.int_range(pl.len()).over("k").alias("i"))
    )
    # A new event starts where the key or the type changes from the previous row.
    df = df.with_columns(
        (
            (pl.col("ty") != pl.col("ty").shift(1))
            | (pl.col("k") != pl.col("k").shift(1))
            | pl.col("ty").shift(1).is_null()
        )
        .fill_null(True)
        .cum_sum()
        .alias("event")
    )
    false_alarms = df.filter(~pl.col("y") & pl.col("p") & (pl.col("i") >= probation)).height
    all_events = (
        df.filter(pl.col("ty").is_not_null())
        .group_by("event", maintain_order=True)
        .agg(
            pl.col("ty").first(),
            pl.col("t").first().alias("start"),
            pl.col("t").filter(pl.col("p")).first().alias("first_hit"),
            (pl.col("i").filter(pl.col("p")).first() - pl.col("i").first()).alias("delay_rows"),
            pl.col("p").sum().alias("hits"),
            ((pl.col("i").first() == 0) | (pl.col("i").first() < probation)).alias("censored"),
        )
    )
    events = all_events.filter(~pl.col("censored"))
    out: dict[str, TypeMetrics] = {}
    for ty in sorted(all_events["ty"].unique().to_list()):
        censored = all_events.filter((pl.col("ty") == ty) & pl.col("censored")).height
        ev = events.filter(pl.col("ty") == ty)
        if ev.height == 0:
            out[ty] = TypeMetrics(ty, 0, 0, 0.0, 0.0, 0.0, None, None, censored)
            continue
        detected = ev.filter(pl.col("hits") > 0)
        tp_rows = int(ev["hits"].sum())
        precision = tp_rows / (tp_rows + false_alarms) if tp_rows + false_alarms else 0.0
        recall = detected.height / ev.height
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        delays = (detected["first_hit"] - detected["start"]).to_list()
        mean_delay = float(sum(delays) / len(delays)) if delays else None
        median_rows = detected["delay_rows"].median() if detected.height else None
        out[ty] = TypeMetrics(
            ty,
            ev.height,
            detected.height,
            precision,
            recall,
            f1,
            mean_delay,
            None if median_rows is None else float(median_rows),  # type: ignore[arg-type]
            censored,
        )
    return out

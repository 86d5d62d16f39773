"""Dead-letter records: every record that fails is kept, with why and where.

Schema of the dead-letter stream::

    reason      String    why the record was rejected ("unparsable timestamp", "future: ...", ...)
    stage       String    the step or source that rejected it
    payload     String    the original record as JSON (or the raw line for unparsable input)
    rejected_at Datetime  processing time of the rejection (UTC)
"""

from __future__ import annotations

import polars as pl

from tidegauge.dataflow.base import INTERNAL_COLUMNS

__all__ = ["DEAD_LETTER_SCHEMA", "to_dead_letters"]

DEAD_LETTER_SCHEMA = pl.Schema(
    {
        "reason": pl.String(),
        "stage": pl.String(),
        "payload": pl.String(),
        "rejected_at": pl.Datetime("us", "UTC"),
    }
)


def to_dead_letters(
    rows: pl.DataFrame, reason: str | pl.Expr | pl.Series, *, stage: str, now_us: int
) -> pl.DataFrame:
    """Turn rejected ``rows`` into dead-letter records (one per row)."""
    user = rows.drop([c for c in INTERNAL_COLUMNS if c in rows.columns])
    if "payload" in user.columns and user.width == 1 and user.schema["payload"] == pl.String:
        payload = user["payload"]
    else:
        payload = pl.Series("payload", user.write_ndjson().splitlines() if user.height else [], dtype=pl.String)
    if isinstance(reason, str):
        reason_s = pl.Series("reason", [reason] * rows.height, dtype=pl.String)
    elif isinstance(reason, pl.Series):
        reason_s = reason.cast(pl.String).alias("reason")
    else:
        reason_s = rows.select(reason.cast(pl.String).alias("reason")).to_series()
    return pl.DataFrame(
        {
            "reason": reason_s,
            "stage": pl.Series("stage", [stage] * rows.height, dtype=pl.String),
            "payload": payload,
            "rejected_at": pl.Series("rejected_at", [now_us] * rows.height, dtype=pl.Int64).cast(
                pl.Datetime("us", "UTC")
            ),
        },
        schema=DEAD_LETTER_SCHEMA,
    )

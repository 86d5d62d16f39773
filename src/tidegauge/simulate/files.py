"""Write simulated readings to CSV, JSONL or Parquet, streaming in batches (bounded memory).

Malformed rows (see :class:`~tidegauge.simulate.FaultConfig`) stay as nulls / non-finite values in
Parquet and become unparsable text in CSV and JSONL:

=====================  ===============================  =======================================
frame / Parquet        CSV                              JSONL
=====================  ===============================  =======================================
null ``sensor_id``     empty ``sensor_id`` field        no ``sensor_id`` key
null ``timestamp``     ``not-a-timestamp``              ``"timestamp":"not-a-timestamp"``
NaN ``temperature``    ``n/a``                          ``"temperature":"n/a"``
+inf ``power_...``     ``1.2.3``                        ``"power_consumption":"1.2.3"``
=====================  ===============================  =======================================

Timestamps in text formats are ISO 8601 UTC with microseconds (``2024-01-01T00:00:00.000000Z``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

import msgspec
import polars as pl

from tidegauge._time import Clock, SystemClock
from tidegauge.simulate.config import FAULT_KINDS, FleetConfig
from tidegauge.simulate.fleet import FleetSimulator

__all__ = ["FileFormat", "WriteSummary", "format_of", "write_readings"]

logger = logging.getLogger(__name__)

FileFormat = Literal["csv", "jsonl", "parquet"]
_SUFFIXES: dict[str, FileFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"
_PACED_POLL_S = 0.05
"""Longest sleep between paced writes: keeps the file at most ~50 ms behind the schedule."""


class WriteSummary(msgspec.Struct, frozen=True):
    """What :func:`write_readings` wrote."""

    path: str
    format: str
    rows: int
    anomalous_rows: int
    faults: dict[str, int]
    seconds: float

    def line(self) -> str:
        """One-line human summary."""
        faults = sum(self.faults.values())
        detail = ", ".join(f"{k} {v:,}" for k, v in self.faults.items() if v)
        rate = self.rows / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"wrote {self.rows:,} rows ({self.anomalous_rows:,} anomalous, {faults:,} faults injected"
            f"{': ' + detail if detail else ''}) to {self.path} in {self.seconds:.2f}s ({rate:,.0f} rows/s)"
        )


def format_of(path: str | Path) -> FileFormat:
    """The file format named by ``path``'s extension.

    >>> format_of("readings.parquet")
    'parquet'
    """
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"cannot tell the format of {str(path)!r}; use a .csv, .jsonl or .parquet file name")
    return _SUFFIXES[suffix]


def _as_text(df: pl.DataFrame) -> pl.DataFrame:
    """The CSV/JSONL view of a frame: timestamps as text, malformed values as unparsable text."""
    return df.with_columns(
        pl.col("timestamp").dt.to_string(_TS_FORMAT).fill_null("not-a-timestamp"),
        pl.when(pl.col("temperature").is_nan())
        .then(pl.lit("n/a"))
        .otherwise(pl.col("temperature").cast(pl.String))
        .alias("temperature"),
        pl.when(pl.col("power_consumption").is_infinite())
        .then(pl.lit("1.2.3"))
        .otherwise(pl.col("power_consumption").cast(pl.String))
        .alias("power_consumption"),
    )


def _jsonl_lines(df: pl.DataFrame) -> pl.DataFrame:
    text = df.with_columns(pl.col("timestamp").dt.to_string(_TS_FORMAT).fill_null("not-a-timestamp"))
    line = pl.struct(pl.all()).struct.json_encode()
    # NaN and inf encode as JSON null, and only malformed rows hold nulls in these columns.
    line = (
        line.str.replace('"sensor_id":null,', "", literal=True)
        .str.replace('"temperature":null', '"temperature":"n/a"', literal=True)
        .str.replace('"power_consumption":null', '"power_consumption":"1.2.3"', literal=True)
    )
    return text.select(line.alias("line"))


class _Writer:
    def __init__(self, path: Path, fmt: FileFormat, malformed: bool) -> None:
        self._fmt = fmt
        self._malformed = malformed
        self._file: IO[bytes] | None = None
        self._parquet: Any = None
        self._path = path
        if fmt != "parquet":
            self._file = path.open("wb")

    def write(self, df: pl.DataFrame) -> None:
        if self._fmt == "parquet":
            table = df.to_arrow()
            if self._parquet is None:
                import pyarrow.parquet as pq

                self._parquet = pq.ParquetWriter(str(self._path), table.schema)
            self._parquet.write_table(table)
            return
        assert self._file is not None  # opened in __init__ for text formats
        if self._fmt == "csv":
            if self._malformed:
                text = _as_text(df)
            else:
                text = df.with_columns(pl.col("timestamp").dt.to_string(_TS_FORMAT))
            text.write_csv(self._file, include_header=self._file.tell() == 0)
        else:
            _jsonl_lines(df).write_csv(self._file, include_header=False, quote_style="never")
        self._file.flush()

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        elif self._fmt == "parquet":  # nothing written: still leave a valid, empty file
            from tidegauge.simulate.fleet import READING_SCHEMA

            READING_SCHEMA.to_frame().write_parquet(self._path)
        if self._file is not None:
            self._file.close()


def write_readings(
    path: str | Path,
    config: FleetConfig,
    *,
    rows: int,
    batch_rows: int = 262_144,
    paced: bool = False,
    clock: Clock | None = None,
    progress: Callable[[int], None] | None = None,
) -> WriteSummary:
    """Simulate ``rows`` rows of ``config`` into ``path`` (.csv, .jsonl or .parquet), batch by batch.

    Parameters
    ----------
    path:
        Output file; its extension picks the format. Truth columns are written too (for evaluation).
    config:
        The fleet to simulate.
    rows:
        Rows to write (duplicates included); ``config.readings_for("60s")`` converts a duration.
    batch_rows:
        Rows per write: memory stays bounded by a few batches whatever ``rows`` is.
    paced:
        Write each row when its scheduled time comes (``rate`` rows per second, anchored at the call)
        instead of as fast as possible.
    clock:
        Processing-time clock for pacing (the system clock by default).
    progress:
        Called with the number of rows written so far after every batch.

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "r.csv")
    >>> write_readings(out, FleetConfig(sensors=5, seed=1), rows=1000).rows
    1000
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"rows={rows!r} must be an int >= 0")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows={batch_rows!r} must be an int >= 1")
    out = Path(path)
    fmt = format_of(out)
    if not out.parent.exists():
        raise FileNotFoundError(
            f"directory {str(out.parent)!r} does not exist; create it or pick another path"
        )
    sim = FleetSimulator(config)
    clock = clock or SystemClock()
    offset = clock.now_us() - sim.next_due_us() if paced and rows else 0
    started = time.perf_counter()
    written = anomalous = 0
    faults = dict.fromkeys(FAULT_KINDS[1:], 0)
    writer = _Writer(out, fmt, malformed=config.faults.malformed > 0)
    try:
        while written < rows:
            n = min(batch_rows, rows - written)
            if paced:
                n = sim.rows_due(clock.now_us() - offset, n)
                if n == 0:
                    wait_s = (sim.next_due_us() + offset - clock.now_us()) / 1e6
                    time.sleep(min(max(wait_s, 0.0), _PACED_POLL_S))
                    continue
            df = sim.next_batch(n)
            writer.write(df)
            written += n
            anomalous += int(df["truth_anomaly"].sum())
            if config.faults.any:
                for kind, count in df["truth_fault"].value_counts().iter_rows():
                    if kind != "none":
                        faults[kind] += count
            if progress is not None:
                progress(written)
    finally:
        writer.close()
    seconds = time.perf_counter() - started
    logger.info("wrote %d rows to %s in %.2fs", written, out, seconds)
    return WriteSummary(str(out), fmt, written, anomalous, faults, seconds)

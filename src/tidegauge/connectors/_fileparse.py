"""Parsing of CSV and JSONL lines into typed frames, with per-row errors instead of exceptions.

Every parser returns the typed columns plus :data:`~tidegauge.dataflow.base.ERROR` (null when the row is
fine, else the reason) and :data:`~tidegauge.dataflow.base.RAW` (the original line, only on bad rows).
Good rows stay vectorised: strings are cast column by column with ``strict=False`` and a failure is a
non-null input that became null.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import polars as pl

from tidegauge.dataflow.base import ERROR, RAW

__all__ = [
    "FORMATS",
    "FileFormat",
    "cast_strings",
    "infer_json_schema",
    "infer_string_schema",
    "parse_csv_lines",
    "parse_jsonl_lines",
    "resolve_format",
]

logger = logging.getLogger(__name__)

FileFormat = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[FileFormat, ...] = ("csv", "jsonl", "parquet")
_EXTENSIONS: dict[str, FileFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_TRUE_FALSE = {
    "true": True,
    "false": False,
    "t": True,
    "f": False,
    "yes": True,
    "no": False,
    "1": True,
    "0": False,
}
_NUMERIC_SHARE = 0.9
"""Share of sampled values that must parse for a column to be inferred as numeric or boolean."""
_SHOW = 80
"""Longest bad value quoted in a reason (keeps dead letters readable)."""


def resolve_format(path: str | Path, format: FileFormat | str | None) -> FileFormat:
    """The format named by ``format`` or, when ``None``, by the extension of ``path``."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format={format!r} is not supported; use one of {', '.join(FORMATS)}")
        return format
    suffix = Path(str(path).rstrip("/")).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise ValueError(
            f"cannot tell the format of {str(path)!r} from its extension {suffix!r}; pass format= one of "
            f"{', '.join(FORMATS)} (extensions: {', '.join(_EXTENSIONS)})"
        )
    return _EXTENSIONS[suffix]


def _decode_lines(lines: Sequence[bytes]) -> tuple[list[str], list[str | None]]:
    """Decode UTF-8 lines (without line ends); undecodable lines get an error."""
    try:
        text = b"\n".join(lines).decode("utf-8")
        return text.split("\n"), [None] * len(lines)
    except UnicodeDecodeError:
        out: list[str] = []
        errs: list[str | None] = []
        for line in lines:
            try:
                out.append(line.decode("utf-8"))
                errs.append(None)
            except UnicodeDecodeError as exc:
                out.append(line.decode("utf-8", errors="replace"))
                errs.append(f"invalid UTF-8 at byte {exc.start}")
        return out, errs


def _as_null_if_empty(e: pl.Expr) -> pl.Expr:
    return pl.when(e == "").then(None).otherwise(e)


def _cast_expr(col: str, dtype: pl.DataType) -> pl.Expr:
    src = pl.col(col)
    if dtype == pl.String:
        return src
    stripped = src.str.strip_chars()
    if dtype == pl.Boolean:
        return stripped.str.to_lowercase().replace_strict(_TRUE_FALSE, default=None, return_dtype=pl.Boolean)
    if isinstance(dtype, pl.Datetime):
        return stripped.str.to_datetime(time_unit=dtype.time_unit, time_zone=dtype.time_zone, strict=False)
    if dtype == pl.Date:
        return stripped.str.to_date(strict=False)
    return stripped.cast(dtype, strict=False)


def _reason(col: str, failed: pl.Expr, value: pl.Expr, what: str) -> pl.Expr:
    shown = pl.concat_str([pl.lit("'"), value.str.slice(0, _SHOW), pl.lit("'")])
    return pl.when(failed).then(pl.concat_str([pl.lit(f"column {col!r}: cannot parse "), shown, pl.lit(what)]))


def cast_strings(strings: pl.DataFrame, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Cast String columns to ``schema``; adds ERROR naming every column that failed, row by row.

    Columns of ``strings`` not in ``schema`` stay strings; schema columns missing from ``strings`` are null.
    """
    missing = [c for c in schema if c not in strings.columns]
    if missing:
        strings = strings.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in missing)
    casts = [_cast_expr(c, dt).alias(c) for c, dt in schema.items()]
    reasons = [
        _reason(c, pl.col(c).is_not_null() & _cast_expr(c, dt).is_null(), pl.col(c), f" as {dt}")
        for c, dt in schema.items()
        if dt != pl.String
    ]
    err = (
        _as_null_if_empty(pl.concat_str(reasons, separator="; ", ignore_nulls=True))
        if reasons
        else pl.lit(None, dtype=pl.String)
    )
    order = list(schema) + [c for c in strings.columns if c not in schema]
    return strings.with_columns([*casts, err.alias(ERROR)]).select([*order, ERROR])


def _classify(values: list[str]) -> pl.DataType:
    s = pl.Series(values, dtype=pl.String).str.strip_chars()
    if not len(s):
        return pl.String()
    n_float = len(s) - s.cast(pl.Float64, strict=False).null_count()
    n_int = len(s) - s.cast(pl.Int64, strict=False).null_count()
    # A few bad values in a numeric column must not turn it into strings (they become error rows).
    if n_float >= _NUMERIC_SHARE * len(s):
        return pl.Int64() if n_int == n_float else pl.Float64()
    if s.str.to_lowercase().is_in(["true", "false"]).sum() >= _NUMERIC_SHARE * len(s):
        return pl.Boolean()
    return pl.String()


def infer_string_schema(strings: pl.DataFrame) -> dict[str, pl.DataType]:
    """Guess Int64 / Float64 / Boolean / String per column from sample strings (nulls ignored)."""
    return {c: _classify(strings[c].drop_nulls().to_list()) for c in strings.columns}


def _split_csv(text: list[str], ncols: int, sep: str) -> tuple[pl.DataFrame, list[str | None]]:
    """Split lines into ``ncols`` string fields; rows with another field count get an error."""
    s = pl.Series("line", text, dtype=pl.String)
    if not any('"' in t for t in text):
        counts = s.str.count_matches(sep, literal=True) + 1
        frame = s.str.split_exact(sep, ncols - 1).struct.unnest() if ncols > 1 else s.to_frame()
        bad = counts != ncols
        errs = pl.when(bad).then(pl.format("expected {} fields, got {}", pl.lit(ncols), counts))
        err_list = pl.select(errs.alias("e")).to_series().to_list()
        frame = frame.with_columns(pl.when(~bad).then(pl.col(c)) for c in frame.columns)
        return frame, err_list
    # Quoted fields: the csv module, one line at a time, so one bad line cannot spoil its neighbours.
    rows: list[list[str | None]] = []
    errs_py: list[str | None] = []
    for line in text:
        try:
            fields: list[str | None] = list(next(csv.reader([line], delimiter=sep, strict=True)))
        except (csv.Error, StopIteration) as exc:
            rows.append([None] * ncols)
            errs_py.append(f"malformed CSV: {exc}")
            continue
        if len(fields) != ncols:
            rows.append([None] * ncols)
            errs_py.append(f"expected {ncols} fields, got {len(fields)}")
        else:
            rows.append(fields)
            errs_py.append(None)
    cols = [f"field_{i}" for i in range(ncols)]
    return pl.DataFrame(rows, schema={c: pl.String for c in cols}, orient="row"), errs_py


def _merge_errors(typed: pl.DataFrame, structural: list[str | None], raw: list[str]) -> pl.DataFrame:
    struct_err = pl.Series("_s", structural, dtype=pl.String)
    typed = typed.with_columns(pl.coalesce(struct_err, pl.col(ERROR)).alias(ERROR))
    raw_s = pl.Series(RAW, raw, dtype=pl.String)
    return typed.with_columns(pl.when(pl.col(ERROR).is_not_null()).then(raw_s).alias(RAW))


def csv_strings(lines: Sequence[bytes], header: Sequence[str], sep: str) -> tuple[pl.DataFrame, list[str | None]]:
    """Lines as String columns named by ``header`` (empty fields null) plus per-line structural errors."""
    text, dec_errs = _decode_lines(lines)
    frame, errs = _split_csv(text, len(header), sep)
    frame = frame.rename(dict(zip(frame.columns, header, strict=True)))
    frame = frame.with_columns(_as_null_if_empty(pl.col(c)).alias(c) for c in header)
    merged = [d if d is not None else e for d, e in zip(dec_errs, errs, strict=True)]
    return frame, merged


def parse_csv_lines(
    lines: Sequence[bytes], header: Sequence[str], schema: Mapping[str, pl.DataType], sep: str = ","
) -> pl.DataFrame:
    """Typed frame of CSV data lines (no header), with ERROR and RAW for bad rows."""
    strings, structural = csv_strings(lines, header, sep)
    typed = cast_strings(strings, schema)
    text, _ = _decode_lines(lines)
    return _merge_errors(typed, structural, text)


def _decode_json(lines: Sequence[bytes]) -> tuple[list[dict[str, Any] | None], list[str | None]]:
    try:
        # One decode call for the whole chunk when every line is valid (the common case).
        values = msgspec.json.decode(b"[" + b",".join(lines) + b"]")
        if len(values) == len(lines) and all(type(v) is dict for v in values):
            return values, [None] * len(lines)
    except msgspec.DecodeError:
        pass
    recs: list[dict[str, Any] | None] = []
    errs: list[str | None] = []
    for line in lines:
        try:
            v = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            recs.append(None)
            errs.append(f"invalid JSON: {exc}")
            continue
        if type(v) is not dict:
            recs.append(None)
            errs.append(f"expected a JSON object, got {type(v).__name__}")
        else:
            recs.append(v)
            errs.append(None)
    return recs, errs


def infer_json_schema(lines: Sequence[bytes]) -> dict[str, pl.DataType]:
    """Guess a schema from sample JSONL lines: bool, int, number, else String (nested values as JSON)."""
    recs, _ = _decode_json(lines)
    counts: dict[str, dict[type, int]] = {}
    for r in recs:
        for k, v in (r or {}).items():
            c = counts.setdefault(k, {})
            if v is not None:
                c[type(v)] = c.get(type(v), 0) + 1
    schema: dict[str, pl.DataType] = {}
    for k, c in counts.items():
        total = sum(c.values())
        n_bool, n_int, n_float = c.get(bool, 0), c.get(int, 0), c.get(float, 0)
        # As for CSV: a few values of the wrong type must not turn a column into strings.
        if total and n_bool >= _NUMERIC_SHARE * total:
            schema[k] = pl.Boolean()
        elif total and n_int + n_float >= _NUMERIC_SHARE * total:
            schema[k] = pl.Int64() if n_float == 0 else pl.Float64()
        else:
            schema[k] = pl.String()
    return schema


def _json_column(name: str, vals: list[Any], dtype: pl.DataType) -> tuple[pl.Series, list[str | None]]:
    """A typed column from decoded JSON values, and a reason for each value of the wrong type."""
    if dtype == pl.String:
        conv = [v if v is None or type(v) is str else msgspec.json.encode(v).decode() for v in vals]
        return pl.Series(name, conv, dtype=pl.String), [None] * len(vals)
    if dtype == pl.Boolean:
        ok = [v is None or type(v) is bool for v in vals]
    elif dtype.is_integer():
        ok = [v is None or type(v) is int for v in vals]
    elif dtype.is_float():
        ok = [v is None or type(v) is int or type(v) is float for v in vals]
    else:
        strs = pl.Series(name, [None if v is None else str(v) for v in vals], dtype=pl.String).to_frame()
        out = strs.select(_cast_expr(name, dtype).alias(name)).to_series()
        bad = (strs[name].is_not_null() & out.is_null()).to_list()
        return out, [
            f"column {name!r}: cannot parse {v!r:.{_SHOW}} as {dtype}" if b else None
            for v, b in zip(vals, bad, strict=True)
        ]
    clean = [v if good else None for v, good in zip(vals, ok, strict=True)]
    try:
        series = pl.Series(name, clean, dtype=dtype, strict=False)
    except (OverflowError, pl.exceptions.PolarsError):
        series = pl.Series(name, [None] * len(vals), dtype=dtype)
        ok = [v is None for v in vals]
    return series, [
        None if good else f"column {name!r}: expected {dtype}, got {v!r:.{_SHOW}}"
        for v, good in zip(vals, ok, strict=True)
    ]


def parse_jsonl_lines(lines: Sequence[bytes], schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Typed frame of JSONL lines, with ERROR and RAW for invalid JSON or values of the wrong type."""
    text, dec_errs = _decode_lines(lines)
    recs, json_errs = _decode_json(lines)
    row_errs: list[list[str]] = [[e] if e else [] for e in (d or j for d, j in zip(dec_errs, json_errs, strict=True))]
    columns: list[pl.Series] = []
    for name, dtype in schema.items():
        vals = [r.get(name) if r is not None else None for r in recs]
        series, errs = _json_column(name, vals, dtype)
        columns.append(series)
        for i, e in enumerate(errs):
            if e is not None:
                row_errs[i].append(e)
    err = pl.Series(ERROR, ["; ".join(e) if e else None for e in row_errs], dtype=pl.String)
    frame = pl.DataFrame([*columns, err]) if columns else err.to_frame()
    raw = pl.Series(RAW, text, dtype=pl.String)
    return frame.with_columns(pl.when(pl.col(ERROR).is_not_null()).then(raw).alias(RAW))

"""Transactional file output (CSV, JSONL, Parquet) for exactly-once results across crashes."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from pathlib import Path

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tidegauge.checkpoint._fs import fsync_dir, fsync_file
from tidegauge.connectors._fileparse import FileFormat, resolve_format
from tidegauge.connectors.base import Guarantee
from tidegauge.errors import CheckpointError, ConnectorError

__all__ = ["FileSink", "FileSinkLogic", "FileSinkState"]

logger = logging.getLogger(__name__)

_SPILL_ROWS = 500_000
"""Rows buffered before they are written early as a pending part: bounds memory between checkpoints
(tens of MB for typical readings) without making a part per batch."""
_PART = re.compile(r"^part-(\d{10})-(\d{5})\.(csv|jsonl|parquet)$")


class FileSinkState(msgspec.Struct, frozen=True, tag="tidegauge.file-sink.v1"):
    """What a restart needs: the last pre-committed epoch and its parts not yet visible then."""

    path: str
    format: str
    epoch: int
    """last pre-committed epoch (-1: none)"""
    pending: list[str] = msgspec.field(default_factory=list)
    """part files of epochs <= ``epoch`` that were still pending when the snapshot was taken"""


class FileSink:
    """Write a stream to a file, transactionally.

    Guarantee: **exactly-once** with a replayable source. Batches are buffered and, at each checkpoint,
    written as pending part files (``pre_commit``: fsync), which ``commit`` renames to
    ``<path>.parts/part-<epoch>-<n>.<ext>``: readable while the flow runs (e.g.
    ``pl.scan_parquet("out.parquet.parts/*.parquet")``). A restart from a checkpoint commits that
    checkpoint's pending parts if the commit did not finish and deletes everything written after it, so the
    output equals that of an uninterrupted run row for row. A fresh start (no checkpoint) clears earlier
    parts and the earlier output file.

    ``close()`` (the end of a finite run) writes ``<path>`` atomically as the concatenation of all parts in
    order; if the process dies meanwhile, the next run (resumed with nothing left to read) writes it again.
    Rows written but never checkpointed are flushed as one more part on ``close()``. A ``path`` ending in
    ``/`` is a directory: parts only, no final file (``format`` is then required).

    Parameters
    ----------
    path:
        The output file, or a directory ending in ``/``.
    format:
        ``"csv"``, ``"jsonl"`` (newline-delimited JSON) or ``"parquet"``; default from the extension.
    name:
        Sink name (default: the file's stem).

    Examples
    --------
    >>> import asyncio, tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "out.csv"
    >>> async def run():
    ...     sink = FileSink(out).build(None)
    ...     await sink.write_batch(pl.DataFrame({"a": [1, 2]}))
    ...     await sink.pre_commit(1); await sink.commit(1); await sink.close()
    >>> asyncio.run(run())
    >>> out.read_text()
    'a\\n1\\n2\\n'
    """

    snapshot_type: type | None = FileSinkState
    guarantee: Guarantee = "exactly-once"

    def __init__(self, path: str | Path, *, format: FileFormat | None = None, name: str | None = None) -> None:
        text = str(path)
        self.is_dir = text.endswith(("/", os.sep))
        if self.is_dir and format is None:
            raise ValueError(f"FileSink({text!r}) writes a directory of parts: pass format= csv, jsonl or parquet")
        self.format: FileFormat = resolve_format(text, format)
        self.path = Path(text)
        self.final: Path | None = None if self.is_dir else self.path
        self.parts_dir = self.path if self.is_dir else self.path.with_name(self.path.name + ".parts")
        self.name = name if name is not None else self.path.stem

    def __repr__(self) -> str:
        return f"FileSink({str(self.path)!r}, format={self.format!r})"

    def build(self, resume_state: FileSinkState | None) -> FileSinkLogic:
        """Recover the output directory to ``resume_state`` (or clear it) and start writing."""
        if resume_state is not None and not isinstance(resume_state, FileSinkState):
            raise TypeError(f"resume_state must be a FileSinkState, got {type(resume_state).__name__}")
        return FileSinkLogic(self, resume_state)


class FileSinkLogic:
    """The running writer of a :class:`FileSink`."""

    def __init__(self, d: FileSink, state: FileSinkState | None) -> None:
        self._d = d
        self._pending_dir = d.parts_dir / ".pending"
        self._pending_dir.mkdir(parents=True, exist_ok=True)
        self._epoch = state.epoch if state is not None else -1
        self._recover(state)
        self._buffer: list[pl.DataFrame] = []
        self._buffered = 0
        self._open: list[Path] = []  # written parts of the epoch in progress (not durable yet)
        self._uncommitted: dict[int, list[str]] = {}
        self._seq = 0

    # -- recovery --------------------------------------------------------------------------------

    def _tmp_final(self) -> Path | None:
        f = self._d.final
        return None if f is None else f.with_name(f".{f.name}.tg-tmp")

    def _recover(self, state: FileSinkState | None) -> None:
        d, epoch = self._d, self._epoch
        for p in sorted(self._pending_dir.iterdir()):
            m = _PART.match(p.name)
            if m and int(m.group(1)) <= epoch:
                logger.info("sink %s: committing %s left pending by a crash", d.name, p.name)
                os.replace(p, d.parts_dir / p.name)
            else:
                p.unlink()
        for p in d.parts_dir.iterdir():
            m = _PART.match(p.name)
            if m and int(m.group(1)) > epoch:
                logger.info("sink %s: discarding %s written after checkpoint %d", d.name, p.name, epoch)
                p.unlink()
        fsync_dir(self._pending_dir)
        fsync_dir(d.parts_dir)
        tmp = self._tmp_final()
        if tmp is not None and tmp.exists():
            tmp.unlink()
        if state is None and d.final is not None and d.final.exists():
            d.final.unlink()
        if state is not None:
            lost = [n for n in state.pending if not (d.parts_dir / n).exists()]
            if lost:
                raise CheckpointError(
                    f"sink {d.name!r}: parts {lost} of checkpoint {epoch} are missing from {d.parts_dir}; "
                    "the output was changed outside tidegauge, delete it and the checkpoints to start over"
                )

    # -- writing ---------------------------------------------------------------------------------

    def _write_part(self, df: pl.DataFrame, path: Path) -> None:
        if self._d.format == "csv":
            df.write_csv(path)
        elif self._d.format == "jsonl":
            df.write_ndjson(path)
        else:
            df.write_parquet(path)

    def _spill(self) -> None:
        if not self._buffer:
            return
        df = pl.concat(self._buffer, how="diagonal_relaxed") if len(self._buffer) > 1 else self._buffer[0]
        self._buffer, self._buffered = [], 0
        path = self._pending_dir / f"open-{self._seq:05d}.{self._d.format}"
        self._seq += 1
        self._write_part(df, path)
        self._open.append(path)

    async def write_batch(self, df: pl.DataFrame) -> None:
        """Buffer ``df`` for the epoch in progress (written early as a pending part when large)."""
        if not df.height:
            return
        self._buffer.append(df)
        self._buffered += df.height
        if self._buffered >= _SPILL_ROWS:
            await asyncio.to_thread(self._spill)

    def _pre_commit(self, epoch: int) -> None:
        if epoch <= self._epoch:
            raise ValueError(f"pre_commit({epoch}): epochs must increase (last was {self._epoch})")
        self._spill()
        names: list[str] = []
        for n, p in enumerate(self._open):
            fsync_file(p)
            name = f"part-{epoch:010d}-{n:05d}.{self._d.format}"
            os.replace(p, self._pending_dir / name)
            names.append(name)
        fsync_dir(self._pending_dir)
        self._open = []
        if names:
            self._uncommitted[epoch] = names
        self._epoch = epoch

    async def pre_commit(self, epoch: int) -> None:
        """Write and fsync everything buffered as pending parts of ``epoch``."""
        await asyncio.to_thread(self._pre_commit, epoch)

    def snapshot(self) -> FileSinkState:
        """The last pre-committed epoch and its parts that are not visible yet."""
        pending = [n for e in sorted(self._uncommitted) for n in self._uncommitted[e]]
        return FileSinkState(str(self._d.path), self._d.format, self._epoch, pending)

    def _commit(self, epoch: int) -> None:
        done = [e for e in sorted(self._uncommitted) if e <= epoch]
        for e in done:
            for name in self._uncommitted.pop(e):
                os.replace(self._pending_dir / name, self._d.parts_dir / name)
        if done:
            fsync_dir(self._d.parts_dir)

    async def commit(self, epoch: int) -> None:
        """Make pending parts of epochs <= ``epoch`` visible."""
        await asyncio.to_thread(self._commit, epoch)

    # -- the final file --------------------------------------------------------------------------

    def committed_parts(self) -> list[Path]:
        """Visible part files in output order."""
        parts = [p for p in self._d.parts_dir.iterdir() if _PART.match(p.name)]
        return sorted(parts, key=lambda p: p.name)

    def _concat(self, parts: list[Path], out: Path) -> None:
        if self._d.format == "parquet":
            if not parts:
                pl.DataFrame().write_parquet(out)
                return
            schemas = [pq.ParquetFile(p).schema_arrow for p in parts]
            try:
                schema = pa.unify_schemas(schemas, promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ConnectorError(f"sink {self._d.name!r}: parts have incompatible schemas: {exc}") from exc
            with pq.ParquetWriter(out, schema) as writer:
                for p in parts:
                    for batch in pq.ParquetFile(p).iter_batches():
                        writer.write_table(pa.Table.from_batches([batch]).cast(schema))
            return
        header: bytes | None = None
        with open(out, "wb") as dst:
            for p in parts:
                with open(p, "rb") as src:
                    if self._d.format == "csv":
                        first = src.readline()
                        if header is None:
                            header = first
                            dst.write(first)
                        elif first != header:
                            raise ConnectorError(
                                f"sink {self._d.name!r}: {p.name} has columns {first!r}, earlier parts "
                                f"{header!r}; write batches with the same columns to a CSV sink"
                            )
                    shutil.copyfileobj(src, dst)

    def _close(self) -> None:
        if self._buffer or self._open:
            logger.warning("sink %s: flushing rows written after the last checkpoint on close", self._d.name)
            self._pre_commit(self._epoch + 1)
        self._commit(self._epoch)
        final, tmp = self._d.final, self._tmp_final()
        if final is None or tmp is None:
            return
        self._concat(self.committed_parts(), tmp)
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        logger.info("sink %s: wrote %s", self._d.name, final)

    async def close(self) -> None:
        """Commit what is left and write the final file (atomically)."""
        await asyncio.to_thread(self._close)

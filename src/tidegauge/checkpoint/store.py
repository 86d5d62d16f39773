"""Checkpoint storage in a local directory.

Layout::

    <dir>/chk-0000000007/
        000-keys.msgpack            one msgpack file per entry (a ``msgspec.Struct`` or nil)
        001-source_readings.msgpack
        MANIFEST.json               written last: temp file, fsync, rename, fsync of the directory

A checkpoint is *complete* iff its ``MANIFEST.json`` exists, decodes, and every entry file matches the
size and SHA-256 recorded there. :meth:`CheckpointStore.latest` returns the newest complete checkpoint;
a corrupt newest one is skipped with a warning (falling back to the previous one). Directories without
a manifest (a crash mid-write) are ignored and removed by the next :meth:`CheckpointStore.write`, which
also prunes complete checkpoints beyond the newest ``keep``.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import msgspec

from tidegauge._time import Clock, SystemClock
from tidegauge.checkpoint._fs import atomic_write_bytes, fsync_dir
from tidegauge.errors import CheckpointError

__all__ = ["FORMAT_VERSION", "MANIFEST", "Checkpoint", "CheckpointInfo", "CheckpointStore", "ManifestEntry"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

FORMAT_VERSION = 1
MANIFEST = "MANIFEST.json"
MetaValue = str | int | float | bool | None
_DIR_RE = re.compile(r"^chk-(\d{10})$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ManifestEntry(msgspec.Struct, frozen=True):
    """One entry of a manifest: where it is and how to check it."""

    file: str
    bytes: int
    sha256: str
    type: str | None
    """``module.QualName`` of the struct, ``None`` for a stateless (nil) entry."""


class Manifest(msgspec.Struct, frozen=True):
    """The content of ``MANIFEST.json``."""

    format: int
    epoch: int
    created_at: datetime
    meta: dict[str, MetaValue]
    entries: dict[str, ManifestEntry]


class CheckpointInfo(msgspec.Struct, frozen=True):
    """What :meth:`CheckpointStore.list` knows about one checkpoint directory."""

    epoch: int
    path: Path
    complete: bool
    total_bytes: int
    created_at: datetime | None = None
    entries: dict[str, int] = msgspec.field(default_factory=dict)
    """entry name -> size in bytes (empty when there is no readable manifest)"""
    problem: str | None = None
    """why the checkpoint is not complete"""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint read from disk (entries already verified against the manifest)."""

    epoch: int
    created_at: datetime
    meta: dict[str, MetaValue]
    path: Path
    manifest: Manifest
    _data: dict[str, bytes] = field(repr=False)

    def names(self) -> list[str]:
        """Entry names, in the order they were written."""
        return list(self.manifest.entries)

    def raw(self, name: str) -> bytes:
        """The msgpack bytes of entry ``name``."""
        if name not in self._data:
            raise KeyError(f"checkpoint {self.epoch} has no entry {name!r}; it has {self.names()}")
        return self._data[name]

    def load(self, name: str, type_: type[T]) -> T | None:
        """Decode entry ``name`` as ``type_``; ``None`` if the entry was stored as ``None``.

        Raises ``KeyError`` for an unknown name (check :meth:`names` first for optional entries) and
        :class:`~tidegauge.errors.CheckpointError` if the entry does not decode as ``type_``.
        """
        data = self.raw(name)
        try:
            return msgspec.msgpack.decode(data, type=type_ | None)
        except msgspec.DecodeError as exc:
            stored = self.manifest.entries[name].type
            raise CheckpointError(
                f"checkpoint {self.epoch} entry {name!r} (stored as {stored}) does not decode as "
                f"{type_.__qualname__}: {exc}; the state format changed, restore with the matching version"
            ) from exc


def _type_name(value: object) -> str | None:
    if value is None:
        return None
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


def _epoch_of(path: Path) -> int | None:
    m = _DIR_RE.match(path.name)
    return int(m.group(1)) if m else None


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


class CheckpointStore:
    """Checkpoints in a local directory, written atomically, keeping the newest ``keep``.

    Parameters
    ----------
    directory:
        Where checkpoints live (created if missing).
    keep:
        How many complete checkpoints to keep (>= 1); older ones are deleted after each write.
    clock:
        Source of ``created_at`` (default: the system clock).

    Examples
    --------
    >>> import tempfile, msgspec
    >>> class Pos(msgspec.Struct, tag="pos-v1"):
    ...     offset: int
    >>> store = CheckpointStore(tempfile.mkdtemp(), keep=2)
    >>> store.write(1, {"source:a": Pos(10), "step:map": None}, meta={"flow": "demo"}).complete
    True
    >>> cp = store.latest()
    >>> cp.epoch, cp.load("source:a", Pos), cp.load("step:map", Pos)
    (1, Pos(offset=10), None)
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, clock: Clock | None = None) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep={keep!r}: keep at least 1 checkpoint (an int >= 1)")
        self.directory = Path(directory)
        self.keep = keep
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._last_epoch: int | None = None

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.directory)!r}, keep={self.keep})"

    # -- reading ---------------------------------------------------------------------------------

    def _dirs(self) -> builtins.list[tuple[int, Path]]:
        """Checkpoint directories, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(e, p) for p in self.directory.iterdir() if p.is_dir() and (e := _epoch_of(p)) is not None]
        return sorted(found)

    def _read(self, path: Path) -> Checkpoint:
        """Read and verify one checkpoint directory; raises CheckpointError saying what is wrong."""
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise CheckpointError(f"{path}: no {MANIFEST} (checkpoint incomplete, the write did not finish)")
        try:
            manifest = msgspec.json.decode(mpath.read_bytes(), type=Manifest)
        except msgspec.DecodeError as exc:
            raise CheckpointError(f"{mpath}: unreadable manifest: {exc}") from exc
        if manifest.format > FORMAT_VERSION:
            raise CheckpointError(
                f"{mpath}: format {manifest.format} is newer than this tidegauge supports "
                f"({FORMAT_VERSION}); upgrade tidegauge to restore it"
            )
        data: dict[str, bytes] = {}
        for name, entry in manifest.entries.items():
            try:
                blob = (path / entry.file).read_bytes()
            except OSError as exc:
                raise CheckpointError(f"{path}: entry {name!r} unreadable: {exc}") from exc
            if len(blob) != entry.bytes or hashlib.sha256(blob).hexdigest() != entry.sha256:
                raise CheckpointError(
                    f"{path}: entry {name!r} ({entry.file}) is corrupt: {len(blob)} bytes, "
                    f"checksum does not match the manifest"
                )
            data[name] = blob
        return Checkpoint(
            epoch=manifest.epoch,
            created_at=manifest.created_at,
            meta=dict(manifest.meta),
            path=path,
            manifest=manifest,
            _data=data,
        )

    def read(self, epoch: int) -> Checkpoint:
        """The checkpoint of ``epoch``, verified; :class:`CheckpointError` if missing or not complete."""
        path = self.directory / f"chk-{epoch:010d}"
        if not path.is_dir():
            have = [e for e, _ in self._dirs()]
            raise CheckpointError(f"no checkpoint {epoch} in {self.directory}; epochs present: {have}")
        return self._read(path)

    def latest(self, *, strict: bool = False) -> Checkpoint | None:
        """The newest complete checkpoint, or ``None`` if there is none.

        Corrupt or incomplete newer checkpoints are skipped (corrupt ones with a warning). With
        ``strict=True``, :class:`CheckpointError` is raised when checkpoint directories exist but none of
        them is readable (instead of silently starting from scratch).
        """
        dirs = self._dirs()
        problems: builtins.list[str] = []
        for epoch, path in reversed(dirs):
            try:
                cp = self._read(path)
            except CheckpointError as exc:
                if (path / MANIFEST).exists():
                    logger.warning("skipping corrupt checkpoint %d: %s", epoch, exc)
                else:
                    logger.info("skipping incomplete checkpoint %d", epoch)
                problems.append(str(exc))
                continue
            self._last_epoch = max(self._last_epoch or cp.epoch, cp.epoch)
            return cp
        if dirs and strict:
            raise CheckpointError(
                f"none of the {len(dirs)} checkpoints in {self.directory} is readable: "
                f"{'; '.join(problems)}; delete the directory to start from scratch"
            )
        return None

    def list(self) -> builtins.list[CheckpointInfo]:
        """Every checkpoint directory, oldest first, verified (reads every entry)."""
        out: builtins.list[CheckpointInfo] = []
        for epoch, path in self._dirs():
            total = _dir_bytes(path)
            try:
                cp = self._read(path)
            except CheckpointError as exc:
                created: datetime | None = None
                sizes: dict[str, int] = {}
                try:
                    m = msgspec.json.decode((path / MANIFEST).read_bytes(), type=Manifest)
                    created, sizes = m.created_at, {k: v.bytes for k, v in m.entries.items()}
                except (OSError, msgspec.DecodeError):
                    pass
                out.append(CheckpointInfo(epoch, path, False, total, created, sizes, str(exc)))
                continue
            sizes = {k: v.bytes for k, v in cp.manifest.entries.items()}
            out.append(CheckpointInfo(epoch, path, True, total, cp.created_at, sizes))
        return out

    # -- writing ---------------------------------------------------------------------------------

    def write(
        self,
        epoch: int,
        entries: Mapping[str, msgspec.Struct | None],
        *,
        meta: Mapping[str, MetaValue],
    ) -> CheckpointInfo:
        """Write checkpoint ``epoch`` atomically and prune old ones.

        ``epoch`` must be greater than the newest complete checkpoint's (``ValueError`` otherwise).
        Entries are ``msgspec.Struct`` snapshots (or ``None`` for stateless parts) under names such as
        ``"keys"`` or ``"source:readings"``; ``meta`` holds flat JSON scalars.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch={epoch!r}: epochs are ints >= 0")
        if self._last_epoch is None:
            cp = self.latest()
            self._last_epoch = cp.epoch if cp is not None else -1
        if epoch <= self._last_epoch:
            raise ValueError(
                f"epoch {epoch} is not after the newest checkpoint ({self._last_epoch}); epochs must increase"
            )
        for name, value in entries.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"checkpoint entry names are non-empty strings, got {name!r}")
            if value is not None and not isinstance(value, msgspec.Struct):
                raise TypeError(
                    f"checkpoint entry {name!r} is a {type(value).__name__}; snapshots must be "
                    "msgspec.Struct instances (or None)"
                )
        for key, mv in meta.items():
            if not isinstance(mv, str | int | float | bool | type(None)):
                raise TypeError(f"meta[{key!r}] = {mv!r}: meta values are str, int, float, bool or None")

        self.directory.mkdir(parents=True, exist_ok=True)
        # Anything at or after this epoch, or without a manifest, is debris of a crashed write.
        for e, p in self._dirs():
            if e >= epoch or not (p / MANIFEST).exists():
                logger.info("removing incomplete checkpoint directory %s", p)
                shutil.rmtree(p, ignore_errors=True)

        path = self.directory / f"chk-{epoch:010d}"
        path.mkdir()
        fsync_dir(self.directory)
        manifest_entries: dict[str, ManifestEntry] = {}
        try:
            for i, (name, value) in enumerate(entries.items()):
                fname = f"{i:03d}-{_UNSAFE.sub('_', name)[:80]}.msgpack"
                blob = msgspec.msgpack.encode(value)
                with open(path / fname, "wb") as f:
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
                manifest_entries[name] = ManifestEntry(
                    file=fname,
                    bytes=len(blob),
                    sha256=hashlib.sha256(blob).hexdigest(),
                    type=_type_name(value),
                )
            created = datetime.fromtimestamp(self._clock.now_us() / 1e6, tz=UTC)
            manifest = Manifest(FORMAT_VERSION, epoch, created, dict(meta), manifest_entries)
            atomic_write_bytes(path / MANIFEST, msgspec.json.format(msgspec.json.encode(manifest)))
        except (OSError, TypeError, msgspec.EncodeError) as exc:
            raise CheckpointError(f"writing checkpoint {epoch} to {path} failed: {exc}") from exc
        self._last_epoch = epoch
        self._prune()
        sizes = {k: v.bytes for k, v in manifest_entries.items()}
        logger.debug("checkpoint %d written to %s", epoch, path)
        return CheckpointInfo(epoch, path, True, _dir_bytes(path), created, sizes)

    def _prune(self) -> None:
        complete = [p for _, p in self._dirs() if (p / MANIFEST).exists()]
        for p in complete[: -self.keep]:
            logger.debug("pruning old checkpoint %s", p)
            shutil.rmtree(p, ignore_errors=True)

"""Durable file operations shared by checkpoint storage and transactional sinks.

Durability on POSIX needs two fsyncs: one of the file (its bytes) and one of the directory (the name
pointing at it, after a create or rename). Directories cannot be opened for fsync on Windows, so
:func:`fsync_dir` is a no-op there; a rename is still atomic, only durability after power loss is weaker.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["atomic_write_bytes", "fsync_dir", "fsync_file"]

logger = logging.getLogger(__name__)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s bytes to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush the directory entry table of ``path`` (no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:  # some file systems refuse to open directories; durability is best effort
        logger.debug("cannot open directory %s for fsync: %s", path, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        logger.debug("fsync of directory %s failed: %s", path, exc)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)

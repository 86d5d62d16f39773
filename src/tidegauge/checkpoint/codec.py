"""Typed encodings for state inside snapshots (no pickles).

Snapshots are ``msgspec.Struct`` objects encoded with msgpack. Arrays and tables inside them use:

- :class:`ArrayBlob`: one numpy array as dtype + shape + raw little-endian bytes;
- Arrow IPC bytes for polars DataFrames (:func:`frame_to_ipc` / :func:`ipc_to_frame`).
"""

from __future__ import annotations

import io

import msgspec
import numpy as np
import polars as pl

__all__ = ["ArrayBlob", "frame_to_ipc", "ipc_to_frame", "pack_array", "unpack_array"]


class ArrayBlob(msgspec.Struct, frozen=True):
    """A numpy array of a fixed-size dtype, stored as raw little-endian bytes."""

    dtype: str
    shape: list[int]
    data: bytes


def pack_array(a: np.ndarray) -> ArrayBlob:
    """Encode ``a`` (any fixed-size numeric/bool dtype).

    >>> unpack_array(pack_array(np.arange(3))).tolist()
    [0, 1, 2]
    """
    if a.dtype.kind not in "biuf":
        raise TypeError(f"pack_array takes numeric or bool arrays, got dtype {a.dtype}")
    le = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return ArrayBlob(dtype=le.dtype.str, shape=list(a.shape), data=le.tobytes())


def unpack_array(blob: ArrayBlob) -> np.ndarray:
    """Decode an :class:`ArrayBlob` into a writable native-order array."""
    a = np.frombuffer(blob.data, dtype=np.dtype(blob.dtype)).reshape(blob.shape)
    return a.astype(a.dtype.newbyteorder("="), copy=True)


def frame_to_ipc(df: pl.DataFrame) -> bytes:
    """Arrow IPC (file format, uncompressed) bytes of ``df``."""
    buf = io.BytesIO()
    df.write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


def ipc_to_frame(data: bytes) -> pl.DataFrame:
    """Inverse of :func:`frame_to_ipc`."""
    return pl.read_ipc(io.BytesIO(data))

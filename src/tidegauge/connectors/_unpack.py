"""Compiled kernels (numba): msgspec's msgpack encoding of a list of record Structs, to columns.

msgspec encodes each Struct as a map of its fields, in declaration order, every field present (``None``
as nil). :func:`unpack` walks such payloads once and writes every field into a column slot: floats as
their IEEE bits, integers, booleans and times (microseconds since the epoch) as int64, strings as the
position and length of their bytes in the payload (gathered afterwards by :func:`gather_strings`). It
checks the keys of each payload's first record against the expected field names (and the key lengths of
every record), and gives up (returns -1) at anything unexpected: the caller then decodes the records
another way. See :mod:`tidegauge.connectors._records`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tidegauge._jit import lazy_njit

__all__ = ["BOOL", "FLOAT", "INT", "STR", "TIME", "gather_strings", "unpack"]

logger = logging.getLogger(__name__)

STR, FLOAT, INT, BOOL, TIME = 0, 1, 2, 3, 4
"""Field kinds, as passed to :func:`unpack` (``TIME``: a timestamp, or epoch seconds as a float)."""

_NIL, _FALSE, _TRUE, _F64 = 0xC0, 0xC2, 0xC3, 0xCB


@lazy_njit(cache=True, nogil=True)
def _be(buf: np.ndarray, p: int, n: int) -> Any:  # pragma: no cover - compiled
    """The big-endian unsigned integer in ``buf[p:p + n]``."""
    v = np.uint64(0)
    for k in range(n):
        v = (v << np.uint64(8)) | np.uint64(buf[p + k])
    return v


@lazy_njit(cache=True, nogil=True)
def _str_head(buf: np.ndarray, p: int) -> tuple[int, Any]:  # pragma: no cover - compiled
    """(start of the bytes, length) of the msgpack string at ``p``; start -1 if it is not one."""
    h = buf[p]
    if 0xA0 <= h <= 0xBF:
        return p + 1, np.int64(h & 0x1F)
    if h == 0xD9:
        return p + 2, np.int64(buf[p + 1])
    if h == 0xDA:
        return p + 3, np.int64(_be(buf, p + 1, 2))
    if h == 0xDB:
        return p + 5, np.int64(_be(buf, p + 1, 4))
    return -1, np.int64(0)


@lazy_njit(cache=True, nogil=True)
def _int(buf: np.ndarray, p: int) -> tuple[int, Any, bool]:  # pragma: no cover - compiled
    """(position after, value, ok) of the msgpack integer at ``p``; not ok if it is none or beyond int64."""
    h = buf[p]
    if h <= 0x7F:
        return p + 1, np.int64(h), True
    if h >= 0xE0:
        return p + 1, np.int64(h) - 256, True
    if h == 0xCC:
        return p + 2, np.int64(buf[p + 1]), True
    if h == 0xCD:
        return p + 3, np.int64(_be(buf, p + 1, 2)), True
    if h == 0xCE:
        return p + 5, np.int64(_be(buf, p + 1, 4)), True
    if h == 0xCF:
        u = _be(buf, p + 1, 8)
        if u > np.uint64(0x7FFFFFFFFFFFFFFF):
            return p, np.int64(0), False
        return p + 9, np.int64(u), True
    if h == 0xD0:
        v = np.int64(buf[p + 1])
        return p + 2, v - 256 if v >= 128 else v, True
    if h == 0xD1:
        v = np.int64(_be(buf, p + 1, 2))
        return p + 3, v - 65536 if v >= 32768 else v, True
    if h == 0xD2:
        v = np.int64(_be(buf, p + 1, 4))
        return p + 5, v - 4294967296 if v >= 2147483648 else v, True
    if h == 0xD3:
        return p + 9, np.int64(_be(buf, p + 1, 8)), True  # the cast wraps to the two's complement value
    return p, np.int64(0), False


@lazy_njit(cache=True, nogil=True)
def unpack(
    buf: np.ndarray,
    row0: int,
    names: np.ndarray,
    name_at: np.ndarray,
    kinds: np.ndarray,
    values: np.ndarray,
    valid: np.ndarray,
    lengths: np.ndarray,
) -> Any:  # pragma: no cover - compiled
    """Decode one payload (``buf``: a msgpack array of maps) into rows ``row0...`` of the columns.

    ``names[name_at[f]:name_at[f + 1]]`` is field ``f``'s name and ``kinds[f]`` its kind. Outputs, field by
    row: ``values`` (int64; float bits for ``FLOAT``; for ``STR`` the position of the bytes in ``buf``),
    ``valid`` (False: null) and ``lengths`` (``STR`` only). Returns the number of rows decoded, or -1 if
    the payload is not of that shape (or would overflow the columns).
    """
    nf = kinds.size
    cap = valid.shape[1]
    p = 0
    h = buf[p]
    if 0x90 <= h <= 0x9F:
        count = np.int64(h & 0x0F)
        p += 1
    elif h == 0xDC:
        count = np.int64(_be(buf, p + 1, 2))
        p += 3
    elif h == 0xDD:
        count = np.int64(_be(buf, p + 1, 4))
        p += 5
    else:
        return -1
    if row0 + count > cap:
        return -1
    size = buf.size
    as_float = np.empty(1, np.float64)  # reinterpreting bits without an allocation per value
    as_int = as_float.view(np.int64)
    for row in range(row0, row0 + count):
        if p >= size:
            return -1
        h = buf[p]
        if 0x80 <= h <= 0x8F:
            m = np.int64(h & 0x0F)
            p += 1
        elif h == 0xDE:
            m = np.int64(_be(buf, p + 1, 2))
            p += 3
        else:
            return -1
        if m != nf:
            return -1
        for f in range(nf):
            p, klen = _str_head(buf, p)
            a = name_at[f]
            if p < 0 or klen != name_at[f + 1] - a or p + klen >= size:
                return -1
            if row == row0:  # one Struct type encodes a whole list: its first record shows the keys of all
                for k in range(klen):
                    if buf[p + k] != names[a + k]:
                        return -1
            p += klen
            h = buf[p]
            if h == _NIL:
                valid[f, row] = False
                p += 1
                continue
            valid[f, row] = True
            kind = kinds[f]
            if kind == STR:
                q, n = _str_head(buf, p)
                if q < 0 or q + n > size:
                    return -1
                values[f, row] = q
                lengths[f, row] = n
                p = q + n
            elif kind == FLOAT or (kind == TIME and h == _F64):
                if h == _F64:
                    bits = np.int64(_be(buf, p + 1, 8))
                    p += 9
                    if kind == FLOAT:
                        values[f, row] = bits
                        continue
                    as_int[0] = bits
                    x = as_float[0]
                else:  # an integer where a float is expected (msgspec converts them, but be safe)
                    q, iv, ok = _int(buf, p)
                    if not ok:
                        return -1
                    p = q
                    x = np.float64(iv)
                    if kind == FLOAT:
                        as_float[0] = x
                        values[f, row] = as_int[0]
                        continue
                # epoch seconds to microseconds, rounded half to even as polars' ``round`` does
                values[f, row] = np.int64(np.rint(x * 1_000_000.0))
            elif kind == INT:
                q, iv, ok = _int(buf, p)
                if not ok:
                    return -1
                values[f, row] = iv
                p = q
            elif kind == BOOL:
                if h != _FALSE and h != _TRUE:
                    return -1
                values[f, row] = h == _TRUE
                p += 1
            elif h == 0xD6 and buf[p + 1] == 0xFF:  # TIME: timestamp extension, 32-bit seconds
                values[f, row] = np.int64(_be(buf, p + 2, 4)) * 1_000_000
                p += 6
            elif h == 0xD7 and buf[p + 1] == 0xFF:  # 30-bit nanoseconds, 34-bit seconds
                v = _be(buf, p + 2, 8)
                ns = np.int64(v >> np.uint64(34))
                values[f, row] = np.int64(v & np.uint64(0x3FFFFFFFF)) * 1_000_000 + ns // 1000
                p += 10
            elif h == 0xC7 and buf[p + 1] == 12 and buf[p + 2] == 0xFF:  # 32-bit ns, signed 64-bit seconds
                ns = np.int64(_be(buf, p + 3, 4))
                values[f, row] = np.int64(_be(buf, p + 7, 8)) * 1_000_000 + ns // 1000
                p += 15
            else:
                return -1
    if p != size:
        return -1
    return count


@lazy_njit(cache=True, nogil=True)
def gather_strings(
    buf: np.ndarray, values: np.ndarray, lengths: np.ndarray, valid: np.ndarray, f: int, row0: int, n: int,
    offsets: np.ndarray, data: np.ndarray, used: int,
) -> Any:  # pragma: no cover - compiled
    """Copy field ``f``'s strings of rows ``row0...row0 + n`` from ``buf`` into ``data`` from byte ``used``.

    ``offsets[row + 1]`` gets the end of each row's string (Arrow ``large_string`` offsets); returns the
    bytes used so far. ``data`` must hold the lengths of all the field's strings.
    """
    for row in range(row0, row0 + n):
        if valid[f, row]:
            a = values[f, row]
            k = lengths[f, row]
            data[used:used + k] = buf[a:a + k]
            used += k
        offsets[row + 1] = used
    return used

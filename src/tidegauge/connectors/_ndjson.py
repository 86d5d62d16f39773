"""Compiled NDJSON reader (numba) for the records of an HTTP source: validates and writes columns in one pass.

The server must validate every record exactly as msgspec does (:mod:`tidegauge.connectors._records`), and
msgspec, creating a Python object per value, costs about 0.3 us a record on the GIL. Sensor readings are
nearly always flat objects of plain strings, numbers and timestamps: for those, :func:`scan` checks the
same rules (JSON syntax, UTF-8, field types, lengths, ranges, required fields) without the GIL and writes
the values straight into columns, the form :meth:`tidegauge.connectors._records.RecordCodec.frame_columns`
turns into a DataFrame. Anything outside that subset makes it give up (-1) and the caller uses msgspec,
which gives the precise reason if a record is bad. So :func:`scan` never accepts a body msgspec would
reject, and the values it writes are the ones msgspec would decode: the subset is kept to what can be
read exactly (no escapes in strings, no nested values in unknown fields, no repeated keys, numbers that
convert exactly: a significand up to 2^53 and a decimal exponent within +-22, Clinger's fast path).
``tests/connectors/test_http_records.py`` checks that against msgspec with Hypothesis, value for value.

Like msgspec's ``decode_lines``, a body is a sequence of JSON objects separated by whitespace (newlines).
The hot loop is written out in one function on purpose: with numba here, a call that passes an array
costs 10-20 ns (reference counting), more than reading a whole value.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tidegauge._jit import lazy_njit
from tidegauge.connectors._rfc3339 import parse_at
from tidegauge.connectors._unpack import BOOL, FLOAT, INT, STR, TIME

__all__ = ["POW10", "count_objects", "scan"]

logger = logging.getLogger(__name__)

POW10 = np.array([10.0**k for k in range(23)])
"""Exact doubles 10^0 ... 10^22, the powers Clinger's fast path multiplies or divides by."""
_EXACT = 1 << 53  # integers up to 2^53 are exact doubles
_POSITIONS = 64  # key positions in a record whose field is remembered (see scan); later ones share the last
_EPOCH_LIMIT = 1e11  # epoch seconds accepted for a time field (the Struct's Meta(ge=-1e11, le=1e11))


@lazy_njit(cache=True, nogil=True)
def count_objects(buf: np.ndarray) -> Any:  # pragma: no cover - compiled
    """An upper bound of the records in ``buf``: its ``{`` bytes (some may be inside strings)."""
    n = 0
    for b in buf:
        if b == 123:
            n += 1
    return n


@lazy_njit(cache=True, nogil=True)
def _string(buf: np.ndarray, p: int, end: int) -> tuple[int, Any]:  # pragma: no cover - compiled
    """At an opening quote: (position after the closing quote, characters), or (-1, 0) if it is not a
    plain string (an escape, a control character or bad UTF-8: left to msgspec)."""
    p += 1
    chars = 0
    while p < end:
        b = buf[p]
        if b == 34:
            return p + 1, chars
        if b == 92 or b < 32:
            return -1, 0
        if b < 0x80:
            p += 1
        else:  # well-formed UTF-8 only (no overlongs, no surrogates, at most U+10FFFF)
            if 0xC2 <= b <= 0xDF:
                n, lo, hi = 1, 0x80, 0xBF
            elif b == 0xE0:
                n, lo, hi = 2, 0xA0, 0xBF
            elif 0xE1 <= b <= 0xEC or b == 0xEE or b == 0xEF:
                n, lo, hi = 2, 0x80, 0xBF
            elif b == 0xED:
                n, lo, hi = 2, 0x80, 0x9F
            elif b == 0xF0:
                n, lo, hi = 3, 0x90, 0xBF
            elif 0xF1 <= b <= 0xF3:
                n, lo, hi = 3, 0x80, 0xBF
            elif b == 0xF4:
                n, lo, hi = 3, 0x80, 0x8F
            else:
                return -1, 0
            if p + n >= end:
                return -1, 0
            c = buf[p + 1]
            if c < lo or c > hi:
                return -1, 0
            for k in range(2, n + 1):
                c = buf[p + k]
                if c < 0x80 or c > 0xBF:
                    return -1, 0
            p += n + 1
        chars += 1
    return -1, 0


@lazy_njit(cache=True, nogil=True)
def _exact_float(integer: bool, neg: bool, m: Any, exp: int) -> tuple[bool, float]:  # pragma: no cover - compiled
    """The double msgspec decodes for this number, if it can be had exactly (Clinger's fast path)."""
    if m > np.uint64(_EXACT) or exp < -22 or exp > 22:
        return False, 0.0
    x = np.float64(m)
    if exp > 0:
        x = x * POW10[exp]
    elif exp < 0:
        x = x / POW10[-exp]
    if neg and not (integer and m == 0):  # "-0" is the integer 0, which msgspec makes 0.0; "-0.0" stays -0.0
        x = -x
    return True, x


@lazy_njit(cache=True, nogil=True)
def scan(
    buf: np.ndarray,
    row0: int,
    names: np.ndarray,
    name_at: np.ndarray,
    kinds: np.ndarray,
    min_chars: np.ndarray,
    max_chars: np.ndarray,
    required: np.ndarray,
    values: np.ndarray,
    valid: np.ndarray,
    lengths: np.ndarray,
) -> Any:  # pragma: no cover - compiled
    """Validate and decode the records of ``buf`` into rows ``row0...`` of the columns.

    Fields, outputs and the return value as for :func:`tidegauge.connectors._unpack.unpack` (string
    positions point into ``buf``); ``min_chars``/``max_chars`` bound a string field's length (-1: none)
    and ``required`` fields may be neither missing nor null. Returns -1 if a record is outside the subset
    this reader takes (see the module docstring), including every record msgspec would reject.
    """
    nf = kinds.size
    cap = valid.shape[1]
    end = buf.size
    seen = np.zeros(nf, np.bool_)
    guess = np.full(_POSITIONS, -1, np.int64)
    bits = np.empty(1, np.float64)  # a double's bits, as int64, without an allocation per value
    as_int = bits.view(np.int64)
    row = row0
    p = 0
    while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
        p += 1
    while p < end:
        if buf[p] != 123 or row >= cap:  # '{'
            return -1
        seen[:] = False
        position = 0
        p = p + 1
        while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
            p += 1
        if p < end and buf[p] == 125:  # '}': empty object
            p += 1
        else:
            while True:
                if p >= end or buf[p] != 34:
                    return -1
                k0 = p + 1
                q = k0
                while q < end and 32 <= buf[q] < 0x80 and buf[q] != 34 and buf[q] != 92:  # plain ASCII
                    q += 1
                if q < end and buf[q] == 34:
                    q += 1
                else:
                    q, _ = _string(buf, p, end)
                    if q < 0:
                        return -1
                klen = q - 1 - k0
                # records of one sender list their keys in the same order: try the field the key at this
                # position was in the previous record first, then all of them
                field = -1
                g = guess[min(position, _POSITIONS - 1)]
                for t in range(-1, nf):
                    f = g if t < 0 else t
                    if f < 0 or (t >= 0 and f == g):
                        continue
                    a = name_at[f]
                    if name_at[f + 1] - a == klen:
                        same = True
                        for k in range(klen):
                            if buf[k0 + k] != names[a + k]:
                                same = False
                                break
                        if same:
                            field = f
                            break
                guess[min(position, _POSITIONS - 1)] = field
                position += 1
                p = q
                while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
                    p += 1
                if p >= end or buf[p] != 58:  # ':'
                    return -1
                p = p + 1
                while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
                    p += 1
                if p >= end:
                    return -1
                b = buf[p]
                if field >= 0:
                    if seen[field]:  # a repeated key: msgspec keeps the last, leave that to it
                        return -1
                    seen[field] = True
                kind = kinds[field] if field >= 0 else -1
                if b == 34:  # a string
                    q = p + 1
                    while q < end and 32 <= buf[q] < 0x80 and buf[q] != 34 and buf[q] != 92:  # plain ASCII
                        q += 1
                    if q < end and buf[q] == 34:
                        chars = q - p - 1
                        q += 1
                    else:
                        q, chars = _string(buf, p, end)
                        if q < 0:
                            return -1
                    if kind == STR:
                        if chars < min_chars[field] or (max_chars[field] >= 0 and chars > max_chars[field]):
                            return -1
                        values[field, row] = p + 1
                        lengths[field, row] = q - p - 2
                        valid[field, row] = True
                    elif kind == TIME:
                        good, us = parse_at(buf, p + 1, q - 1)
                        if not good:
                            return -1
                        values[field, row] = us
                        valid[field, row] = True
                    elif kind >= 0:
                        return -1
                    p = q
                elif b == 110 or b == 116 or b == 102:  # null, true, false
                    if b == 110 and p + 4 <= end and buf[p + 1] == 117 and buf[p + 2] == 108 and buf[p + 3] == 108:
                        if kind >= 0:
                            if required[field]:
                                return -1
                            valid[field, row] = False
                        p += 4
                    elif b == 116 and p + 4 <= end and buf[p + 1] == 114 and buf[p + 2] == 117 and buf[p + 3] == 101:
                        if kind >= 0:
                            if kind != BOOL:
                                return -1
                            values[field, row] = 1
                            valid[field, row] = True
                        p += 4
                    elif (b == 102 and p + 5 <= end and buf[p + 1] == 97 and buf[p + 2] == 108
                          and buf[p + 3] == 115 and buf[p + 4] == 101):
                        if kind >= 0:
                            if kind != BOOL:
                                return -1
                            values[field, row] = 0
                            valid[field, row] = True
                        p += 5
                    else:
                        return -1
                elif b == 45 or 48 <= b <= 57:  # a number
                    # the JSON number grammar, inline (a call passing the array costs more than the parse)
                    q = p
                    neg = buf[q] == 45
                    if neg:
                        q += 1
                    if q >= end or buf[q] < 48 or buf[q] > 57:
                        return -1
                    m = np.uint64(0)
                    digits = 0  # significant digits kept in m (at most 19: then it is "big")
                    exp = 0
                    big = False
                    if buf[q] == 48:
                        q += 1
                    else:
                        while q < end and 48 <= buf[q] <= 57:
                            if digits < 19:
                                m = m * np.uint64(10) + np.uint64(buf[q] - 48)
                                digits += 1
                            else:
                                big = True
                            q += 1
                    integer = True
                    if q < end and buf[q] == 46:  # '.'
                        integer = False
                        q += 1
                        if q >= end or buf[q] < 48 or buf[q] > 57:
                            return -1
                        while q < end and 48 <= buf[q] <= 57:
                            if m == 0 and buf[q] == 48:
                                exp -= 1  # leading zeros of a fraction are not significant
                            elif digits < 19:
                                m = m * np.uint64(10) + np.uint64(buf[q] - 48)
                                digits += 1
                                exp -= 1
                            else:
                                big = True
                            q += 1
                    if q < end and (buf[q] == 101 or buf[q] == 69):  # 'e', 'E'
                        integer = False
                        q += 1
                        eneg = False
                        if q < end and (buf[q] == 43 or buf[q] == 45):
                            eneg = buf[q] == 45
                            q += 1
                        if q >= end or buf[q] < 48 or buf[q] > 57:
                            return -1
                        e = 0
                        while q < end and 48 <= buf[q] <= 57:
                            if e < 100000:
                                e = e * 10 + (buf[q] - 48)
                            q += 1
                        exp += -e if eneg else e
                    if big and kind >= 0:
                        return -1
                    if kind == INT:
                        if not integer or m > np.uint64(0x7FFFFFFFFFFFFFFF):
                            return -1
                        v = np.int64(m)
                        values[field, row] = -v if neg else v
                        valid[field, row] = True
                    elif kind == FLOAT or kind == TIME:
                        ok, x = _exact_float(integer, neg, m, exp)
                        if not ok:
                            return -1
                        if kind == FLOAT:
                            bits[0] = x
                            values[field, row] = as_int[0]
                        else:
                            if x < -_EPOCH_LIMIT or x > _EPOCH_LIMIT:
                                return -1
                            values[field, row] = np.int64(np.rint(x * 1_000_000.0))
                        valid[field, row] = True
                    elif kind >= 0:
                        return -1
                    p = q
                else:  # a nested object or array, or not JSON
                    return -1
                while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
                    p += 1
                if p >= end:
                    return -1
                if buf[p] == 44:  # ','
                    p = p + 1
                    while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
                        p += 1
                    continue
                if buf[p] == 125:  # '}'
                    p += 1
                    break
                return -1
        for f in range(nf):
            if not seen[f]:
                if required[f]:
                    return -1
                valid[f, row] = False
        row += 1
        while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
            p += 1
    return row - row0

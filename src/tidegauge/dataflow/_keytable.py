"""A compiled hash table from string keys to dense ids (first appearance order), for :class:`KeyDictionary`.

Every batch's key column is turned into ids at the source. The polars ways to do that each pay a cost per
batch that grows with the number of known keys: the ``Enum`` cast rebuilds its lookup for each cast
(0.75-0.9 ms a batch at 10,000 known keys, whatever the batch size), ``pyarrow.compute.index_in`` hashes
its value set on every call (0.3 ms), a join sorts or hashes both sides. This table stays built between
batches: a lookup is one FNV-1a hash and one comparison of the key's bytes (about 15 ns a key of a
few bytes), and a new key is appended in the same pass, so ids never depend on how keys were batched.

The keys are taken as an Arrow ``large_string`` array's buffers (offsets and UTF-8 bytes: what
``polars.Series.to_arrow`` gives); the table keeps its own copy of each key's bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tidegauge._jit import lazy_njit

__all__ = ["KeyTable"]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@lazy_njit(cache=True, nogil=True)
def _hash(data: np.ndarray, a: int, b: int) -> Any:  # pragma: no cover - compiled
    h = _FNV_OFFSET
    for i in range(a, b):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    return h


@lazy_njit(cache=True, nogil=True)
def _encode(
    data: np.ndarray, offsets: np.ndarray, n: int,
    slots: np.ndarray, hashes: np.ndarray, kdata: np.ndarray, koff: np.ndarray, count: int, out: np.ndarray,
) -> Any:  # pragma: no cover - compiled
    """Ids of the ``n`` keys ``data[offsets[i]:offsets[i+1]]`` into ``out``; a key not in the table gets id
    ``count`` (then ``count + 1``...) and is appended to it. Returns the new count. The caller makes room
    first: ``slots`` at least twice ``count + n``, ``koff`` and ``kdata`` for ``n`` more keys of ``data``."""
    mask = np.uint64(slots.size - 1)
    for i in range(n):
        a = offsets[i]
        b = offsets[i + 1]
        h = _hash(data, a, b)
        s = h & mask
        while True:
            k = slots[s]
            if k < 0:  # a new key: appended
                slots[s] = count
                hashes[count] = h
                start = koff[count]
                for j in range(b - a):
                    kdata[start + j] = data[a + j]
                koff[count + 1] = start + (b - a)
                out[i] = count
                count += 1
                break
            if hashes[k] == h and koff[k + 1] - koff[k] == b - a:
                c = koff[k]
                same = True
                for j in range(b - a):
                    if kdata[c + j] != data[a + j]:
                        same = False
                        break
                if same:
                    out[i] = k
                    break
            s = (s + np.uint64(1)) & mask
    return count


@lazy_njit(cache=True, nogil=True)
def _rehash(slots: np.ndarray, hashes: np.ndarray, count: int) -> None:  # pragma: no cover - compiled
    mask = np.uint64(slots.size - 1)
    slots[:] = -1
    for k in range(count):
        s = hashes[k] & mask
        while slots[s] >= 0:
            s = (s + np.uint64(1)) & mask
        slots[s] = k


class KeyTable:
    """String keys -> ``uint32`` ids in first appearance order.

    >>> t = KeyTable()
    >>> import pyarrow as pa
    >>> t.encode(pa.array(["b", "a", "b"], pa.large_string())).tolist()
    [0, 1, 0]
    >>> t.keys(0, len(t))
    ['b', 'a']
    """

    def __init__(self) -> None:
        self.count = 0
        self._slots = np.full(64, -1, dtype=np.int64)
        self._hashes = np.zeros(32, dtype=np.uint64)
        self._koff = np.zeros(33, dtype=np.int64)
        self._kdata = np.zeros(256, dtype=np.uint8)

    def __len__(self) -> int:
        return self.count

    def encode(self, array: Any) -> np.ndarray:
        """Ids of a ``pyarrow.LargeStringArray`` without nulls (new keys are added)."""
        n = len(array)
        _, offsets_buf, data_buf = array.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset:array.offset + n + 1]
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        self._reserve(n, int(offsets[-1] - offsets[0]) if n else 0)
        out = np.empty(n, dtype=np.uint32)
        self.count = int(_encode(data, offsets, n, self._slots, self._hashes, self._kdata, self._koff,
                                 self.count, out))
        return out

    def keys(self, start: int, stop: int) -> list[str]:
        """The keys of ids ``start...stop-1``."""
        off, data = self._koff, self._kdata
        return [bytes(data[off[k]:off[k + 1]]).decode("utf-8") for k in range(start, stop)]

    def _reserve(self, n: int, nbytes: int) -> None:
        need = self.count + n
        if need + 1 > self._koff.size:
            size = max(2 * self._koff.size, need + 1)
            self._koff = np.concatenate([self._koff, np.zeros(size - self._koff.size, np.int64)])
            self._hashes = np.concatenate([self._hashes, np.zeros(size - 1 - self._hashes.size, np.uint64)])
        used = int(self._koff[self.count])
        if used + nbytes > self._kdata.size:
            self._kdata = np.concatenate([self._kdata, np.zeros(max(self._kdata.size, used + nbytes), np.uint8)])
        if 2 * need > self._slots.size:
            size = self._slots.size
            while 2 * need > size:
                size *= 2
            self._slots = np.empty(size, dtype=np.int64)
            _rehash(self._slots, self._hashes, self.count)

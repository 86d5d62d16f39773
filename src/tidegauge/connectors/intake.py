"""The durable intake log behind HTTP ingest: segmented, checksummed, fsync group-committed.

The server appends each request's records (:meth:`IntakeLog.append`) and answers 2xx once the append is
durable; :class:`~tidegauge.connectors.http.HttpIngestSource` reads the log from its checkpointed position.

Format: segment files ``<first offset:020d>.seg``; each frame is ``<u32 length><u32 crc32>`` then a body
of ``length`` bytes: ``<u8 kind>`` and the payload (the checksum covers the body). Kind 1: NDJSON of
accepted records (the request's bytes as they came, once validated); kind 2: msgpack list of
``[reason, payload]`` rejects. A position is a global byte offset over all segments. A torn tail (partial
frame or bad checksum: never acknowledged) is cut off when the log is opened.

Fsync policy (``durability``) and the intake threads
----------------------------------------------------
Appends are done by threads of the log's own (started at the first append), not on the event loop: a
request queues a job and awaits its future. Two *preparing* threads run the jobs' ``prepare`` (the server
validates the body there: :meth:`IntakeLog.append_prepared`), two requests at a time; one *writer* thread
takes every prepared entry, writes them in the order the jobs were queued (one gathered ``writev`` of the
frame headers and the request bytes, not copied), then, with ``"fsync"``, makes the whole group durable
with one ``fsync`` (group commit across requests: under load one fsync per group, idle one per request)
while the preparing threads go on with the next requests, and answers the group with one callback per
event loop. An append returns once its bytes are on stable storage (``"fsync"``) or written to the
operating system (``"os"``: survives a crash of the process, not of the machine). The event loop's share
of an append is queueing the job and setting its future: no thread-pool hop, no asyncio lock.

Hand-off in memory
------------------
The reader (the flow) does not read back what the server has just written: each append also keeps its
frames (the same ``bytes`` objects, with their offsets, record counts and, if the appender gave one, a
``decoded`` form of the records that is never written) in a bounded in-memory queue, and
:meth:`IntakeLog.read_frames` takes them from there once they are durable. The file is read only when
the queue does not start at the reader's position: a replay after a restart, a reader that fell more
than ``cache_bytes`` behind, or a second reader. Both paths hand out the same payloads; the HTTP source
decodes a payload read from the file the way the server did (:mod:`tidegauge.connectors._records`), so
what the flow sees does not depend on which path served it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import mmap
import os
import queue
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgspec

from tidegauge.checkpoint._fs import fsync_dir
from tidegauge.errors import ConnectorError

__all__ = ["ACCEPTED", "REJECTED", "Entry", "Frame", "IntakeLog"]

logger = logging.getLogger(__name__)

R = TypeVar("R")

_HEADER = struct.Struct("<II")  # length of the body (kind byte + payload), crc32 of the body
ACCEPTED, REJECTED = 1, 2
_KINDS = {ACCEPTED: bytes([ACCEPTED]), REJECTED: bytes([REJECTED])}
_SEGMENT_BYTES = 64 * 1024 * 1024
"""Segment size before rolling over: big enough to make few files, small enough to free disk soon after
a checkpoint (only whole segments are deleted)."""
_PREPARERS = 2
"""Threads per log running the appenders' ``prepare`` (the server's validation), one request each at a
time: two requests are validated at once (the compiled reader runs without the GIL, one per core here),
and one waiting for the GIL does not hold up the others; a single thread doing it all, then writing and
syncing, made every request wait for the whole group's validation and GIL hand-overs (~17 ms an append
at full load, against ~8 ms with the thread pool before it)."""
_IOV_MAX = 512  # buffers per writev call: below Linux's IOV_MAX of 1024, with room for the headers
_CACHE_BYTES = 64 * 1024 * 1024
"""Bytes of recent frames (payloads and decoded forms) kept in memory for the reader: above what the
server's default backpressure limit lets pile up (``max_lag_bytes``, 16 MiB of log: about 40 MiB with the
HTTP source's decoded columns), so that a flow the server still accepts records for reads them all from
memory; the oldest beyond it are dropped (and read from the file when needed)."""


class Entry(NamedTuple):
    """One request's records to append (see :meth:`IntakeLog.append`)."""

    accepted: bytes
    """NDJSON of the accepted records"""
    n_accepted: int
    rejects: list[tuple[str, str]]
    """``(reason, payload)`` of each rejected record"""
    decoded: object | None = None
    """another form of the accepted records, for the reader in memory (never written)"""


class _Framed(NamedTuple):
    """An :class:`Entry` as frames and the pieces to write (header, payload, ...)."""

    frames: list[Frame]
    parts: list[bytes]
    size: int
    records: int

    @classmethod
    def of(cls, entry: Entry) -> _Framed:
        frames: list[Frame] = []
        if entry.n_accepted:
            frames.append(Frame(ACCEPTED, entry.accepted, entry.n_accepted, entry.decoded))
        if entry.rejects:
            frames.append(Frame(REJECTED, msgspec.msgpack.encode(entry.rejects), len(entry.rejects), None))
        parts = [piece for fr in frames for piece in _frame(fr.kind, fr.payload)]
        return cls(frames, parts, sum(len(p) for p in parts), entry.n_accepted + len(entry.rejects))


class Frame(NamedTuple):
    """A frame as :meth:`IntakeLog.read_frames` hands it out."""

    kind: int
    """``ACCEPTED`` (``payload``: NDJSON) or ``REJECTED`` (``payload``: msgpack ``[[reason, payload], ...]``)"""
    payload: bytes
    records: int | None
    """records in the frame; ``None`` when read from the file (not counted)"""
    decoded: object | None
    """the appender's ``decoded`` form of the accepted records (only from memory, never written)"""


class IntakeLog:
    """An append-only, segmented, checksummed log of ingest requests, with group commit.

    Parameters
    ----------
    dir:
        Directory of the segment files (created if missing).
    durability:
        ``"fsync"`` or ``"os"``: see the module docstring.
    segment_bytes:
        Size at which a new segment file is started.
    cache_bytes:
        Bytes of recently appended frames kept in memory for the reader (see *Hand-off in memory*);
        0 reads everything back from the file.
    """

    def __init__(self, dir: str | Path, *, durability: str = "fsync", segment_bytes: int = _SEGMENT_BYTES,
                 cache_bytes: int = _CACHE_BYTES) -> None:
        if durability not in ("fsync", "os"):
            raise ValueError(f"durability={durability!r}: use 'fsync' or 'os'")
        if segment_bytes < 1024:
            raise ValueError(f"segment_bytes={segment_bytes}: use at least 1024")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes={cache_bytes}: use 0 (no cache) or more")
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.durability = durability
        self.segment_bytes = segment_bytes
        self._segments: list[int] = sorted(int(p.stem) for p in self.dir.glob("*.seg"))
        self.end = self._recover()
        self.durable = self.end
        self.start = self._segments[0] if self._segments else self.end
        self._fd = self._open_tail()
        # (frame end offset, append time), for the ingest-to-output latency; bounded so that nobody
        # reading it cannot grow memory (older entries are simply not measured)
        self._times: deque[tuple[int, float]] = deque(maxlen=100_000)
        self.records_appended = 0
        self.syncs = 0
        """fsyncs done (with group commit, fewer than appends under load)"""
        # the segment list and the tail file are shared by the server (appending) and the flow (reading,
        # truncating), which may run in another thread (tidegauge.server.flowthread)
        self._lock = threading.Lock()
        self._closing = False
        # appends: (sequence number, prepare, loop, future) jobs for the preparing threads (started at the
        # first append)
        self._jobs: queue.SimpleQueue[tuple[int, Callable[[], tuple[Entry, Any]], asyncio.AbstractEventLoop,
                                            asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._writer: list[threading.Thread] | None = None
        # prepared jobs (sequence number, ok, (entry, value) or the error, loop, future) for the writer
        self._prepared: queue.SimpleQueue[tuple[int, bool, Any, asyncio.AbstractEventLoop,
                                                asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._seq = itertools.count()
        self._waiters: list[tuple[asyncio.AbstractEventLoop | None, asyncio.Event]] = []
        # recent frames as (start offset, end offset, frame), contiguous, for the reader (under _lock)
        self.cache_bytes = cache_bytes
        self._recent: deque[tuple[int, int, Frame]] = deque()
        self._recent_bytes = 0
        self.frames_from_memory = 0
        self.frames_from_file = 0
        """frames handed out by :meth:`read` from the in-memory queue and from the file"""

    # -- opening -----------------------------------------------------------------------------------
    def _recover(self) -> int:
        if not self._segments:
            return 0
        last = self._segments[-1]
        path = self._path(last)
        data = path.read_bytes()
        pos = 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            body = data[pos + _HEADER.size:pos + _HEADER.size + length]
            if length < 1 or len(body) < length or zlib.crc32(body) != crc:
                break
            pos += _HEADER.size + length
        if pos != len(data):
            logger.warning("intake log %s: cutting a torn tail of %d bytes (never acknowledged)", path, len(data) - pos)
            with open(path, "r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())
        return last + pos

    def _path(self, first: int) -> Path:
        return self.dir / f"{first:020d}.seg"

    def _open_tail(self) -> int:
        if not self._segments:
            self._segments.append(self.end)
        fd = os.open(self._path(self._segments[-1]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fsync_dir(self.dir)
        return fd

    # -- appending ---------------------------------------------------------------------------------
    async def append(self, accepted: bytes, n_accepted: int, rejects: list[tuple[str, str]], *,
                     decoded: object | None = None) -> int:
        """Append one request (NDJSON of accepted records, rejects as ``(reason, payload)``); durable on return.

        ``decoded``, if given, is another form of the accepted records that the reader takes instead of
        parsing the NDJSON, as long as it reads from memory (see *Hand-off in memory*); it is not written,
        and counts in ``cache_bytes`` by its ``len()`` (bytes) or its ``nbytes``.
        Returns the log offset after the request. Raises ``OSError`` if it could not be written (nothing
        of it is then in the log).
        """
        entry = Entry(accepted, n_accepted, rejects, decoded)
        end, _ = await self.append_prepared(lambda: (entry, None), here=True)
        return end

    async def append_prepared(self, prepare: Callable[[], tuple[Entry, R]], *, here: bool = False) -> tuple[int, R]:
        """Run ``prepare()`` in one of the log's threads and append the :class:`Entry` it returns; durable
        on return. Returns the log offset after it and ``prepare``'s other value.

        See *Fsync policy and the intake threads*: ``prepare`` runs in a preparing thread (two at once),
        the writer thread appends in the order of the calls and fsyncs a group at once; the caller's event
        loop only queues the job and takes the answer. ``here=True`` runs ``prepare`` (and the framing) in
        the calling thread instead, for small jobs: a thread hop costs more than it frees, and adds a
        wake-up to the request's latency. Whatever ``prepare`` raises is raised here (nothing is then
        written); ``OSError`` if the entry could not be written.
        """
        if self._closing:
            raise OSError(f"intake log {self.dir} is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, R]] = loop.create_future()
        if self._writer is None:
            self._start_writer()
        if here:
            entry, extra = prepare()
            framed = _Framed.of(entry)  # before taking a number: the writer waits for every number in turn
            self._prepared.put((next(self._seq), True, (framed, extra), loop, fut))
        else:
            self._jobs.put((next(self._seq), prepare, loop, fut))
        return await fut

    def _start_writer(self) -> None:
        with self._lock:
            if self._writer is None:
                name = f"intake-{self.dir.name}"
                threads = [threading.Thread(target=self._prepare_loop, name=f"{name}-prepare-{i}", daemon=True)
                           for i in range(_PREPARERS)]
                threads.append(threading.Thread(target=self._write_loop, name=f"{name}-writer", daemon=True))
                for t in threads:
                    t.start()
                self._writer = threads

    def _prepare_loop(self) -> None:
        """A preparing thread: runs each job's ``prepare`` (the server's validation) and hands the entry to
        the writer thread, which writes in the order the jobs were queued."""
        jobs, prepared = self._jobs, self._prepared
        while True:
            job = jobs.get()  # blocks without the GIL
            if job is None:  # close()
                return
            seq, prepare, loop, fut = job
            try:
                entry, extra = prepare()
                # framed here too (the checksum of the whole body, ~0.1 ms a 150 kB body), so that the
                # writer only writes: fewer GIL hand-overs on the one thread every request goes through
                prepared.put((seq, True, (_Framed.of(entry), extra), loop, fut))
            except BaseException as exc:  # handed to the waiting request (through the writer, in order)
                prepared.put((seq, False, exc, loop, fut))

    def _write_loop(self) -> None:
        """The writer thread: takes every prepared entry, writes them in the order they were queued, then,
        with ``"fsync"``, makes them all durable with one ``fsync`` (group commit: the preparing threads
        go on with the next requests meanwhile), and answers them."""
        prepared = self._prepared
        waiting: dict[int, tuple[int, bool, Any, asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        next_seq = 0
        while True:
            group = [prepared.get()]  # blocks without the GIL
            while True:
                try:
                    group.append(prepared.get_nowait())
                except queue.Empty:
                    break
            stop = False
            for item in group:
                if item is None:
                    stop = True
                else:
                    waiting[item[0]] = item
            ready = []
            while next_seq in waiting:
                ready.append(waiting.pop(next_seq))
                next_seq += 1
            if stop:  # close(): what is left (behind a job that was never prepared) in queued order
                ready += [waiting.pop(k) for k in sorted(waiting)]
            done: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], bool, Any]] = []
            batch: list[tuple[_Framed, Any, asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
            for _seq, ok, value, loop, fut in ready:
                if ok:
                    batch.append((value[0], value[1], loop, fut))
                else:
                    done.append((loop, fut, False, value))
            wrote = False
            if batch:
                try:
                    ends = self._write([framed for framed, _, _, _ in batch])
                except OSError as exc:
                    done += [(loop, fut, False, exc) for _, _, loop, fut in batch]
                else:
                    wrote = True
                    done += [(loop, fut, True, (end, extra))
                             for end, (_, extra, loop, fut) in zip(ends, batch, strict=True)]
            if wrote:
                try:
                    if self.durability == "fsync":
                        os.fsync(self._fd)
                        self.syncs += 1
                    with self._lock:
                        self.durable = max(self.durable, self.end)
                except OSError as exc:
                    # written but not known durable: refused (a later fsync may still cover them; the
                    # client retries, the flow may see them twice: at-least-once for these only)
                    done = [(lp, f, False, exc) if ok else (lp, f, ok, v) for lp, f, ok, v in done]
                self._notify()
            _answer(done)
            if stop:
                return

    def _write(self, entries: list[_Framed]) -> list[int]:
        """Write framed entries in one gathered ``writev`` (the writer thread); the log offset after each.
        If it fails, none of them is in the log."""
        with self._lock:
            if self.end - self._segments[-1] >= self.segment_bytes:
                self._roll()
            parts = [piece for e in entries for piece in e.parts]
            size = sum(e.size for e in entries)
            if size:
                self._writev(parts, size)
            ends: list[int] = []
            now = time.perf_counter()
            for e in entries:
                start = self.end
                self.end += e.size
                ends.append(self.end)
                if not e.size:
                    continue
                if self.cache_bytes:
                    self._remember(start, e.frames)
                self.records_appended += e.records
                self._times.append((self.end, now))
        return ends

    def _remember(self, start: int, frames: list[Frame]) -> None:
        """Queue just-written frames for the reader (under ``_lock``), dropping the oldest beyond the budget."""
        recent = self._recent
        if recent and recent[-1][1] != start:  # not contiguous (cannot happen; be safe): start afresh
            recent.clear()
            self._recent_bytes = 0
        for fr in frames:
            end = start + _HEADER.size + 1 + len(fr.payload)
            recent.append((start, end, fr))
            self._recent_bytes += _held(fr)
            start = end
        while self._recent_bytes > self.cache_bytes and recent:
            self._recent_bytes -= _held(recent.popleft()[2])

    def _roll(self) -> None:
        """Start a new segment (the writer thread, under ``_lock``: no write or fsync of the old file is in flight)."""
        old = self._fd
        if self.durability == "fsync":
            os.fsync(old)  # the old segment's tail, before its file is left
        self._segments.append(self.end)
        self._fd = self._open_tail()
        os.close(old)

    def _writev(self, parts: list[bytes], size: int) -> None:
        written = 0
        try:
            for i in range(0, len(parts), _IOV_MAX):
                chunk = parts[i:i + _IOV_MAX]
                n = os.writev(self._fd, chunk)
                written += n
                if n != sum(len(p) for p in chunk):
                    raise OSError(f"intake log {self.dir}: short write ({written} of {size} bytes)")
        except OSError:
            # cut what was partly written (disk full...): later frames must not follow a torn one
            os.ftruncate(self._fd, self.end - self._segments[-1])
            raise

    def _notify(self) -> None:
        """Wake the readers (from the writer thread), once per group of appends."""
        for loop, ev in list(self._waiters):
            if ev.is_set():
                # not consumed yet: the reader has not gone back to waiting (it clears the event, then
                # checks ``durable`` again before it waits). Skipping spares a busy flow thread a wake-up
                # (and the GIL hand-over) per group
                continue
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    loop.call_soon_threadsafe(ev.set)

    def add_waiter(self, event: asyncio.Event) -> None:
        """Have ``event`` set (in the event loop running now) whenever new records become durable.

        The event is set only if it is clear: a reader clears it, then checks :attr:`durable`, then waits.
        """
        self._waiters.append((asyncio.get_running_loop(), event))

    def remove_waiter(self, event: asyncio.Event) -> None:
        self._waiters = [(lp, ev) for lp, ev in self._waiters if ev is not event]

    def appended_at(self, offset: int) -> float | None:
        """``perf_counter()`` time of the first frame ending after ``offset`` still remembered (for latency)."""
        for end, t in list(self._times):
            if end > offset:
                return t
        return None

    def pop_times(self, upto: int) -> list[float]:
        """Forget (and return) the append times of frames ending at or before ``upto``."""
        out: list[float] = []
        while self._times and self._times[0][0] <= upto:
            out.append(self._times.popleft()[1])
        return out

    # -- reading and truncation --------------------------------------------------------------------
    def read(self, offset: int, max_records: int) -> tuple[list[tuple[int, bytes]], int]:
        """Frames ``(kind, payload)`` from ``offset`` up to the durable end (about ``max_records`` records)."""
        frames, offset = self.read_frames(offset, max_records)
        return [(fr.kind, fr.payload) for fr in frames], offset

    def read_frames(self, offset: int, max_records: int) -> tuple[list[Frame], int]:
        """:class:`Frame` s from ``offset`` up to the durable end (about ``max_records`` records), and the
        offset after them: from memory if the in-memory queue starts at ``offset``, else from the file."""
        if offset < self.start:
            raise ConnectorError(
                f"intake log {self.dir}: position {offset} was deleted (the log starts at {self.start}); "
                "the checkpoint and the log do not belong together"
            )
        with self._lock:
            recent = self._recent
            while recent and recent[0][1] <= offset:  # handed out before: the reader is past it
                self._recent_bytes -= _held(recent.popleft()[2])
            if recent and recent[0][0] == offset:
                return self._take_recent(offset, max_records, self.durable)
            return self._read(offset, max_records, self.durable, list(self._segments))

    def _take_recent(self, offset: int, max_records: int, durable: int) -> tuple[list[Frame], int]:
        frames: list[Frame] = []
        budget = max_records
        for _start, end, fr in self._recent:
            if end > durable or budget <= 0:
                break
            frames.append(fr)
            budget -= fr.records or 1
            offset = end
        self.frames_from_memory += len(frames)
        return frames, offset

    def _read(self, offset: int, max_records: int, durable: int,
              segments: list[int]) -> tuple[list[Frame], int]:
        frames: list[Frame] = []
        idx = max(0, _bisect(segments, offset))
        budget = max_records
        while offset < durable and budget > 0 and idx < len(segments):
            first = segments[idx]
            seg_end = segments[idx + 1] if idx + 1 < len(segments) else durable
            stop = min(seg_end, durable) - first  # bytes of this segment that may be read
            start = pos = offset - first
            # mapped, not read: a flow far behind would otherwise read the whole rest of the segment
            # (up to segment_bytes) at every call to use a few frames of it
            with open(self._path(first), "rb") as f, mmap.mmap(f.fileno(), stop, access=mmap.ACCESS_READ) as mm:
                while pos + _HEADER.size <= stop and budget > 0:
                    length, _crc = _HEADER.unpack_from(mm, pos)
                    kind = mm[pos + _HEADER.size]
                    payload = mm[pos + _HEADER.size + 1:pos + _HEADER.size + length]
                    frames.append(Frame(kind, payload, None, None))
                    budget -= payload.count(b"\n") + 1 if kind == ACCEPTED else 1
                    pos += _HEADER.size + length
            offset += pos - start
            if offset >= seg_end:
                idx += 1
        self.frames_from_file += len(frames)
        return frames, offset

    def truncate_before(self, offset: int) -> None:
        """Delete whole segments that end at or before ``offset`` (never the one being written)."""
        with self._lock:
            while len(self._segments) > 1 and self._segments[1] <= offset:
                self._path(self._segments.pop(0)).unlink(missing_ok=True)
            self.start = self._segments[0]

    def close(self) -> None:
        """Close the tail file (appends after this raise ``OSError``; those queued before it are written)."""
        if self._closing:
            return
        with self._lock:
            threads, self._writer = self._writer or [], []  # no thread starts after this
        preparers = [t for t in threads if "-prepare-" in t.name]
        # the jobs queued so far are prepared, written (and synced) before the threads stop
        for _ in preparers:
            self._jobs.put(None)
        for t in preparers:
            t.join()
        self._closing = True
        self._prepared.put(None)
        for t in threads:
            t.join()
        leftover: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], bool, Any]] = []
        while True:  # queued after the preparing threads stopped: refused
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                leftover.append((job[2], job[3], False, OSError(f"intake log {self.dir} is closed")))
        _answer(leftover)
        os.close(self._fd)
        with self._lock:
            self._recent.clear()
            self._recent_bytes = 0


def _answer(done: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], bool, Any]]) -> None:
    """Settle the waiting requests' futures: one callback per event loop, not one per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for loop, fut, ok, value in done:
        by_loop.setdefault(loop, []).append((fut, ok, value))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop was closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in items:
        if fut.done():  # cancelled (the client went away): the append stands all the same
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _held(fr: Frame) -> int:
    """Bytes an in-memory frame holds (what ``cache_bytes`` bounds)."""
    d = fr.decoded
    return len(fr.payload) + (len(d) if isinstance(d, bytes) else int(getattr(d, "nbytes", 0)))


def _frame(kind: int, payload: bytes) -> list[bytes]:
    """A frame as the pieces to write: header with the kind byte, then the payload untouched."""
    k = _KINDS[kind]
    return [_HEADER.pack(len(payload) + 1, zlib.crc32(payload, zlib.crc32(k))) + k, payload]


def _bisect(segments: list[int], offset: int) -> int:
    lo, hi = 0, len(segments)
    while lo < hi:
        mid = (lo + hi) // 2
        if segments[mid] <= offset:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1

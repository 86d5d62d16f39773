"""The agent's durable outbox: records waiting to be forwarded upstream, in SQLite (WAL mode).

One table per stream, of *blocks*: rows ``(first, last, at_us, payload)`` holding the records ``first..last``
of one append as NDJSON, keyed by ``first`` (appends go to the end of one b-tree). A row per block rather
than per record keeps SQLite's cost per record (cells, row decoding, deletes) small; every operation still
works on records, splitting a block where a range ends inside it (see :mod:`tidegauge.edge._blocks`).
A record's life:

1. written by the flow's :class:`~tidegauge.edge.sink.OutboxSink` with the next sequence number of its
   stream (*pending*: a restart from the previous checkpoint deletes it, the flow writes it again);
2. *visible* once the checkpoint covering it is committed (``commit_seq``): only visible records are sent;
3. deleted once the upstream acknowledged it (``ack``), or dropped by the stream's limits.

The records of a stream are always one contiguous range of sequence numbers: acknowledgements, the
``drop_oldest`` policy and the age limit all delete from the oldest end, and ``reject_new`` refuses from
the newest end before numbers are given. So the upstream sees a gap only where the outbox dropped records,
and each drop is counted by reason (``overflow``, ``rejected``, ``expired``) in the ``drops`` table.

Records are single-line JSON objects (``append`` refuses one holding a raw newline).

Durability (``fsync``): ``"checkpoint"`` (default) fsyncs the write-ahead log at each checkpoint's
pre-commit, so a checkpointed record survives a power loss; ``"always"`` fsyncs every write; ``"os"``
never fsyncs (a process crash loses nothing, a power loss may).

An outbox written by an older tidegauge (one row per record, tables ``out_<stream>``) is converted to
blocks when opened.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec

from tidegauge._time import Clock, SystemClock, parse_duration
from tidegauge.edge._blocks import BlockTable, check_lines, payload_sizes, split_ndjson, split_payloads
from tidegauge.errors import ConfigError

__all__ = ["FsyncPolicy", "Outbox", "OutboxBatch", "OutboxStats", "OverflowPolicy", "StreamPolicy"]

logger = logging.getLogger(__name__)

_DROP_LOG_EVERY_US = 60_000_000
"""Drops of one stream and reason are logged at most once a minute (with the count since the last)."""

OverflowPolicy = Literal["reject_new", "drop_oldest"]
FsyncPolicy = Literal["checkpoint", "always", "os"]
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PAGE_BYTES = 32 * 1024
"""SQLite page size of a new outbox file (see ``__init__``)."""
_END = 1 << 62
"""A sequence number past every record (ranges open at the top)."""
_MIGRATE_ROWS = 20_000
"""Old-layout rows converted per query (bounded memory while an old outbox is converted)."""


class StreamPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits and priority of one outbox stream.

    ``priority`` is the stream's weight in the uplink's weighted round-robin (higher: more of the link,
    earlier after a reconnect; every stream with data gets a turn, so none starves). ``max_bytes`` and
    ``max_age`` bound what the stream keeps; ``overflow`` says what happens at ``max_bytes``.
    """

    priority: int = 1
    max_bytes: int = 512 * 1024 * 1024
    max_age: str = "7d"
    overflow: OverflowPolicy = "drop_oldest"

    def __post_init__(self) -> None:
        if self.priority < 1:
            raise ConfigError(f"priority={self.priority}: use an integer >= 1 (a weight)")
        if self.max_bytes < 1:
            raise ConfigError(f"max_bytes={self.max_bytes}: use a positive number of bytes")
        if self.overflow not in ("reject_new", "drop_oldest"):
            raise ConfigError(f"overflow={self.overflow!r}: use 'reject_new' or 'drop_oldest'")
        parse_duration(self.max_age, name="max_age")


@dataclass
class OutboxStats:
    """One stream's figures (for heartbeats and metrics)."""

    stream: str
    depth: int
    bytes: int
    oldest_at_us: int | None
    last_seq: int
    committed_seq: int
    acked_seq: int
    drops: dict[str, int]


@dataclass
class OutboxBatch:
    """Contiguous visible records of one stream, as read for sending.

    ``parts`` are ``(at_us, records, ndjson)``: the records in order, each part from one append (one
    ``at_us``), every record a line ending in ``\\n``; ``size`` counts their bytes without the newlines.
    """

    stream: str
    first: int
    last: int
    size: int
    parts: list[tuple[int, int, bytes]] = field(default_factory=list)

    @property
    def records(self) -> int:
        return self.last - self.first + 1

    def rows(self) -> list[tuple[int, int, bytes]]:
        """One ``(seq, at_us, payload)`` per record."""
        out = []
        seq = self.first
        for at, _, blob in self.parts:
            for line in blob[:-1].split(b"\n"):
                out.append((seq, at, line))
                seq += 1
        return out


@dataclass
class _Stream:
    name: str
    policy: StreamPolicy
    table: BlockTable
    last_seq: int = 0
    committed_seq: int = 0
    acked_seq: int = 0
    depth: int = 0
    bytes: int = 0
    inflight: int = 0
    """highest sequence number the uplink is sending now: ``drop_oldest`` spares those (they may arrive)"""


class Outbox:
    """A durable, bounded store of records to forward, one sequence per stream.

    Thread-safe (one lock around one SQLite connection); the async callers run it in a worker thread.

    Parameters
    ----------
    path:
        The SQLite file (created if missing, WAL mode).
    streams:
        Stream name -> :class:`StreamPolicy`. Names are lowercase identifiers.
    fsync:
        See the module docstring.
    clock:
        Processing time, for record ages.

    Examples
    --------
    >>> import tempfile, os
    >>> box = Outbox(os.path.join(tempfile.mkdtemp(), "o.db"), {"alerts": StreamPolicy(priority=8)})
    >>> box.append("alerts", [b'{"a":1}', b'{"a":2}'])
    (1, 2)
    >>> box.commit_seq("alerts", 2); [seq for seq, _, _ in box.read("alerts", after=0, limit=10)]
    [1, 2]
    >>> box.ack("alerts", 2); box.stats("alerts").depth
    0
    """

    def __init__(self, path: str | Path, streams: Mapping[str, StreamPolicy], *, fsync: FsyncPolicy = "checkpoint",
                 clock: Clock | None = None) -> None:
        if fsync not in ("checkpoint", "always", "os"):
            raise ConfigError(f"fsync={fsync!r}: use 'checkpoint', 'always' or 'os'")
        if not streams:
            raise ConfigError("an outbox needs at least one stream")
        for name in streams:
            if not _NAME.match(name):
                raise ConfigError(f"stream name {name!r}: use a lowercase identifier (a-z, 0-9, _)")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._drop_log: dict[tuple[str, str], tuple[int, int]] = {}  # (stream, reason) -> (logged at, since)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # a block (up to ~28 KiB) fits in one page, no overflow chain of 4 KiB pages each read and freed on
        # its own: appends, reads and deletes about 2-3x faster. Takes effect only when the file is created
        # (before WAL mode); an older outbox keeps its page size
        self._db.execute(f"PRAGMA page_size={_PAGE_BYTES}")
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL checkpoints (which fsync) every 64 MiB rather than every 4 MiB: durability comes from the WAL
        # fsync of make_durable(); this only bounds the WAL file
        self._db.execute("PRAGMA wal_autocheckpoint=16384")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync == 'always' else 'OFF' if fsync == 'os' else 'NORMAL'}")
        self._db.execute("CREATE TABLE IF NOT EXISTS streams (stream TEXT PRIMARY KEY, committed_seq INTEGER "
                         "NOT NULL, acked_seq INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS drops (stream TEXT NOT NULL, reason TEXT NOT NULL, "
                         "records INTEGER NOT NULL, PRIMARY KEY (stream, reason))")
        self.incarnation = self._incarnation()
        """This outbox's identity (random, made with the file): the upstream keeps sequence numbers per
        agent *and* incarnation, so an agent whose data directory was lost, starting again at 1, is not taken
        for a replay of what its predecessor sent. ``""`` for an outbox made before incarnations existed."""
        self._streams: dict[str, _Stream] = {}
        for name, policy in streams.items():
            self._streams[name] = self._open_stream(name, policy)

    def _incarnation(self) -> str:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        # an older outbox that has numbered records already keeps the legacy (empty) identity
        used = db.execute("SELECT count(*) FROM streams").fetchone()[0]
        db.execute("INSERT OR IGNORE INTO meta VALUES ('incarnation', ?)", ("" if used else secrets.token_hex(8),))
        return str(db.execute("SELECT value FROM meta WHERE key = 'incarnation'").fetchone()[0])

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _open_stream(self, name: str, policy: StreamPolicy) -> _Stream:
        with self._tx() as db:
            table = BlockTable(db, name)
            db.execute("INSERT OR IGNORE INTO streams VALUES (?, 0, 0)", (name,))
            self._migrate(name, table)
            committed, acked = db.execute("SELECT committed_seq, acked_seq FROM streams WHERE stream=?",
                                          (name,)).fetchone()
            table.delete(1, acked)  # acknowledged, not purged yet (whole blocks, and the head of one)
            depth, size, top = table.totals()
        return _Stream(name, policy, table, last_seq=max(top, committed, acked), committed_seq=committed,
                       acked_seq=acked, depth=depth, bytes=size)

    def _migrate(self, name: str, table: BlockTable) -> None:
        """Convert ``out_<name>`` (one row per record, older tidegauge) into blocks (in the caller's transaction)."""
        db, old = self._db, f"out_{name}"
        if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (old,)).fetchone() is None:
            return
        after, total = 0, 0
        while rows := db.execute(f"SELECT seq, at_us, payload FROM {old} WHERE seq > ? ORDER BY seq "
                                 f"LIMIT {_MIGRATE_ROWS}", (after,)).fetchall():
            run: list[bytes] = []
            start = at = 0
            for seq, at_us, payload in rows:
                if run and (seq != start + len(run) or at_us != at):
                    table.insert(start, at, split_payloads(run, sum(map(len, run))))
                    run = []
                if not run:
                    start, at = seq, at_us
                run.append(payload)
            table.insert(start, at, split_payloads(run, sum(map(len, run))))
            after = rows[-1][0]
            total += len(rows)
        db.execute(f"DROP TABLE {old}")
        logger.info("outbox %s: converted %d records to the block layout", name, total)

    def add_stream(self, name: str, policy: StreamPolicy) -> None:
        """Open one more stream (e.g. one a pipeline file forwards); a no-op if it exists."""
        if name in self._streams:
            return
        if not _NAME.match(name):
            raise ConfigError(f"stream name {name!r}: use a lowercase identifier (a-z, 0-9, _)")
        with self._lock:
            self._streams[name] = self._open_stream(name, policy)

    @property
    def streams(self) -> dict[str, StreamPolicy]:
        return {n: s.policy for n, s in self._streams.items()}

    def _get(self, stream: str) -> _Stream:
        try:
            return self._streams[stream]
        except KeyError:
            raise ConfigError(f"outbox has no stream {stream!r}; it has {', '.join(sorted(self._streams))}") from None

    # -- writing -------------------------------------------------------------------------------------
    def next_seq(self, stream: str) -> int:
        """The sequence number the next appended record of ``stream`` gets."""
        return self._get(stream).last_seq + 1

    def append(self, stream: str, payloads: Sequence[bytes], *, at_us: int | None = None,
               first_seq: int | None = None) -> tuple[int, int]:
        """Store ``payloads`` (single-line JSON objects) as the next records of ``stream`` (pending until
        :meth:`commit_seq`).

        Applies the stream's ``max_bytes`` with its overflow policy first. Returns ``(first, last)`` sequence
        numbers given (``last < first``: nothing stored). ``first_seq``, if given, must be :meth:`next_seq`
        (the caller numbered the payloads already).
        """
        rows = list(payloads)
        return self._append(stream, rows, sum(map(len, rows)), at_us, first_seq)

    def append_ndjson(self, stream: str, data: bytes, records: int, *, at_us: int | None = None,
                      first_seq: int | None = None) -> tuple[int, int]:
        """:meth:`append` for ``records`` records given as NDJSON (each line ending in ``\\n``), stored as
        they are (no split into one object per record unless the stream's limit must cut them)."""
        check_lines(data, records)
        return self._append(stream, (data, records), len(data) - records, at_us, first_seq)

    def _append(self, stream: str, data: list[bytes] | tuple[bytes, int], size: int, at_us: int | None,
                first_seq: int | None) -> tuple[int, int]:
        s = self._get(stream)
        at = self.clock.now_us() if at_us is None else at_us
        with self._lock:
            first = s.last_seq + 1
            if first_seq is not None and first_seq != first:
                raise ValueError(f"append({stream!r}, first_seq={first_seq}): the next sequence number is {first}")
            with self._tx():
                if s.bytes + size > s.policy.max_bytes:
                    rows = data if isinstance(data, list) else data[0][:-1].split(b"\n") if data[1] else []
                    rows, size, first = self._make_room(s, rows, size, first)
                    blocks = split_payloads(rows, size)
                elif isinstance(data, tuple):
                    blocks = split_ndjson(*data)
                else:
                    blocks = split_payloads(data, size)
                s.table.insert(first, at, blocks)
            n = sum(b[0] for b in blocks)
            if n or first > s.last_seq + 1:
                s.last_seq = first + n - 1
            s.depth += n
            s.bytes += size
            return first, first + n - 1

    def _make_room(self, s: _Stream, rows: list[bytes], size: int, first: int) -> tuple[list[bytes], int, int]:
        """Apply the overflow policy to an append of ``rows`` that does not fit; what is left to store."""
        limit = s.policy.max_bytes
        if s.policy.overflow == "reject_new":
            keep, room = 0, limit - s.bytes
            for p in rows:
                if room < len(p):
                    break
                room -= len(p)
                keep += 1
            self._count_drop(s.name, "rejected", len(rows) - keep)
            rows = rows[:keep]
            return rows, sum(map(len, rows)), first
        self._drop_oldest(s, s.bytes + size - limit)
        if size > limit:  # the batch alone is too big: its oldest go too
            cut, over = 0, size - limit
            while over > 0:
                over -= len(rows[cut])
                cut += 1
            self._count_drop(s.name, "overflow", cut)
            # numbered anyway, so the upstream sees the gap where they were
            first += cut
            rows = rows[cut:]
            size = sum(map(len, rows))
        return rows, size, first

    def _count_drop(self, stream: str, reason: str, n: int) -> None:
        if n <= 0:
            return
        self._db.execute("INSERT INTO drops VALUES (?, ?, ?) ON CONFLICT (stream, reason) "
                         "DO UPDATE SET records = records + excluded.records", (stream, reason, n))
        # one warning per stream and reason a minute (a full outbox drops at every append): the first drop
        # at once, then what was dropped since; the counts are in stats() and the metrics anyway
        now = self.clock.now_us()
        logged, since = self._drop_log.get((stream, reason), (None, 0))
        if logged is None or now - logged >= _DROP_LOG_EVERY_US:
            more = f", {since} more since the last warning" if since else ""
            logger.warning("outbox %s: dropped %d records (%s%s); next warning for this in a minute at the "
                           "earliest", stream, n, reason, more)
            self._drop_log[(stream, reason)] = (now, 0)
        else:
            self._drop_log[(stream, reason)] = (logged, since + n)

    def _drop_oldest(self, s: _Stream, need: int) -> None:
        """Delete the oldest records of ``s`` until ``need`` bytes are free (inside the caller's transaction)."""
        start = max(s.inflight, s.acked_seq)
        freed, cut = 0, None
        for first, last, _, blob in s.table.scan(start + 1, _END):
            count = last - first + 1
            size = len(blob) - count
            if freed + size < need:
                freed += size
                cut = last
                continue
            sizes = payload_sizes(blob).cumsum()
            k = int(sizes.searchsorted(need - freed))  # the first record whose drop frees enough
            cut = first + k
            break
        if cut is None:
            return
        n, size = s.table.delete(start + 1, cut)
        self._count_drop(s.name, "overflow", n)
        s.depth -= n
        s.bytes -= size

    def make_durable(self) -> None:
        """Fsync the write-ahead log (policy ``checkpoint``; a no-op for ``os``, already done for ``always``)."""
        if self.fsync != "checkpoint":
            return
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                # an empty write transaction commits with an fsync of the WAL, covering every earlier frame
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("UPDATE streams SET committed_seq = committed_seq WHERE rowid = 1")
                self._db.execute("COMMIT")
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def commit_seq(self, stream: str, seq: int) -> None:
        """Records of ``stream`` up to ``seq`` become visible (their checkpoint is committed)."""
        s = self._get(stream)
        with self._lock:
            seq = min(seq, s.last_seq)
            if seq <= s.committed_seq:
                return
            self._db.execute("UPDATE streams SET committed_seq=? WHERE stream=?", (seq, stream))
            s.committed_seq = seq

    def recover(self, stream: str, seq: int | None) -> None:
        """Forget pending records after ``seq`` (the restored checkpoint's; ``None``: after the committed ones).

        Records up to ``seq`` become visible (the checkpoint was written, its commit may not have finished).
        """
        s = self._get(stream)
        with self._lock:
            keep = s.committed_seq if seq is None else seq
            if keep < s.committed_seq:
                # an older checkpoint than the last committed one (the newest was unreadable): the flow
                # writes those records again, under new numbers: numbers are never reused
                logger.warning("outbox %s: restored checkpoint covers up to %d but %d were committed; records "
                               "after %d may be forwarded twice", stream, keep, s.committed_seq, keep)
                keep = s.committed_seq
            with self._tx() as db:
                n, size = s.table.delete(max(keep, s.acked_seq) + 1, _END)
                db.execute("UPDATE streams SET committed_seq=? WHERE stream=?", (keep, stream))
            if n:
                logger.info("outbox %s: discarded %d records written after the checkpoint", stream, n)
            s.depth -= n
            s.bytes -= size
            s.committed_seq = keep
            s.last_seq = max(keep, s.acked_seq)

    # -- reading -------------------------------------------------------------------------------------
    def read_batch(self, stream: str, *, after: int, limit: int, max_bytes: int = 1 << 62,
                   sending: bool = False) -> OutboxBatch | None:
        """The visible records of ``stream`` after ``after``, oldest first: at most ``limit`` records and
        ``max_bytes`` bytes (one record at least), contiguous (a batch ends before a gap: records dropped
        while the ones before them were in flight). ``None`` if there is none.

        ``sending``: the caller is about to send them, so ``drop_oldest`` spares them (a record that may have
        reached the upstream is never counted as dropped); the stream may exceed ``max_bytes`` by the
        batches in flight.
        """
        s = self._get(stream)
        if limit < 1:
            raise ValueError(f"read_batch(limit={limit}): use at least 1")
        with self._lock:
            batch: OutboxBatch | None = None
            for first, last, at, blob in s.table.scan(max(after, s.acked_seq) + 1, s.committed_seq):
                count = last - first + 1
                if batch is not None and first != batch.last + 1:
                    break
                n = batch.records if batch is not None else 0
                take_n = min(count, limit - n)
                sizes = None
                size = len(blob) - count
                if take_n < count or (batch is not None and batch.size + size > max_bytes) or (
                        batch is None and size > max_bytes):
                    sizes = payload_sizes(blob)[:take_n].cumsum()
                    room = max_bytes - (batch.size if batch is not None else 0)
                    take_n = max(int(sizes.searchsorted(room, side="right")), 1 if batch is None else 0)
                    if take_n == 0:
                        break
                    blob = blob[:int(sizes[take_n - 1]) + take_n]
                    size = int(sizes[take_n - 1])
                if batch is None:
                    batch = OutboxBatch(stream, first, first - 1, 0)
                batch.parts.append((at, take_n, blob))
                batch.last += take_n
                batch.size += size
                if take_n < count or batch.records >= limit:
                    break
            if sending and batch is not None:
                # never lowered: a batch whose answer was lost may have arrived even if it is sent again
                s.inflight = max(s.inflight, batch.last)
            return batch

    def read(self, stream: str, *, after: int, limit: int, max_bytes: int = 1 << 62,
             sending: bool = False) -> list[tuple[int, int, bytes]]:
        """:meth:`read_batch` as one ``(seq, at_us, payload)`` per record."""
        batch = self.read_batch(stream, after=after, limit=limit, max_bytes=max_bytes, sending=sending)
        return [] if batch is None else batch.rows()

    def has_visible(self, stream: str, after: int) -> bool:
        s = self._get(stream)
        return s.committed_seq > after and s.depth > 0

    def ack(self, stream: str, seq: int, *, sent: tuple[int, int, int] | None = None) -> None:
        """The upstream has every record of ``stream`` up to ``seq``: they are gone from the outbox.

        ``sent`` is ``(first, records, bytes)`` of the batch this acknowledgement covers, when the caller knows
        it (saves a query; used only if the batch starts right after the last acknowledged record). The blocks
        wholly acknowledged are deleted at once (a block partly acknowledged stays until the rest is).
        """
        s = self._get(stream)
        with self._lock:
            if seq <= s.acked_seq:
                return
            if sent is not None and sent[0] == s.acked_seq + 1:
                covered = (sent[1], sent[2])
            else:
                covered = s.table.stats(s.acked_seq + 1, seq)
            with self._tx() as db:
                db.execute("UPDATE streams SET acked_seq=? WHERE stream=?", (seq, stream))
                s.table.purge(seq, everything=s.depth <= covered[0] and seq >= s.last_seq)
            s.acked_seq = seq
            s.last_seq = max(s.last_seq, seq)
            s.depth -= covered[0]
            s.bytes -= covered[1]

    def expire(self, now_us: int | None = None) -> int:
        """Drop records older than their stream's ``max_age`` (counted as ``expired``); returns how many."""
        now = self.clock.now_us() if now_us is None else now_us
        total = 0
        for s in self._streams.values():
            cutoff = now - parse_duration(s.policy.max_age)
            with self._lock:
                old = self._db.execute(f"SELECT first, last FROM {s.table.table} WHERE at_us < ? AND last > ? "
                                       "ORDER BY first", (cutoff, s.acked_seq)).fetchall()
                if not old:
                    continue
                n = size = 0
                with self._tx():
                    for first, last in old:
                        dn, ds = s.table.delete(max(first, s.acked_seq + 1), last)
                        n, size = n + dn, size + ds
                    self._count_drop(s.name, "expired", n)
                s.depth -= n
                s.bytes -= size
                total += n
        return total

    def stats(self, stream: str) -> OutboxStats:
        s = self._get(stream)
        with self._lock:
            oldest = s.table.first_after(s.acked_seq)
            drops = dict(self._db.execute("SELECT reason, records FROM drops WHERE stream=?", (stream,)).fetchall())
        return OutboxStats(stream, s.depth, s.bytes, None if oldest is None else oldest[2], s.last_seq,
                           s.committed_seq, s.acked_seq, drops)

    def all_stats(self) -> list[OutboxStats]:
        return [self.stats(n) for n in self._streams]

    def close(self) -> None:
        with self._lock:
            self._db.close()

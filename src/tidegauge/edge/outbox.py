"""The agent's durable outbox: records waiting to be forwarded upstream, in SQLite (WAL mode).

One table per stream, keyed by the stream's sequence number (the SQLite rowid: appends go to the end of
one b-tree). A record's life:

1. written by the flow's :class:`~tidegauge.edge.sink.OutboxSink` with the next sequence number of its
   stream (*pending*: a restart from the previous checkpoint deletes it, the flow writes it again);
2. *visible* once the checkpoint covering it is committed (``commit_seq``): only visible records are sent;
3. deleted once the upstream acknowledged it (``ack``), or dropped by the stream's limits.

The rows of a stream are always one contiguous range of sequence numbers: acknowledgements, the
``drop_oldest`` policy and the age limit all delete from the oldest end, and ``reject_new`` refuses from
the newest end before numbers are given. So the upstream sees a gap only where the outbox dropped records,
and each drop is counted by reason (``overflow``, ``rejected``, ``expired``) in the ``drops`` table.

Durability (``fsync``): ``"checkpoint"`` (default) fsyncs the write-ahead log at each checkpoint's
pre-commit, so a checkpointed record survives a power loss; ``"always"`` fsyncs every write; ``"os"``
never fsyncs (a process crash loses nothing, a power loss may).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from tidegauge._time import Clock, SystemClock, parse_duration
from tidegauge.errors import ConfigError

__all__ = ["FsyncPolicy", "Outbox", "OutboxStats", "OverflowPolicy", "StreamPolicy"]

logger = logging.getLogger(__name__)

OverflowPolicy = Literal["reject_new", "drop_oldest"]
FsyncPolicy = Literal["checkpoint", "always", "os"]
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PURGE_ROWS = 50_000
"""Acknowledged rows deleted together (one big delete is much cheaper than one per batch)."""
_DROP_SCAN = 20_000
"""Rows looked at per query while finding how many of the oldest to drop (bounded memory)."""


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
class _Stream:
    name: str
    policy: StreamPolicy
    last_seq: int = 0
    committed_seq: int = 0
    acked_seq: int = 0
    depth: int = 0
    bytes: int = 0
    inflight: int = 0
    unpurged: int = 0
    """acknowledged rows not deleted yet (deleted in bulk)"""
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
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL checkpoints (which fsync) every 64 MiB rather than every 4 MiB: durability comes from the WAL
        # fsync of make_durable(); this only bounds the WAL file
        self._db.execute("PRAGMA wal_autocheckpoint=16384")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync == 'always' else 'OFF' if fsync == 'os' else 'NORMAL'}")
        self._db.execute("CREATE TABLE IF NOT EXISTS streams (stream TEXT PRIMARY KEY, committed_seq INTEGER "
                         "NOT NULL, acked_seq INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS drops (stream TEXT NOT NULL, reason TEXT NOT NULL, "
                         "records INTEGER NOT NULL, PRIMARY KEY (stream, reason))")
        self._streams: dict[str, _Stream] = {}
        for name, policy in streams.items():
            self._streams[name] = self._open_stream(name, policy)

    def _open_stream(self, name: str, policy: StreamPolicy) -> _Stream:
        db = self._db
        db.execute(f"CREATE TABLE IF NOT EXISTS out_{name} (seq INTEGER PRIMARY KEY, at_us INTEGER NOT NULL, "
                   "payload BLOB NOT NULL)")
        db.execute("INSERT OR IGNORE INTO streams VALUES (?, 0, 0)", (name,))
        committed, acked = db.execute("SELECT committed_seq, acked_seq FROM streams WHERE stream=?",
                                      (name,)).fetchone()
        db.execute(f"DELETE FROM out_{name} WHERE seq <= ?", (acked,))  # acknowledged, not purged yet
        depth, size, top = db.execute(f"SELECT count(*), coalesce(sum(length(payload)), 0), coalesce(max(seq), 0) "
                                      f"FROM out_{name}").fetchone()
        return _Stream(name, policy, last_seq=max(top, committed, acked), committed_seq=committed,
                       acked_seq=acked, depth=depth, bytes=size)

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
        """Store ``payloads`` as the next records of ``stream`` (pending until :meth:`commit_seq`).

        Applies the stream's ``max_bytes`` with its overflow policy first. Returns ``(first, last)`` sequence
        numbers given (``last < first``: nothing stored). ``first_seq``, if given, must be :meth:`next_seq`
        (the caller numbered the payloads already).
        """
        s = self._get(stream)
        at = self.clock.now_us() if at_us is None else at_us
        with self._lock:
            first = s.last_seq + 1
            if first_seq is not None and first_seq != first:
                raise ValueError(f"append({stream!r}, first_seq={first_seq}): the next sequence number is {first}")
            rows = list(payloads)
            size = sum(map(len, rows))
            limit = s.policy.max_bytes
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if s.bytes + size > limit:
                    if s.policy.overflow == "reject_new":
                        keep, room = 0, limit - s.bytes
                        for p in rows:
                            if room < len(p):
                                break
                            room -= len(p)
                            keep += 1
                        self._count_drop(stream, "rejected", len(rows) - keep)
                        rows = rows[:keep]
                        size = sum(map(len, rows))
                    else:
                        self._drop_oldest(s, s.bytes + size - limit)
                        if size > limit:  # the batch alone is too big: its oldest go too
                            cut, over = 0, size - limit
                            while over > 0:
                                over -= len(rows[cut])
                                cut += 1
                            self._count_drop(stream, "overflow", cut)
                            # numbered anyway, so the upstream sees the gap where they were
                            first += cut
                            rows = rows[cut:]
                            size = sum(map(len, rows))
                db.executemany(f"INSERT INTO out_{stream} VALUES (?, ?, ?)",
                               zip(range(first, first + len(rows)), [at] * len(rows), rows, strict=True))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if rows or first > s.last_seq + 1:
                s.last_seq = first + len(rows) - 1
            s.depth += len(rows)
            s.bytes += size
            return first, first + len(rows) - 1

    def _count_drop(self, stream: str, reason: str, n: int) -> None:
        if n <= 0:
            return
        self._db.execute("INSERT INTO drops VALUES (?, ?, ?) ON CONFLICT (stream, reason) "
                         "DO UPDATE SET records = records + excluded.records", (stream, reason, n))
        logger.warning("outbox %s: dropped %d records (%s)", stream, n, reason)

    def _drop_oldest(self, s: _Stream, need: int) -> None:
        """Delete the oldest rows of ``s`` until ``need`` bytes are free (inside the caller's transaction)."""
        freed, dropped, cut = 0, 0, None
        start = after = max(s.inflight, s.acked_seq)
        while freed < need:
            rows = self._db.execute(f"SELECT seq, length(payload) FROM out_{s.name} WHERE seq > ? ORDER BY seq "
                                    f"LIMIT {_DROP_SCAN}", (after,)).fetchall()
            if not rows:
                break
            for seq, n in rows:
                freed += n
                dropped += 1
                cut = seq
                if freed >= need:
                    break
            after = rows[-1][0]
        if cut is None:
            return
        self._db.execute(f"DELETE FROM out_{s.name} WHERE seq > ? AND seq <= ?", (start, cut))
        self._count_drop(s.name, "overflow", dropped)
        s.depth -= dropped
        s.bytes -= freed

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
            n, size = self._db.execute(f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM out_{stream} "
                                       "WHERE seq > ?", (keep,)).fetchone()
            if n:
                logger.info("outbox %s: discarding %d records written after the checkpoint", stream, n)
                self._db.execute(f"DELETE FROM out_{stream} WHERE seq > ?", (keep,))
            self._db.execute("UPDATE streams SET committed_seq=? WHERE stream=?", (keep, stream))
            s.depth -= n
            s.bytes -= size
            s.committed_seq = keep
            s.last_seq = max(keep, s.acked_seq)

    # -- reading -------------------------------------------------------------------------------------
    def read(self, stream: str, *, after: int, limit: int, max_bytes: int = 1 << 62,
             sending: bool = False) -> list[tuple[int, int, bytes]]:
        """Visible records ``(seq, at_us, payload)`` of ``stream`` after ``after``, oldest first.

        ``sending``: the caller is about to send them, so ``drop_oldest`` spares them (a record that may have
        reached the upstream is never counted as dropped); the stream may exceed ``max_bytes`` by the batches
        in flight.
        """
        s = self._get(stream)
        with self._lock:
            rows = self._db.execute(f"SELECT seq, at_us, payload FROM out_{stream} WHERE seq > ? AND seq <= ? "
                                    "ORDER BY seq LIMIT ?", (max(after, s.acked_seq), s.committed_seq,
                                                             limit)).fetchall()
        # a batch is contiguous: it ends before a gap (rows dropped while the rows before them were in flight)
        # or at max_bytes
        total, n, expect = 0, 0, rows[0][0] if rows else 0
        for seq, _, p in rows:
            total += len(p)
            if seq != expect or (total > max_bytes and n):
                break
            n += 1
            expect += 1
        rows = rows[:n]
        if sending and rows:
            # never lowered: a batch whose answer was lost may have arrived even if it is sent again
            s.inflight = max(s.inflight, rows[-1][0])
        return rows

    def has_visible(self, stream: str, after: int) -> bool:
        s = self._get(stream)
        return s.committed_seq > after and s.depth > 0

    def ack(self, stream: str, seq: int, *, sent: tuple[int, int, int] | None = None) -> None:
        """The upstream has every record of ``stream`` up to ``seq``: they are gone from the outbox.

        ``sent`` is ``(first, records, bytes)`` of the batch this acknowledgement covers, when the caller knows
        it (saves a query; used only if the batch starts right after the last acknowledged record). Rows are
        deleted in bulk, every :data:`_PURGE_ROWS` acknowledged records or when the stream is empty (a delete
        per batch costs as much as the batch's insert).
        """
        s = self._get(stream)
        with self._lock:
            if seq <= s.acked_seq:
                return
            if sent is not None and sent[0] == s.acked_seq + 1:
                covered = (sent[1], sent[2])
            else:
                covered = self._db.execute(f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM out_{stream} "
                                           "WHERE seq > ? AND seq <= ?", (s.acked_seq, seq)).fetchone()
            self._db.execute("UPDATE streams SET acked_seq=? WHERE stream=?", (seq, stream))
            s.acked_seq = seq
            s.last_seq = max(s.last_seq, seq)
            s.depth -= covered[0]
            s.bytes -= covered[1]
            s.unpurged += covered[0]
            if s.unpurged >= _PURGE_ROWS or s.depth <= 0:
                self._db.execute(f"DELETE FROM out_{stream} WHERE seq <= ?", (seq,))
                s.unpurged = 0

    def expire(self, now_us: int | None = None) -> int:
        """Drop records older than their stream's ``max_age`` (counted as ``expired``); returns how many."""
        now = self.clock.now_us() if now_us is None else now_us
        total = 0
        for s in self._streams.values():
            cutoff = now - parse_duration(s.policy.max_age)
            with self._lock:
                n, size = self._db.execute(f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM out_{s.name} "
                                           "WHERE seq > ? AND at_us < ?", (s.acked_seq, cutoff)).fetchone()
                if not n:
                    continue
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(f"DELETE FROM out_{s.name} WHERE seq > ? AND at_us < ?", (s.acked_seq, cutoff))
                self._count_drop(s.name, "expired", n)
                self._db.execute("COMMIT")
                s.depth -= n
                s.bytes -= size
                total += n
        return total

    def stats(self, stream: str) -> OutboxStats:
        s = self._get(stream)
        with self._lock:
            oldest = self._db.execute(f"SELECT at_us FROM out_{stream} WHERE seq > ? ORDER BY seq LIMIT 1",
                                      (s.acked_seq,)).fetchone()
            drops = dict(self._db.execute("SELECT reason, records FROM drops WHERE stream=?", (stream,)).fetchall())
        return OutboxStats(stream, s.depth, s.bytes, None if oldest is None else oldest[0], s.last_seq,
                           s.committed_seq, s.acked_seq, drops)

    def all_stats(self) -> list[OutboxStats]:
        return [self.stats(n) for n in self._streams]

    def close(self) -> None:
        with self._lock:
            self._db.close()

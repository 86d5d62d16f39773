"""The block layout of the outbox against a one-record-at-a-time model, under random operations.

Blocks are made tiny (a few records each) so that every range operation (reads with record and byte
limits, acknowledgements, ``drop_oldest``, ``reject_new``, the age limit, recovery) starts and ends inside
blocks. After each operation the outbox must hold exactly what the model holds, with the same figures.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tidegauge._time import ManualClock
from tidegauge.edge import _blocks
from tidegauge.edge.outbox import Outbox, StreamPolicy


@dataclass
class Model:
    """The outbox's contract, record by record."""

    policy: StreamPolicy
    records: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # seq -> (at_us, payload), > acked
    last: int = 0
    committed: int = 0
    acked: int = 0
    inflight: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(p) for _, p in self.records.values())

    def drop(self, reason: str, n: int) -> None:
        if n:
            self.drops[reason] = self.drops.get(reason, 0) + n

    def append(self, payloads: list[bytes], at: int) -> tuple[int, int]:
        first, size, limit = self.last + 1, sum(map(len, payloads)), self.policy.max_bytes
        if self.size + size > limit:
            if self.policy.overflow == "reject_new":
                keep, room = 0, limit - self.size
                for p in payloads:
                    if room < len(p):
                        break
                    room -= len(p)
                    keep += 1
                self.drop("rejected", len(payloads) - keep)
                payloads = payloads[:keep]
            else:
                need, freed = self.size + size - limit, 0
                for seq in sorted(self.records):
                    if freed >= need:
                        break
                    if seq > max(self.inflight, self.acked):
                        freed += len(self.records.pop(seq)[1])
                        self.drop("overflow", 1)
                if size > limit:
                    cut, over = 0, size - limit
                    while over > 0:
                        over -= len(payloads[cut])
                        cut += 1
                    self.drop("overflow", cut)
                    first += cut
                    payloads = payloads[cut:]
        for i, p in enumerate(payloads):
            self.records[first + i] = (at, p)
        if payloads or first > self.last + 1:
            self.last = first + len(payloads) - 1
        return first, first + len(payloads) - 1

    def read(self, after: int, limit: int, max_bytes: int) -> list[tuple[int, int, bytes]]:
        out: list[tuple[int, int, bytes]] = []
        total = 0
        for seq in sorted(s for s in self.records if max(after, self.acked) < s <= self.committed):
            at, p = self.records[seq]
            total += len(p)
            if len(out) >= limit or (out and seq != out[-1][0] + 1) or (total > max_bytes and out):
                break
            out.append((seq, at, p))
        return out

    def ack(self, seq: int) -> None:
        if seq <= self.acked:
            return
        for s in [s for s in self.records if s <= seq]:
            del self.records[s]
        self.acked, self.last = seq, max(self.last, seq)

    def recover(self, seq: int | None) -> None:
        keep = max(self.committed if seq is None else seq, self.committed)
        for s in [s for s in self.records if s > keep]:
            del self.records[s]
        self.committed, self.last = keep, max(keep, self.acked)

    def expire(self, cutoff: int) -> int:
        old = [s for s, (at, _) in self.records.items() if at < cutoff]
        for s in old:
            del self.records[s]
        self.drop("expired", len(old))
        return len(old)


def check(box: Outbox, model: Model) -> None:
    st = box.stats("s")
    assert (st.depth, st.bytes, st.last_seq, st.committed_seq, st.acked_seq) == (
        len(model.records), model.size, model.last, model.committed, model.acked)
    assert st.drops == model.drops
    assert box.read("s", after=0, limit=10**9) == model.read(0, 10**9, 1 << 62)
    oldest = min(model.records) if model.records else None
    assert st.oldest_at_us == (None if oldest is None else model.records[oldest][0])


POLICIES = [StreamPolicy(max_bytes=1 << 40), StreamPolicy(max_bytes=3000, overflow="drop_oldest"),
            StreamPolicy(max_bytes=3000, overflow="reject_new")]


@pytest.mark.parametrize("seed", range(24))
def test_random_operations_match_the_record_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  seed: int) -> None:
    monkeypatch.setattr(_blocks, "BLOCK_BYTES", 200)  # 2-8 records a block
    rng = random.Random(seed)
    policy = POLICIES[seed % len(POLICIES)]
    clock = ManualClock(1_000_000_000)
    box = Outbox(tmp_path / "o.db", {"s": policy}, clock=clock, fsync="os")
    model = Model(policy)
    n = 0
    for _ in range(150):
        op = rng.choice(["append", "append", "ndjson", "commit", "read", "read", "ack", "recover", "expire",
                         "reopen"])
        if op in ("append", "ndjson"):
            payloads = [b'{"i":%d,"p":"%s"}' % (n + i, b"x" * rng.randint(0, 80)) for i in range(rng.randint(0, 30))]
            n += len(payloads)
            clock.advance(f"{rng.randint(0, 20)}s")
            if op == "append":
                got = box.append("s", payloads)
            else:
                got = box.append_ndjson("s", b"".join(p + b"\n" for p in payloads), len(payloads))
            assert got == model.append(payloads, clock.now_us())
        elif op == "commit":
            seq = rng.randint(model.committed, model.last)
            box.commit_seq("s", seq)
            model.committed = max(model.committed, min(seq, model.last))
        elif op == "read":
            after = rng.randint(0, model.committed)
            limit, max_bytes = rng.randint(1, 40), rng.choice([1 << 62, rng.randint(1, 1500)])
            sending = rng.random() < 0.5
            rows = box.read("s", after=after, limit=limit, max_bytes=max_bytes, sending=sending)
            assert rows == model.read(after, limit, max_bytes)
            batch = box.read_batch("s", after=after, limit=limit, max_bytes=max_bytes)
            assert (batch is None) == (not rows)
            if batch is not None:
                assert (batch.first, batch.last, batch.records) == (rows[0][0], rows[-1][0], len(rows))
                assert batch.size == sum(len(p) for _, _, p in rows)
            if sending and rows:
                model.inflight = max(model.inflight, rows[-1][0])
        elif op == "ack":
            seq = rng.randint(model.acked, model.committed)
            visible = model.read(0, 10**9, 1 << 62)
            hint = None
            if seq > model.acked and visible and visible[0][0] == model.acked + 1 and rng.random() < 0.5:
                covered = [r for r in visible if r[0] <= seq]
                hint = (model.acked + 1, len(covered), sum(len(p) for _, _, p in covered))
                if not covered or covered[-1][0] != seq:
                    hint = None
            box.ack("s", seq, sent=hint)
            model.ack(seq)
        elif op == "recover":
            seq = rng.choice([None, rng.randint(model.committed, model.last)])
            box.recover("s", seq)
            model.recover(seq)
        elif op == "expire":
            cutoff = clock.now_us() - rng.randint(0, 200) * 1_000_000
            assert box.expire(cutoff + 7 * 86_400 * 1_000_000) == model.expire(cutoff)  # max_age is 7d
        else:
            box.close()
            box = Outbox(tmp_path / "o.db", {"s": policy}, clock=clock, fsync="os")
            model.inflight = 0
        check(box, model)
    box.close()


def test_a_record_with_a_raw_newline_is_refused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy()})
    with pytest.raises(ValueError, match="raw newline"):
        box.append("s", [b'{"a":1}', b'{"b":\n2}'])
    with pytest.raises(ValueError, match="raw newline"):
        box.append_ndjson("s", b'{"a":1}\n{"b":2}\n', 1)
    assert box.stats("s").depth == 0 and box.next_seq("s") == 1


def test_an_outbox_of_the_row_per_record_layout_is_converted(tmp_path: Path) -> None:
    """An agent upgraded with records still waiting forwards them: nothing accepted is lost."""
    path = tmp_path / "o.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE streams (stream TEXT PRIMARY KEY, committed_seq INTEGER NOT NULL, "
               "acked_seq INTEGER NOT NULL)")
    db.execute("CREATE TABLE out_s (seq INTEGER PRIMARY KEY, at_us INTEGER NOT NULL, payload BLOB NOT NULL)")
    db.execute("INSERT INTO streams VALUES ('s', 40, 10)")
    # acknowledged 1-10 not purged yet, a gap at 21-24 (dropped), two appends (at_us 5 and 7), 41-45 pending
    rows = [(i, 5 if i <= 30 else 7, b'{"i":%d}' % i) for i in range(1, 46) if not 21 <= i <= 24]
    db.executemany("INSERT INTO out_s VALUES (?, ?, ?)", rows)
    db.close()
    box = Outbox(path, {"s": StreamPolicy()})
    st = box.stats("s")
    assert (st.depth, st.last_seq, st.committed_seq, st.acked_seq, st.oldest_at_us) == (31, 45, 40, 10, 5)
    got = box.read("s", after=0, limit=100)
    assert [r[0] for r in got] == list(range(11, 21)), "a batch stops at the gap"
    assert box.read("s", after=20, limit=100) == [(i, 5 if i <= 30 else 7, b'{"i":%d}' % i) for i in range(25, 41)]
    box.recover("s", None)
    assert box.next_seq("s") == 41
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "out_s" not in tables and "blocks_s" in tables


def test_uplink_body_marks_each_record_by_its_own_append_time(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch spanning appends from before and after the link came up: only the older ones are replay."""
    import msgspec

    from tidegauge.edge.uplink import Uplink

    monkeypatch.setattr(_blocks, "BLOCK_BYTES", 60)
    clock = ManualClock(1_000_000_000)
    box = Outbox(tmp_path / "o.db", {"s": StreamPolicy()}, clock=clock)
    box.append("s", [b'{"i":%d,"s":"a\\nb"}' % i for i in range(5)])  # backlog (an escaped newline inside)
    clock.advance("10s")
    up = Uplink(box, "http://127.0.0.1:9", node_id='gw "1"', clock=clock)
    up._link_ok()  # the link comes up at the start: what was written before is replay
    clock.advance("1s")
    box.append_ndjson("s", b"".join(b'{"i":%d}\n' % i for i in range(5, 12)), 7)
    box.commit_seq("s", 12)
    batch = box.read_batch("s", after=0, limit=100)
    assert batch is not None and len(batch.parts) > 2
    body, n_replay = up._body("s", batch)
    records = [msgspec.json.decode(line) for line in body.splitlines()]
    assert n_replay == 5 and body.endswith(b"\n")
    assert [r["i"] for r in records] == list(range(12))
    assert [r["edge_replay"] for r in records] == [True] * 5 + [False] * 7
    assert {(r["edge_node"], r["edge_stream"]) for r in records} == {('gw "1"', "s")}
    assert records[0]["s"] == "a\nb"

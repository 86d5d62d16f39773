"""The wire format of ``POST /api/v1/edge/batches`` (agent -> upstream), shared by the uplink and the receiver.

A batch is NDJSON: one record a line, each a JSON object with the stream's columns and

``edge_node``    the agent's id
``edge_stream``  the outbox stream
``edge_incarnation`` the agent's outbox identity (random, made with the outbox; ``""`` for an old outbox):
                 sequence numbers are per agent, incarnation and stream, so a new outbox (the data directory
                 was lost) starting again at 1 is new data, not a replay
``edge_seq``     the record's sequence number in its stream (1, 2, ...; contiguous within a batch)
``edge_replay``  ``true`` for backlog replayed after the link came back (or after a restart with a backlog)
``edge_page``    alert streams only: whether the upstream should notify for this transition (``false`` for a
                 replayed one that resolved while the link was down, and for ``pending`` transitions)

Headers name the batch: :data:`NODE`, :data:`STREAM`, :data:`FIRST`, :data:`LAST` (sequence numbers),
:data:`INCARNATION` (the outbox identity, as ``edge_incarnation``; absent means ``""``),
:data:`REPLAY` (``1`` if any record is replayed), :data:`PREV` (the last sequence number the agent sent before
this batch: numbers between it and ``first`` were dropped by the agent's outbox limits) and
``Idempotency-Key: <node>:<stream>:<first>-<last>[@<incarnation>]``.

The upstream applies a stream's batches in order: a batch whose ``PREV`` is beyond what the upstream has
waits for its predecessor (batches travel on several connections), and is refused with ``409 {"acked": N}``
if it does not come; the agent then sends again from ``N``.

The answer is ``200 {"acked": N, "accepted": n, "duplicates": d}``: the upstream has every record of the
stream up to ``N`` (the agent deletes them); records at or below what it had before are counted as
duplicates and not handed on again.
"""

from __future__ import annotations

import msgspec

__all__ = ["FIRST", "INCARNATION", "LAST", "NODE", "PATH", "PREV", "REPLAY", "STREAM", "BatchAck", "idempotency_key"]

PATH = "/api/v1/edge/batches"
NODE = "x-edge-node"
STREAM = "x-edge-stream"
FIRST = "x-edge-first-seq"
LAST = "x-edge-last-seq"
REPLAY = "x-edge-replay"
PREV = "x-edge-prev-seq"
INCARNATION = "x-edge-incarnation"


class BatchAck(msgspec.Struct, frozen=True, kw_only=True):
    """The upstream's answer to a batch."""

    acked: int
    accepted: int = 0
    duplicates: int = 0


def idempotency_key(node: str, stream: str, first: int, last: int, incarnation: str = "") -> str:
    """``<node>:<stream>:<first>-<last>[@<incarnation>]``: the same records always get the same key."""
    key = f"{node}:{stream}:{first}-{last}"
    return f"{key}@{incarnation}" if incarnation else key

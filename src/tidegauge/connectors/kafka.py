"""Kafka source (consumer group, offsets committed after the checkpoint) and sink (idempotent producer,
optionally transactional), with confluent-kafka (``pip install 'tidegauge[kafka]'``).

Guarantees
----------
:class:`KafkaSource`: the checkpoint is the resume point. Its position holds, per partition, the offset
after the last message handed to the flow. When the group assigns a partition, the source starts it at
the checkpointed offset if the checkpoint has one, else at the group's committed offset (else
``auto.offset.reset``, ``earliest`` by default). Offsets are committed to Kafka only in ``ack(position)``,
i.e. after the checkpoint covering them is written, and only the checkpoint's offsets: never anything
fetched after it. So a crash replays every message after the last checkpoint and nothing before it:
**exactly-once** with a transactional or idempotent sink, for one flow per group member. A partition that
moves to another member (rebalance, failover) starts there at the committed offset, which lags that
member's checkpoint by at most one checkpoint: at-least-once across the move. ``enable.auto.commit`` and
``enable.auto.offset.store`` are forced off (they would commit what no checkpoint covers).

:class:`KafkaSink` produces each row as one JSON message (key: ``key_column``; header ``tidegauge-id``:
a hash of ``id_columns`` or of the row, for downstream de-duplication) with the idempotent producer
(``enable.idempotence``: broker-side retries never duplicate). ``pre_commit`` waits for every delivery
report (and, with ``transactional_id``, commits the epoch's transaction, so ``read_committed`` consumers
see whole epochs). Kafka transactions cannot outlive the producer that began them, so they are committed
*before* the checkpoint manifest, not after it: a crash between the two replays that one epoch, which is
then produced a second time: **at-least-once** (no loss), de-duplicable by ``tidegauge-id``.

Backpressure: the source fetches only when the runner asks for a batch (messages wait in Kafka); the
sink waits for the producer's queue when it is full. ``lag()`` reports messages behind the partitions'
high watermarks (``tidegauge_source_lag_messages``).

Tests that need a broker run when ``TIDEGAUGE_KAFKA_BOOTSTRAP`` names one (there is none on the project
machine); the offset bookkeeping and configuration checks are tested without one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import polars as pl

from tidegauge.connectors._json_batch import decode_payloads, encode_rows, row_ids
from tidegauge.connectors.base import Guarantee
from tidegauge.errors import ConnectorError, MissingDependencyError

try:
    import confluent_kafka as ck
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("confluent-kafka", "kafka") from exc

__all__ = ["KafkaOffsets", "KafkaSink", "KafkaSource", "KafkaSourceState"]

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.2
"""Longest wait for a first message before an empty batch: a message arriving ends it at once."""
_FORCED_SOURCE = {"enable.auto.commit": False, "enable.auto.offset.store": False}
_DEFAULT_SOURCE = {"auto.offset.reset": "earliest"}
_FORCED_SINK = {"enable.idempotence": True, "acks": "all"}
_DEFAULT_SINK = {"linger.ms": 5}


class KafkaSourceState(msgspec.Struct, frozen=True, tag="tidegauge.kafka-source.v1"):
    """Per partition ``(topic, partition, next offset)`` handed out up to the checkpoint, and a message count."""

    group: str
    offsets: list[tuple[str, int, int]]
    delivered: int


class KafkaOffsets:
    """The source's offset bookkeeping against the checkpoint contract (no broker involved).

    ``observe`` records each message handed to the flow; ``snapshot`` is what a checkpoint stores;
    ``start_offset`` says where an assigned partition resumes; ``to_commit(position)`` gives the offsets a
    checkpoint covers that were not committed yet (what ``ack`` commits, and nothing beyond the checkpoint).

    Examples
    --------
    >>> o = KafkaOffsets({("t", 0): 10})
    >>> o.start_offset("t", 0), o.start_offset("t", 1)
    (10, None)
    >>> o.observe("t", 0, 10); o.observe("t", 1, 3)
    >>> cp = o.snapshot()
    >>> o.observe("t", 0, 11)  # after the checkpoint: not committed by it
    >>> o.to_commit(cp)
    [('t', 0, 11), ('t', 1, 4)]
    >>> o.to_commit(cp)  # already committed
    []
    """

    def __init__(self, resume: Mapping[tuple[str, int], int] | None = None) -> None:
        self._resume = dict(resume or {})
        self._next: dict[tuple[str, int], int] = dict(self._resume)
        self._committed: dict[tuple[str, int], int] = {}

    def start_offset(self, topic: str, partition: int) -> int | None:
        """Where an assigned partition resumes: the checkpointed offset, or ``None`` (the group's)."""
        return self._next.get((topic, partition))

    def observe(self, topic: str, partition: int, offset: int) -> None:
        self._next[(topic, partition)] = offset + 1

    def snapshot(self) -> dict[tuple[str, int], int]:
        return dict(self._next)

    def to_commit(self, position: Mapping[tuple[str, int], int]) -> list[tuple[str, int, int]]:
        out = []
        for (topic, partition), offset in sorted(position.items()):
            if self._committed.get((topic, partition), -1) < offset:
                out.append((topic, partition, offset))
                self._committed[(topic, partition)] = offset
        return out


def _merge_config(owner: str, config: Mapping[str, Any] | None, defaults: Mapping[str, Any],
                  forced: Mapping[str, Any], *, controlled: Sequence[str] = (), why: str) -> dict[str, Any]:
    """``defaults``, then the user's ``config``, then ``forced``; a user key that ``forced`` (or ``controlled``)
    owns is an error naming it and why."""
    extra = dict(config or {})
    clash = sorted(k for k in extra if k in forced or k in controlled)
    if clash:
        side = "source" if owner.endswith("Source") else "sink"
        raise ValueError(f"{owner}: config sets {', '.join(clash)}, which the {side} controls ({why})")
    return {**defaults, **extra, **forced}


def _check(kind: str, conf: dict[str, Any]) -> None:
    """Let librdkafka itself validate ``conf`` (unknown properties, bad values, conflicting settings)."""
    probe = dict(conf, logger=logging.getLogger(__name__ + ".probe"))
    try:
        client = ck.Consumer(probe) if kind == "consumer" else ck.Producer(probe)
    except ck.KafkaException as exc:
        raise ValueError(f"kafka {kind} configuration: {exc.args[0].str()}") from None
    if isinstance(client, ck.Consumer):
        client.close()


class KafkaSource:
    """Readings from Kafka topics through a consumer group; one JSON object (or array) per message.

    Parameters
    ----------
    topics:
        Topic name(s) (``^regex`` patterns allowed, as librdkafka takes them).
    group:
        The consumer group id (keep it stable: committed offsets are per group).
    bootstrap:
        ``host:port[,host:port...]`` of the brokers.
    config:
        Further librdkafka properties (``security.protocol``, ``sasl.*``, ``ssl.ca.location``, ...);
        validated by librdkafka at construction.
    key_column:
        Column filled from the message key where the payload lacks it.
    schema:
        Column types to decode into.
    """

    snapshot_type: type | None = KafkaSourceState
    guarantee: Guarantee = "exactly-once"  # replayable from the checkpoint: see the module docstring

    def __init__(
        self,
        topics: str | Sequence[str],
        *,
        group: str,
        bootstrap: str = "127.0.0.1:9092",
        config: Mapping[str, Any] | None = None,
        key_column: str | None = None,
        schema: Mapping[str, pl.DataType] | None = None,
        name: str | None = None,
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            raise ValueError(f"KafkaSource: topics={topics!r}: give at least one non-empty topic name")
        if not isinstance(group, str) or not group:
            raise ValueError(f"KafkaSource: group={group!r} must be a non-empty string")
        self.conf: dict[str, Any] = _merge_config(
            "KafkaSource", config, _DEFAULT_SOURCE,
            {**_FORCED_SOURCE, "bootstrap.servers": bootstrap, "group.id": group},
            why="offsets are committed after each checkpoint; use group= and bootstrap=")
        _check("consumer", self.conf)
        self.group, self.bootstrap = group, bootstrap
        self.key_column = key_column
        self.schema = dict(schema) if schema else None
        self.name = name if name is not None else "kafka"
        self.logic: KafkaSourceLogic | None = None

    def build(self, resume_state: KafkaSourceState | None) -> KafkaSourceLogic:
        """Logic that joins the group on its first batch and resumes at ``resume_state``'s offsets."""
        if resume_state is not None and resume_state.group != self.group:
            raise ConnectorError(f"kafka source {self.name}: the checkpoint is of group {resume_state.group!r}, "
                                 f"not {self.group!r}; use the group the checkpoint was written with")
        self.logic = KafkaSourceLogic(self, resume_state)
        return self.logic


class KafkaSourceLogic:
    """Running consumer of a :class:`KafkaSource`; every client call runs on one worker thread."""

    def __init__(self, d: KafkaSource, state: KafkaSourceState | None) -> None:
        self._d = d
        resume = {(t, p): o for t, p, o in state.offsets} if state is not None else None
        self.offsets = KafkaOffsets(resume)
        self._delivered = state.delivered if state is not None else 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"tidegauge-kafka-{d.name}")
        self._consumer: Any = None
        self._lag: int | None = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _open(self) -> Any:
        if self._consumer is None:
            self._consumer = ck.Consumer(dict(self._d.conf, logger=logger))
            self._consumer.subscribe(self._d.topics, on_assign=self._on_assign)
        return self._consumer

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            start = self.offsets.start_offset(tp.topic, tp.partition)
            if start is not None:
                tp.offset = start  # the checkpoint, not the group's committed offset, is the resume point
        logger.info("kafka source %s: assigned %s", self._d.name,
                    ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions))
        consumer.assign(partitions)

    def _fetch(self, max_rows: int, wait_s: float) -> list[Any]:
        consumer = self._open()
        first = consumer.poll(wait_s)
        if first is None:
            return []
        msgs = [first, *consumer.consume(max_rows - 1, 0)] if max_rows > 1 else [first]
        lag = 0
        for tp in consumer.assignment():
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            nxt = self.offsets.start_offset(tp.topic, tp.partition)
            if high >= 0 and nxt is not None:
                lag += max(0, high - nxt)
        self._lag = lag
        return msgs

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        """Up to ``max_rows`` messages' readings; empty if none came within ``max(max_delay_s, 0.2 s)``."""
        msgs = await self._call(self._fetch, max_rows, max(max_delay_s, _IDLE_WAIT_S))
        values: list[bytes] = []
        keys: list[str | None] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == ck.KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise ConnectorError(f"kafka source {self._d.name}: {err.str()}")
                logger.warning("kafka source %s: %s", self._d.name, err.str())
                continue
            self.offsets.observe(m.topic(), m.partition(), m.offset())
            values.append(m.value() or b"")
            key = m.key()
            keys.append(key.decode("utf-8", "replace") if isinstance(key, bytes) else key)
        if not values:
            return pl.DataFrame()
        self._delivered += len(values)
        df = decode_payloads(values, schema=self._d.schema)
        col = self._d.key_column
        if col is not None:
            from_key = pl.Series(col, keys, dtype=pl.String)
            df = df.with_columns(pl.coalesce(pl.col(col), from_key) if col in df.columns else from_key)
        return df

    def lag(self) -> int | None:
        """Messages behind the assigned partitions' high watermarks (as last fetched; None before)."""
        return self._lag

    def snapshot(self) -> KafkaSourceState:
        offsets = [(t, p, o) for (t, p), o in sorted(self.offsets.snapshot().items())]
        return KafkaSourceState(self._d.group, offsets, self._delivered)

    async def ack(self, position: KafkaSourceState | None) -> None:
        """Commit the checkpoint's offsets to the group (only those: never what was fetched after it)."""
        if position is None or self._consumer is None:
            return
        todo = self.offsets.to_commit({(t, p): o for t, p, o in position.offsets})
        if not todo:
            return
        tps = [ck.TopicPartition(t, p, o) for t, p, o in todo]
        try:
            await self._call(lambda: self._consumer.commit(offsets=tps, asynchronous=False))
        except ck.KafkaException as exc:  # the checkpoint is the resume point: a failed commit only lags
            logger.warning("kafka source %s: offset commit failed (%s); the checkpoint still covers them",
                           self._d.name, exc)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._call(self._consumer.close)
        self._pool.shutdown(wait=False)


class KafkaSink:
    """Produce each row as JSON to a Kafka topic (idempotent producer, optionally transactional).

    Parameters
    ----------
    topic:
        The topic.
    bootstrap:
        Brokers, ``host:port[,...]``.
    key_column:
        Column used as the message key (partitioning: one sensor's rows stay in order); default none.
    id_columns:
        Columns whose values identify a row for the ``tidegauge-id`` header; default the whole row.
    transactional_id:
        Produce each epoch in a transaction committed in ``pre_commit`` (see the module docstring).
    config:
        Further librdkafka producer properties, validated at construction.
    """

    snapshot_type: type | None = None
    guarantee: Guarantee = "at-least-once"

    def __init__(
        self,
        topic: str,
        *,
        bootstrap: str = "127.0.0.1:9092",
        key_column: str | None = None,
        id_columns: Sequence[str] | None = None,
        transactional_id: str | None = None,
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"KafkaSink: topic={topic!r} must be a non-empty string")
        self.conf: dict[str, Any] = _merge_config(
            "KafkaSink", config, _DEFAULT_SINK, {**_FORCED_SINK, "bootstrap.servers": bootstrap},
            controlled=("transactional.id",), why="idempotence is always on; use bootstrap= and transactional_id=")
        if transactional_id is not None:
            if not transactional_id:
                raise ValueError("KafkaSink: transactional_id must be non-empty (or None)")
            self.conf["transactional.id"] = transactional_id
        _check("producer", self.conf)
        self.topic, self.key_column = topic, key_column
        self.id_columns = list(id_columns) if id_columns else None
        self.transactional = transactional_id is not None
        self.name = name if name is not None else topic

    def build(self, resume_state: None) -> KafkaSinkLogic:
        return KafkaSinkLogic(self)


class KafkaSinkLogic:
    """Running producer of a :class:`KafkaSink`; client calls run on one worker thread."""

    def __init__(self, d: KafkaSink) -> None:
        self._d = d
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"tidegauge-kafka-sink-{d.name}")
        self._producer: Any = None
        self._in_txn = False
        self._errors: list[str] = []

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _open(self) -> Any:
        if self._producer is None:
            self._producer = ck.Producer(dict(self._d.conf, logger=logger))
            if self._d.transactional:
                # fences off a previous instance with the same id and aborts its open transaction
                self._producer.init_transactions(30)
        if self._d.transactional and not self._in_txn:
            self._producer.begin_transaction()
            self._in_txn = True
        return self._producer

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(err.str())

    def _produce(self, payloads: list[bytes], keys: list[str] | None, ids: list[str]) -> None:
        producer = self._open()
        for i, payload in enumerate(payloads):
            key = keys[i] if keys is not None else None
            while True:
                try:
                    producer.produce(self._d.topic, payload, key, headers=[("tidegauge-id", ids[i])],
                                     on_delivery=self._delivered)
                    break
                except BufferError:  # the producer's queue is full: wait for deliveries (backpressure)
                    producer.poll(0.1)
        producer.poll(0)

    async def write_batch(self, df: pl.DataFrame) -> None:
        if not df.height:
            return
        payloads = encode_rows(df)
        keys = df[self._d.key_column].cast(pl.String).to_list() if self._d.key_column else None
        ids = row_ids(payloads, df, self._d.id_columns)
        await self._call(self._produce, payloads, keys, ids)

    def _settle(self) -> None:
        if self._producer is None:
            return
        left = self._producer.flush(60)
        if left:
            self._errors.append(f"{left} messages not delivered within 60 s")
        if self._errors:
            errors, self._errors = self._errors, []
            if self._in_txn:
                self._producer.abort_transaction(30)
                self._in_txn = False
            raise ConnectorError(f"kafka sink {self._d.name}: {len(errors)} deliveries failed, first: {errors[0]}")
        if self._in_txn:
            self._producer.commit_transaction(60)
            self._in_txn = False

    async def pre_commit(self, epoch: int) -> None:
        """Wait for every delivery report; commit the epoch's transaction (see the module docstring)."""
        await self._call(self._settle)

    async def commit(self, epoch: int) -> None:
        """Nothing left to do: the epoch was delivered (and its transaction committed) in ``pre_commit``."""

    def snapshot(self) -> None:
        return None

    async def close(self) -> None:
        try:
            await self._call(self._settle)
        finally:
            self._pool.shutdown(wait=False)

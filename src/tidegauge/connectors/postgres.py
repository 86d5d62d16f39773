"""PostgreSQL sink: COPY into a staging table, upsert into the target at each checkpoint (psycopg 3).

Guarantee: **exactly-once** with a replayable source (and effectively-once with an at-least-once one,
since writes are upserts on ``key``). How it follows the checkpoint protocol:

- ``write_batch`` buffers rows in memory;
- ``pre_commit(epoch)`` COPYs them into the staging table ``<table>__tg_pending`` tagged with ``epoch`` and
  commits that transaction: the rows are durable, but not visible in the target;
- ``commit(epoch)`` runs, in one transaction, an ``INSERT ... SELECT DISTINCT ON (key) ... ON CONFLICT (key)
  DO UPDATE`` of the staged rows of epochs <= ``epoch`` (the last staged row per key wins) and deletes them
  from staging;
- on restart from a checkpoint of epoch E (the sink's snapshot), staged rows of epochs <= E are committed
  (the crash came before step 3 finished) and rows of later epochs are deleted (they were written after
  the checkpoint and will be produced again by the replay). A fresh start (no checkpoint) empties staging.

Rows replayed after a crash land on the same key and replace themselves, so the target holds one row per key
(e.g. ``(sensor_id, window_start)``) whatever the number of replays.

The staging table stays after a run (empty once its last checkpoint is committed): a restart needs it
between ``pre_commit`` and ``commit``. It belongs to the sink; drop it along with the target.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec
import polars as pl

from tidegauge.connectors.base import Guarantee
from tidegauge.errors import ConnectorError, MissingDependencyError

try:
    import psycopg
    from psycopg import sql
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("psycopg", "postgres") from exc

__all__ = ["PostgresSink", "PostgresSinkState"]

logger = logging.getLogger(__name__)

_NULL = "\\N"
_PG_TYPES: dict[type[pl.DataType], str] = {
    pl.Boolean: "boolean", pl.Int8: "smallint", pl.Int16: "smallint", pl.Int32: "integer",
    pl.Int64: "bigint", pl.UInt8: "smallint", pl.UInt16: "integer", pl.UInt32: "bigint",
    pl.UInt64: "numeric", pl.Float32: "real", pl.Float64: "double precision", pl.String: "text",
    pl.Categorical: "text", pl.Enum: "text", pl.Date: "date", pl.Time: "time", pl.Decimal: "numeric",
}


def pg_type(dtype: pl.DataType) -> str:
    """The PostgreSQL column type for a polars dtype (``TypeError`` for nested types)."""
    if isinstance(dtype, pl.Datetime):
        return "timestamptz" if dtype.time_zone else "timestamp"
    if isinstance(dtype, pl.Duration):
        return "interval"
    found = _PG_TYPES.get(type(dtype))
    if found is None:
        raise TypeError(f"no PostgreSQL type for polars {dtype}: cast the column (e.g. to String) before the sink")
    return found


class PostgresSinkState(msgspec.Struct, frozen=True, tag="tidegauge.postgres-sink.v1"):
    """The last pre-committed epoch (-1: none): staged rows up to it are committed on restart."""

    table: str
    epoch: int


class PostgresSink:
    """Upsert a stream into a PostgreSQL table, exactly once across crashes.

    Parameters
    ----------
    table:
        Target table (``"name"`` or ``"schema.name"``); it needs a unique index or primary key on ``key``.
    key:
        The conflict key, e.g. ``("sensor_id", "window_start")``.
    conninfo:
        A libpq connection string, e.g. ``"postgresql://postgres@127.0.0.1:5432/test"``.
    create:
        Create the table (primary key ``key``) from the first batch's schema if it does not exist.
    """

    snapshot_type: type | None = PostgresSinkState
    guarantee: Guarantee = "exactly-once"

    def __init__(
        self,
        table: str,
        *,
        key: Sequence[str],
        conninfo: str = "postgresql://127.0.0.1:5432/postgres",
        create: bool = False,
        name: str | None = None,
    ) -> None:
        parts = table.split(".")
        if not table or len(parts) > 2 or not all(parts):
            raise ValueError(f"table={table!r}: use 'name' or 'schema.name'")
        self.key = [key] if isinstance(key, str) else list(key)
        if not self.key:
            raise ValueError("PostgresSink needs key= (the conflict columns, e.g. ('sensor_id', 'window_start'))")
        self.table, self.conninfo, self.create = table, conninfo, create
        self.name = name if name is not None else parts[-1]
        self._ident = sql.Identifier(*parts)
        self._staging = sql.Identifier(*parts[:-1], parts[-1] + "__tg_pending")

    def build(self, resume_state: PostgresSinkState | None) -> PostgresSinkLogic:
        """Logic that recovers staging to ``resume_state`` on its first use."""
        return PostgresSinkLogic(self, resume_state)


class PostgresSinkLogic:
    """Running writer of a :class:`PostgresSink`."""

    def __init__(self, d: PostgresSink, state: PostgresSinkState | None) -> None:
        self._d = d
        self._state = state
        self._epoch = state.epoch if state is not None else -1
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._buffer: list[pl.DataFrame] = []
        self._ready = False  # target and staging exist and staging is recovered

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None:
            try:
                self._conn = await psycopg.AsyncConnection.connect(self._d.conninfo)
            except psycopg.Error as exc:
                raise ConnectorError(f"postgres sink {self._d.name}: cannot connect: {exc}") from exc
        return self._conn

    async def _exists(self, conn: psycopg.AsyncConnection[Any], ident: sql.Identifier) -> bool:
        cur = await conn.execute("SELECT to_regclass(%s)", [ident.as_string(conn)])
        row = await cur.fetchone()
        return row is not None and row[0] is not None

    async def _prepare(self, sample: pl.DataFrame | None) -> bool:
        """Make sure target and staging exist and staging is recovered; ``False`` if the target is missing."""
        if self._ready:
            return True
        d, conn = self._d, await self._connect()
        async with conn.transaction():
            if not await self._exists(conn, d._ident):
                if not d.create or sample is None:
                    if sample is not None:
                        raise ConnectorError(
                            f"postgres sink {d.name}: table {d.table} does not exist; pass create=True"
                        )
                    return False
                missing = [k for k in d.key if k not in sample.columns]
                if missing:
                    raise ConnectorError(f"postgres sink {d.name}: key columns {missing} are not in the batch")
                cols = [
                    sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(pg_type(t))) for c, t in sample.schema.items()
                ]
                cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, d.key))))
                await conn.execute(sql.SQL("CREATE TABLE {} ({})").format(d._ident, sql.SQL(", ").join(cols)))
                logger.info("postgres sink %s: created table %s", d.name, d.table)
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS, _tg_epoch bigint NOT NULL, "
                    "_tg_seq bigserial)"
                ).format(d._staging, d._ident)
            )
            if self._state is None:
                await conn.execute(sql.SQL("DELETE FROM {}").format(d._staging))
            else:  # a crash may have left pending rows: commit the checkpoint's, drop later ones
                await conn.execute(sql.SQL("DELETE FROM {} WHERE _tg_epoch > %s").format(d._staging), [self._epoch])
                await self._upsert(conn, self._epoch)
        self._ready = True
        return True

    async def _upsert(self, conn: psycopg.AsyncConnection[Any], epoch: int) -> None:
        d = self._d
        cur = await conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum",
            [d._ident.as_string(conn)],
        )
        cols = [r[0] for r in await cur.fetchall()]
        others = [c for c in cols if c not in d.key]
        col_list = sql.SQL(", ").join(map(sql.Identifier, cols))
        key_list = sql.SQL(", ").join(map(sql.Identifier, d.key))
        on_conflict = (
            sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in others)
            )
            if others
            else sql.SQL("DO NOTHING")
        )
        await conn.execute(
            sql.SQL(
                "INSERT INTO {t} ({cols}) SELECT DISTINCT ON ({keys}) {cols} FROM {s} WHERE _tg_epoch <= %s "
                "ORDER BY {keys}, _tg_epoch DESC, _tg_seq DESC ON CONFLICT ({keys}) {upd}"
            ).format(t=d._ident, cols=col_list, keys=key_list, s=d._staging, upd=on_conflict),
            [epoch],
        )
        await conn.execute(sql.SQL("DELETE FROM {} WHERE _tg_epoch <= %s").format(d._staging), [epoch])

    async def write_batch(self, df: pl.DataFrame) -> None:
        """Buffer ``df`` until the next ``pre_commit``."""
        if df.height:
            self._buffer.append(df)

    async def pre_commit(self, epoch: int) -> None:
        """COPY the buffered rows into staging, tagged with ``epoch``, and commit them (durable, not visible)."""
        if epoch <= self._epoch:
            raise ValueError(f"pre_commit({epoch}): epochs must increase (last was {self._epoch})")
        if self._buffer:
            df = pl.concat(self._buffer, how="diagonal_relaxed") if len(self._buffer) > 1 else self._buffer[0]
            await self._prepare(df)
            conn, d = await self._connect(), self._d
            columns = sql.SQL(", ").join(map(sql.Identifier, df.columns))
            stmt = sql.SQL("COPY {} ({}, _tg_epoch) FROM STDIN (FORMAT csv, HEADER true, NULL {})").format(
                d._staging, columns, sql.Literal(_NULL)
            )
            data = df.with_columns(pl.lit(epoch, pl.Int64).alias("_tg_epoch")).write_csv(null_value=_NULL)
            try:
                async with conn.transaction(), conn.cursor() as cur, cur.copy(stmt) as copy:
                    await copy.write(data.encode())
            except psycopg.Error as exc:
                raise ConnectorError(f"postgres sink {d.name}: COPY into {d.table} staging failed: {exc}") from exc
            self._buffer = []
        self._epoch = epoch

    async def commit(self, epoch: int) -> None:
        """Upsert the staged rows of epochs <= ``epoch`` into the target, in one transaction."""
        if not await self._prepare(None):
            return
        conn = await self._connect()
        try:
            async with conn.transaction():
                await self._upsert(conn, epoch)
        except psycopg.Error as exc:
            raise ConnectorError(f"postgres sink {self._d.name}: upsert into {self._d.table} failed: {exc}") from exc

    def snapshot(self) -> PostgresSinkState:
        """The last pre-committed epoch."""
        return PostgresSinkState(self._d.table, self._epoch)

    async def close(self) -> None:
        """Commit rows written after the last checkpoint (the end of a finite run) and disconnect."""
        try:
            if self._buffer:
                logger.warning("postgres sink %s: committing rows written after the last checkpoint", self._d.name)
                await self.pre_commit(self._epoch + 1)
                await self.commit(self._epoch)
        finally:
            if self._conn is not None:
                await self._conn.close()

"""PostgreSQL implementation of the storage contract, for many hosts sharing one database.

Claims take rows with ``FOR UPDATE SKIP LOCKED``, so any number of web processes and workers on any
number of hosts claim disjoint rows without waiting on each other; leases that expire are taken
over in the same statement. Migrations run under an advisory lock. Connections come from a psycopg
pool, opened lazily so that nothing connects at import or construction time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from bridge.errors import StorageUnavailable
from bridge.storage.base import LEASED, PENDING
from bridge.storage.sql import (
    CLAIM_COLUMNS,
    INSERT_ITEMS,
    INSERTED_COLUMNS,
    RETURNING_KEYS,
    SqlStore,
    Tx,
)

#: Any constant: the key of the advisory lock that serialises migrations across processes.
MIGRATION_LOCK = 7_305_821_446_051
#: The first key of the advisory locks under which claims of a kind take turns (the second: the kind).
CLAIM_LOCK = 7_340_112
#: How long a request waits for a database connection before answering 503 (Mailjet retries).
POOL_TIMEOUT_SECONDS = 3.0
#: A pooled connection idle this long is checked (a round trip) before it is handed out; one in
#: steady use is not: under load, a check per checkout cost a round trip per request. A connection
#: that breaks anyway fails its one use (503, retried) and the pool discards it.
CHECK_IDLE_SECONDS = 5.0
#: Outbox rows from one JSON array of objects (``PostgresStore._insert_new``).
INSERT_ITEMS_JSON = INSERT_ITEMS.format(rows=(
    f"SELECT {', '.join(INSERTED_COLUMNS)} FROM json_to_recordset(?::json) AS r(kind text, "
    "dedupe_key text, event_time bigint, event_type text, payload text, next_attempt_at float8, "
    "created_at float8)"))


def _q(sql: str) -> str:
    """Our queries use ``?``; psycopg uses ``%s``."""
    return sql.replace("?", "%s")


class _PgTx:
    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.cursor.execute(_q(sql), params or None)
        return self.cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        rows = list(rows)
        if not rows:
            return 0
        self.cursor.executemany(_q(sql), rows)
        return self.cursor.rowcount


class PostgresStore(SqlStore):
    dialect = "postgres"
    bucket_sql = "FLOOR(created_at / ?) * ?"
    #: The writer process commits in up to this many transactions at once, so that one waiting for
    #: its round trips and flush does not hold up the next round (#11: 100-event bodies 348 / 354 →
    #: 372 / 399 req/s against one at a time; single events the same; 6 was slower).
    concurrent_writes = 3
    #: psycopg converts the text of a statement of more than 50 parameters again at every use: a
    #: 100-event body cost 15.9 µs of client CPU an event in one VALUES statement, 10.7 through
    #: ``executemany`` (#11). A row has 7 parameters; padded to 4 rows, 28. More rows go as one
    #: JSON parameter (``_insert_new``).
    values_rows = 4
    #: A round of small bodies in one statement: one round trip to PostgreSQL instead of one a body
    #: (serve, single events, A/B twice: 2,621 / 2,251 → 3,083 / 2,849 req/s). SQLite, whose
    #: statements cost no round trip, showed no difference and keeps one statement a body.
    round_rows = 64

    def _insert_new(self, tx: Tx, rows: list[tuple[Any, ...]]) -> int:
        """More than ``values_rows`` rows in one statement of one parameter, the rows as JSON read by
        ``json_to_recordset``: one statement, planned once, where ``executemany`` sent one a row.
        A 100-event body: 2.2-3.7 µs of client CPU an event against 11-15 (#11, docs/benchmarks.md).
        Rows JSON cannot carry (a lone surrogate, an integer beyond 64 bits) go as before."""
        data = self._as_json(rows)
        if data is None:
            return super()._insert_new(tx, rows)
        return int(tx.execute(INSERT_ITEMS_JSON, (data,)).rowcount)

    def _insert_new_keys(self, tx: Tx, rows: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
        """A round of small bodies as one JSON parameter too (``_insert_new``)."""
        data = self._as_json(rows)
        if data is None:
            return super()._insert_new_keys(tx, rows)
        return set(map(tuple, tx.execute(INSERT_ITEMS_JSON + RETURNING_KEYS, (data,)).fetchall()))

    def _as_json(self, rows: list[tuple[Any, ...]]) -> str | None:
        """Rows as the JSON ``INSERT_ITEMS_JSON`` reads, when there are more than a VALUES statement
        takes and JSON can carry them all."""
        if len(rows) <= self.values_rows:
            return None
        try:
            return orjson.dumps([dict(zip(INSERTED_COLUMNS, row, strict=True)) for row in rows]).decode()
        except (TypeError, orjson.JSONEncodeError):
            return None

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8) -> None:
        self.url = url
        self.min_size, self.max_size = min_size, max_size
        self._pool: Any = None
        self._lock = threading.Lock()
        #: id(connection) -> when it was last given back.
        self._last_used: dict[int, float] = {}

    def _get_pool(self) -> Any:
        with self._lock:
            if self._pool is None:
                try:
                    from psycopg_pool import ConnectionPool
                except ImportError as exc:  # the `postgres` extra is not installed
                    raise StorageUnavailable(
                        "PostgreSQL support needs psycopg: pip install 'mailjet-segment-bridge[postgres]'"
                    ) from exc
                # check: a connection broken by a server restart while idle is replaced, not handed out
                self._pool = ConnectionPool(self.url, min_size=self.min_size, max_size=self.max_size,
                                            timeout=POOL_TIMEOUT_SECONDS, open=True,
                                            check=self._check_if_idle,
                                            kwargs={"connect_timeout": 5})
            return self._pool

    def _check_if_idle(self, conn: Any) -> None:
        if time.monotonic() - self._last_used.get(id(conn), 0.0) > CHECK_IDLE_SECONDS:
            from psycopg_pool import ConnectionPool

            ConnectionPool.check_connection(conn)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._get_pool().connection() as conn:
                try:
                    yield conn
                finally:
                    if len(self._last_used) > 8 * self.max_size:  # forget connections long replaced
                        self._last_used.clear()
                    self._last_used[id(conn)] = time.monotonic()
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise StorageUnavailable(f"PostgreSQL unavailable: {str(exc).strip()[:300]}") from exc
        except psycopg.Error as exc:
            raise StorageUnavailable(f"storage write failed: {str(exc).strip()[:300]}") from exc

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
            yield _PgTx(cursor)

    @contextmanager
    def _write_one_statement(self) -> Iterator[Tx]:
        """One statement in autocommit: one round trip, where BEGIN, the statement and COMMIT are
        three (a statement is atomic and durable on its own, with ``synchronous_commit`` on)."""
        with self._connection() as conn:
            conn.autocommit = True
            try:
                with conn.cursor() as cursor:
                    yield _PgTx(cursor)
            finally:
                conn.autocommit = False

    def _read(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._connection() as conn, conn.cursor() as cursor:
            cursor.execute(_q(sql), params or None)
            return [d.name for d in cursor.description or ()], cursor.fetchall()

    def _run_script(self, tx: Tx, script: str) -> None:
        tx.execute(script)

    # -- dialect-specific parts of the contract -----------------------------------------------------

    def migrate(self) -> None:
        with self._write() as tx:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            self._apply_migrations(tx, time.time())

    def _lock_claims(self, tx: Tx, kind: str) -> None:
        """Claims of a kind take turns across processes: a claim by range must see every range and
        every lease committed before it, and a claim by row every range (PostgreSQL otherwise lets
        two transactions pick the same pending rows, one of them without writing them)."""
        tx.execute("SELECT pg_advisory_xact_lock(CAST(? AS integer), hashtext(?))", (CLAIM_LOCK, kind))

    def _claim_rows(self, tx: Tx, kind: str, limit: int, owner: str, lease_seconds: float,
                    now: float) -> list[tuple[Any, ...]]:
        return tx.execute(
            "UPDATE outbox SET state = ?, lease_owner = ?, lease_expires_at = ? "
            "WHERE id IN (SELECT id FROM outbox WHERE kind = ? AND "
            "((state = ? AND next_attempt_at <= ?) OR (state = ? AND lease_expires_at <= ?)) "
            "ORDER BY next_attempt_at, id LIMIT ? FOR UPDATE SKIP LOCKED) "
            f"RETURNING {CLAIM_COLUMNS}",
            (LEASED, owner, now + lease_seconds, kind, PENDING, now, LEASED, now, limit),
        ).fetchall()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

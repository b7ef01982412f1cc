"""SQLite implementation of the storage contract, for one machine.

WAL journal (readers never block the writer), ``synchronous=FULL`` (a committed row survives power
loss, not just a crash), ``busy_timeout`` installed before any other pragma (else a fresh connection
can fail with "database is locked" under load), ``BEGIN IMMEDIATE`` for every write transaction, and
a pool of connections.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import StorageUnavailable
from bridge.storage.base import LEASED, PENDING
from bridge.storage.sql import CLAIM_COLUMNS, SqlStore, Tx

BUSY_TIMEOUT_MS = 10_000
#: Longest pause between two tries for the write lock. SQLite's own busy handler sleeps 1 ms, then
#: longer, which halves throughput when web workers and forwarders take turns committing.
LOCK_POLL_MAX_SECONDS = 0.002


def _split_sql(script: str) -> list[str]:
    """Split a migration file into statements (sqlite3.complete_statement knows where they end)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        return self.conn.executemany(sql, rows).rowcount


@dataclass(eq=False)
class _Handle:
    conn: sqlite3.Connection
    #: ``<db>-writelock``, which writers take before ``BEGIN IMMEDIATE`` (None for ``:memory:``).
    lock_fd: int | None


class SQLiteStore(SqlStore):
    dialect = "sqlite"
    bucket_sql = "CAST(created_at / ? AS INTEGER) * ?"
    unindexed = "+"

    def __init__(self, path: str | Path, *, synchronous: str = "FULL",
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = str(path)
        self.busy_timeout_ms = busy_timeout_ms
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.synchronous = synchronous
        self._lock = threading.Lock()
        self._idle: list[_Handle] = []
        self._all: list[_Handle] = []
        self._pid = os.getpid()

    # -- connections and transactions -------------------------------------------------------------

    @contextmanager
    def _handle(self) -> Iterator[_Handle]:
        """A connection (and write-lock handle) of the pool for the length of one use.

        A pool, not one connection per thread: a server that ends idle threads and starts new ones
        (granian did) would otherwise leave every ended thread's connection open for good. The
        pool holds as many connections as were ever in use at once, and no more.
        """
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connections are not ours to use
                self._pid, self._idle, self._all = os.getpid(), [], []
            handle = self._idle.pop() if self._idle else None
        if handle is None:
            handle = self._open()
        try:
            yield handle
        finally:
            with self._lock:
                kept = handle in self._all
                if kept:
                    self._idle.append(handle)
            if not kept:  # the store was closed while this was in use
                self._close_handle(handle)

    def _open(self) -> _Handle:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except (sqlite3.Error, OSError) as exc:
            raise StorageUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        lock_fd = None
        if self.path != ":memory:":
            try:
                lock_fd = os.open(self.path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                conn.close()
                raise StorageUnavailable(f"cannot open the write lock of {self.path}: {exc}") from exc
        handle = _Handle(conn, lock_fd)
        with self._lock:
            self._all.append(handle)
        return handle

    def _take_write_lock(self, fd: int) -> None:
        """Wait for the write lock in short steps, up to the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        pause = 0.0001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageUnavailable("storage busy: the write lock was not free in time") from None
                time.sleep(pause)
                pause = min(pause * 2, LOCK_POLL_MAX_SECONDS)

    @contextmanager
    def _exclusive(self, handle: _Handle) -> Iterator[None]:
        """Hold the write lock (shared by every process and thread using this database file)."""
        if handle.lock_fd is None:
            yield
            return
        self._take_write_lock(handle.lock_fd)
        try:
            yield
        finally:
            fcntl.flock(handle.lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"storage busy or unavailable: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StorageUnavailable(f"storage write failed: {exc}") from exc
            raise

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        with self._handle() as handle, self._exclusive(handle), self._transaction(handle.conn):
            yield _SqliteTx(handle.conn)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._handle() as handle:
            try:
                cursor = handle.conn.execute(sql, params)
                return [d[0] for d in cursor.description or ()], cursor.fetchall()
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"storage read failed: {exc}") from exc

    def _run_script(self, tx: Tx, script: str) -> None:
        for statement in _split_sql(script):
            tx.execute(statement)

    # -- dialect-specific parts of the contract ---------------------------------------------------

    def migrate(self) -> None:
        # Under the write lock: processes starting together must not race to switch the journal
        # mode ("database is locked") or to apply the same migration.
        with self._handle() as handle, self._exclusive(handle):
            conn = handle.conn
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"cannot use SQLite database {self.path}: {exc}") from exc
            with self._transaction(conn):
                self._apply_migrations(_SqliteTx(conn), time.time())

    def _claim_rows(self, tx: Tx, kind: str, limit: int, owner: str, lease_seconds: float,
                    now: float) -> list[tuple[Any, ...]]:
        self._take_back_expired(tx, kind, now)
        return tx.execute(
            "UPDATE outbox SET state = ?, lease_owner = ?, lease_expires_at = ? "
            "WHERE id IN (SELECT id FROM outbox WHERE kind = ? AND state = ? "
            f"AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?) RETURNING {CLAIM_COLUMNS}",
            (LEASED, owner, now + lease_seconds, kind, PENDING, now, limit),
        ).fetchall()

    def close(self) -> None:
        """Close the idle connections now, and those in use when their user is done with them (closing
        a connection while another thread runs a statement on it can crash the interpreter)."""
        with self._lock:
            idle, self._all, self._idle = self._idle, [], []
        for handle in idle:
            self._close_handle(handle)

    @staticmethod
    def _close_handle(handle: _Handle) -> None:
        handle.conn.close()
        if handle.lock_fd is not None:
            os.close(handle.lock_fd)

"""SQLite implementation of the storage contract, for one machine.

WAL journal (readers never block the writer), ``synchronous=FULL`` (a committed row survives power
loss, not just a crash), ``busy_timeout`` installed before any other pragma (else a fresh connection
can fail with "database is locked" under load), ``BEGIN IMMEDIATE`` for every write transaction, and
one connection per thread.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import StorageUnavailable
from .base import (
    DEAD,
    DELIVERED,
    LEASED,
    MAILJET_PROPERTY,
    PENDING,
    AcceptResult,
    ClaimedItem,
    DeadLetter,
    DueSummary,
    NewItem,
    Outcome,
    QuarantineEntry,
    Store,
)

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


def migration_files(dialect: str) -> list[tuple[int, str]]:
    """Versioned migration scripts shipped as package data: ``NNNN_name.sql``, in order."""
    folder = resources.files("bridge.storage") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


class SQLiteStore(Store):
    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = str(path)
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.synchronous = synchronous
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock_fds: list[int] = []
        self._lock = threading.Lock()

    # -- connections and transactions -------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            except (sqlite3.Error, OSError) as exc:
                raise StorageUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _lock_fd(self) -> int | None:
        """This thread's handle on ``<db>-writelock``, which writers take before ``BEGIN IMMEDIATE``."""
        if self.path == ":memory:":
            return None
        fd = getattr(self._local, "lock_fd", None)
        if fd is None:
            try:
                fd = os.open(self.path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StorageUnavailable(f"cannot open the write lock of {self.path}: {exc}") from exc
            self._local.lock_fd = fd
            with self._lock:
                self._lock_fds.append(fd)
        return fd

    def _take_write_lock(self, fd: int) -> None:
        """Wait for the write lock in short steps, up to the busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
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
    def _exclusive(self) -> Iterator[None]:
        """Hold the write lock (shared by every process and thread using this database file)."""
        fd = self._lock_fd()
        if fd is None:
            yield
            return
        self._take_write_lock(fd)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

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
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with self._exclusive(), self._transaction(conn):
            yield conn

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"storage read failed: {exc}") from exc

    # -- contract ---------------------------------------------------------------------------------

    def migrate(self) -> None:
        conn = self._conn()
        # Under the write lock: processes starting together must not race to switch the journal
        # mode ("database is locked") or to apply the same migration.
        with self._exclusive():
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"cannot use SQLite database {self.path}: {exc}") from exc
            with self._transaction(conn) as c:
                c.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version "
                    "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
                )
                applied = {row[0] for row in c.execute("SELECT version FROM schema_version")}
                for version, script in migration_files("sqlite"):
                    if version in applied:
                        continue
                    for statement in _split_sql(script):
                        c.execute(statement)
                    c.execute(
                        "INSERT INTO schema_version (version, applied_at) "
                        "VALUES (?, CAST(strftime('%s', 'now') AS REAL))",
                        (version,),
                    )

    def accept(
        self, items: Sequence[NewItem], quarantined: Sequence[QuarantineEntry], now: float,
        identities: Sequence[tuple[str, str]] = (),
    ) -> AcceptResult:
        with self._write() as c:
            if identities:
                c.executemany(
                    "INSERT INTO identities (email, user_id, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (email) DO UPDATE SET user_id = excluded.user_id, "
                    "updated_at = excluded.updated_at",
                    [(email, user_id, now + n * 1e-6) for n, (user_id, email) in enumerate(identities)],
                )
            by_type: dict[str, list[NewItem]] = {}
            for item in items:
                by_type.setdefault(item.event_type, []).append(item)
            accepted_by_type: dict[str, int] = {}
            for event_type, group in by_type.items():
                before = c.total_changes
                c.executemany(
                    "INSERT INTO outbox (kind, dedupe_key, event_time, event_type, payload, "
                    "next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (kind, event_time, dedupe_key) DO NOTHING",
                    [(i.kind, i.dedupe_key, i.event_time, i.event_type, i.payload, now, now)
                     for i in group],
                )
                accepted_by_type[event_type] = c.total_changes - before
            accepted = sum(accepted_by_type.values())
            c.executemany(
                "INSERT INTO quarantine (source, fingerprint, body, errors, received_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO NOTHING",
                [(q.source, q.fingerprint, q.body, q.errors, now) for q in quarantined],
            )
        return AcceptResult(accepted, len(items) - accepted, len(quarantined), accepted_by_type)

    def due_summary(self, kind: str, now: float) -> DueSummary:
        row = self._read(
            "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM outbox "
            "WHERE kind = ? AND state = ? AND next_attempt_at <= ?",
            (kind, PENDING, now),
        )[0]
        return DueSummary(row[0], row[1], row[2])

    def claim(
        self, kind: str, limit: int, owner: str, lease_seconds: float, now: float
    ) -> list[ClaimedItem]:
        with self._write() as c:
            c.execute(
                "UPDATE outbox SET state = ?, lease_owner = NULL, lease_expires_at = NULL "
                "WHERE kind = ? AND state = ? AND lease_expires_at <= ?",
                (PENDING, kind, LEASED, now),
            )
            rows = c.execute(
                "UPDATE outbox SET state = ?, lease_owner = ?, lease_expires_at = ? "
                "WHERE id IN (SELECT id FROM outbox WHERE kind = ? AND state = ? "
                "AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?) "
                "RETURNING id, kind, dedupe_key, event_type, payload, attempts, created_at",
                (LEASED, owner, now + lease_seconds, kind, PENDING, now, limit),
            ).fetchall()
        return sorted((ClaimedItem(*row) for row in rows), key=lambda item: item.id)

    def mark_delivered(self, outcomes: Iterable[Outcome], now: float) -> None:
        with self._write() as c:
            c.executemany(
                "UPDATE outbox SET state = ?, finished_at = ?, sent = ?, last_status = ?, "
                "last_response = ?, latency_ms = ?, last_error = NULL, lease_owner = NULL, "
                "lease_expires_at = NULL, attempts = attempts + 1 WHERE id = ?",
                [
                    (DELIVERED, now, o.sent, o.status, o.response, o.latency_ms, o.id)
                    for o in outcomes
                ],
            )

    def release(
        self, ids: Sequence[int], owner: str, next_attempt_at: float, error: str | None,
        *, count_attempt: bool = True, status: int | None = None,
    ) -> None:
        with self._write() as c:
            c.executemany(
                "UPDATE outbox SET state = ?, next_attempt_at = ?, last_error = ?, "
                "last_status = ?, attempts = attempts + ?, lease_owner = NULL, "
                "lease_expires_at = NULL WHERE id = ? AND state = ? AND lease_owner = ?",
                [
                    (PENDING, next_attempt_at, error, status, int(count_attempt), i, LEASED, owner)
                    for i in ids
                ],
            )

    def mark_dead(self, outcomes: Iterable[Outcome], owner: str, now: float) -> None:
        with self._write() as c:
            c.executemany(
                "UPDATE outbox SET state = ?, finished_at = ?, sent = ?, last_status = ?, "
                "last_response = ?, latency_ms = ?, last_error = ?, attempts = attempts + 1, "
                "lease_owner = NULL, lease_expires_at = NULL "
                "WHERE id = ? AND state = ? AND lease_owner = ?",
                [
                    (DEAD, now, o.sent, o.status, o.response, o.latency_ms, o.error, o.id,
                     LEASED, owner)
                    for o in outcomes
                ],
            )

    def add_dead_letters(self, entries: Sequence[DeadLetter], now: float) -> None:
        with self._write() as c:
            c.executemany(
                "INSERT INTO outbox (kind, dedupe_key, event_type, payload, state, next_attempt_at, "
                "last_error, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, event_time, dedupe_key) DO NOTHING",
                [(e.kind, e.dedupe_key, e.event_type, e.payload, DEAD, now, e.reason, now, now)
                 for e in entries],
            )

    def _lookup(self, sql: str, keys: Iterable[str]) -> dict[str, str]:
        """Run ``sql`` (with one ``IN ({marks})``) over ``keys`` in chunks; later rows win."""
        wanted = sorted(set(keys))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for row in self._read(sql.format(marks=",".join("?" * len(chunk))), chunk):
                found[row[0]] = row[1]
        return found

    def user_ids_for(self, emails: Iterable[str]) -> dict[str, str]:
        return self._lookup("SELECT email, user_id FROM identities WHERE email IN ({marks})", emails)

    def emails_for(self, user_ids: Iterable[str]) -> dict[str, str]:
        return self._lookup(
            "SELECT user_id, email FROM identities WHERE user_id IN ({marks}) ORDER BY updated_at",
            user_ids,
        )

    def remember_identity(self, user_id: str, email: str, now: float) -> None:
        with self._write() as c:
            c.execute(
                "INSERT INTO identities (email, user_id, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (email) DO UPDATE SET user_id = excluded.user_id, "
                "updated_at = excluded.updated_at",
                (email, user_id, now),
            )

    def get_setting(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def put_setting(self, key: str, value: str, now: float, *, only_if_absent: bool = False) -> bool:
        conflict = "DO NOTHING" if only_if_absent else (
            "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
        )
        with self._write() as c:
            cur = c.execute(
                f"INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?) "
                f"ON CONFLICT (key) {conflict}",
                (key, value, now),
            )
            return cur.rowcount > 0

    def stats(self, now: float) -> dict[str, Any]:
        counts = {state: 0 for state in (PENDING, LEASED, DELIVERED, DEAD)}
        for state, count in self._read("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
            counts[state] = count
        oldest = self._read(
            "SELECT MIN(created_at) FROM outbox WHERE state IN (?, ?)", (PENDING, LEASED)
        )[0][0]
        quarantined = self._read("SELECT COUNT(*) FROM quarantine")[0][0]
        return {
            **counts,
            "quarantined": quarantined,
            "oldest_pending_age_seconds": round(now - oldest, 3) if oldest is not None else None,
        }

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT id, kind, event_type, payload, sent, last_error, last_status, last_response, "
            "attempts, finished_at FROM outbox WHERE state = ? ORDER BY finished_at DESC, id DESC "
            "LIMIT ?",
            (DEAD, limit),
        )
        return [dict(row) for row in rows]

    def quarantine_entries(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT id, source, body, errors, received_at FROM quarantine ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [dict(row) for row in rows]

    _ITEM_COLUMNS = (
        "id, kind, event_type, state, payload, sent, attempts, last_error, last_status, "
        "last_response, latency_ms, created_at, finished_at"
    )

    def item(self, item_id: int) -> dict[str, Any] | None:
        rows = self._read(f"SELECT {self._ITEM_COLUMNS} FROM outbox WHERE id = ?", (item_id,))
        return dict(rows[0]) if rows else None

    def recent(self, limit: int = 50, *, kind: str | None = None, event_type: str | None = None,
               state: str | None = None) -> list[dict[str, Any]]:
        where, params = [], []
        for column, value in (("kind", kind), ("event_type", event_type), ("state", state)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._read(f"SELECT {self._ITEM_COLUMNS} FROM outbox {clause}ORDER BY id DESC LIMIT ?",
                          (*params, limit))
        return [dict(row) for row in rows]

    def dead_ids(self, after_id: int = 0, limit: int = 1000) -> list[int]:
        rows = self._read("SELECT id FROM outbox WHERE state = ? AND id > ? ORDER BY id LIMIT ?",
                          (DEAD, after_id, limit))
        return [row[0] for row in rows]

    def requeue(self, ids: Sequence[int], now: float,
                rewrite: Mapping[int, tuple[str, str]] | None = None) -> int:
        rewrite = rewrite or {}
        with self._write() as c:
            before = c.total_changes
            c.executemany(
                "UPDATE outbox SET state = ?, next_attempt_at = ?, attempts = 0, last_error = NULL, "
                "finished_at = NULL, lease_owner = NULL, lease_expires_at = NULL "
                "WHERE id = ? AND state = ?",
                [(PENDING, now, i, DEAD) for i in ids],
            )
            requeued = c.total_changes - before
            c.executemany("UPDATE outbox SET kind = ?, payload = ? WHERE id = ?",
                          [(kind, payload, i) for i, (kind, payload) in rewrite.items()])
        return requeued

    def quarantine_entry(self, entry_id: int) -> dict[str, Any] | None:
        rows = self._read("SELECT id, source, body, errors, received_at FROM quarantine WHERE id = ?",
                          (entry_id,))
        return dict(rows[0]) if rows else None

    def remove_quarantine(self, ids: Sequence[int]) -> None:
        with self._write() as c:
            c.executemany("DELETE FROM quarantine WHERE id = ?", [(i,) for i in ids])

    def timeline(self, since: float, bucket_seconds: int = 60) -> list[tuple[float, str, int]]:
        rows = self._read(
            "SELECT CAST(created_at / ? AS INTEGER) * ?, COALESCE(event_type, ''), COUNT(*) "
            "FROM outbox WHERE created_at >= ? AND kind != ? GROUP BY 1, 2 ORDER BY 1",
            (bucket_seconds, bucket_seconds, since, MAILJET_PROPERTY),
        )
        return [(float(r[0]), r[1], r[2]) for r in rows]

    def latencies(self, since: float, limit: int = 20_000) -> list[float]:
        rows = self._read(
            "SELECT latency_ms FROM outbox WHERE state = ? AND finished_at >= ? "
            "AND latency_ms IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            (DELIVERED, since, limit),
        )
        return [row[0] for row in rows]

    def login_failures(self, client: str, since: float, now: float, *, record: bool = False) -> int:
        if record:
            with self._write() as c:
                c.execute("INSERT INTO login_failures (client, at) VALUES (?, ?)", (client, now))
                c.execute("DELETE FROM login_failures WHERE at < ?", (since,))
        rows = self._read("SELECT COUNT(*) FROM login_failures WHERE client = ? AND at >= ?",
                          (client, since))
        return rows[0][0]

    def clear_login_failures(self, client: str) -> None:
        with self._write() as c:
            c.execute("DELETE FROM login_failures WHERE client = ?", (client,))

    def ping(self) -> None:
        self._read("SELECT 1")

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
            fds, self._lock_fds = self._lock_fds, []
        for conn in conns:
            conn.close()
        for fd in fds:
            os.close(fd)
        self._local = threading.local()

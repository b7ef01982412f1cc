"""The storage contract in SQL, written once for SQLite and PostgreSQL.

Subclasses supply connections and transactions (``_write``, ``_read``), the claim query (the one
place the dialects really differ: ``BEGIN IMMEDIATE`` vs ``FOR UPDATE SKIP LOCKED``) and the
migration lock. Queries use ``?`` placeholders; the PostgreSQL store rewrites them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import cache
from importlib import resources
from typing import Any, Protocol, TypeVar

from bridge.storage.base import (
    ATTEMPTS_KEPT,
    DEAD,
    DELIVERED,
    LEASED,
    PENDING,
    AcceptResult,
    Checkpoint,
    ClaimedItem,
    DeadLetter,
    DueSummary,
    NewItem,
    Outcome,
    QuarantineEntry,
    Store,
)
from bridge.storage.group_commit import GroupCommit, commit_together

ITEM_COLUMNS = (
    "id, kind, event_type, state, payload, sent, attempts, last_error, last_status, "
    "last_response, latency_ms, created_at, finished_at, next_attempt_at, event_time, dedupe_key, "
    "recipient, message_ref, sent_batch"
)
log = logging.getLogger(__name__)

T = TypeVar("T")

CLAIM_COLUMNS = "id, kind, dedupe_key, event_type, payload, attempts, created_at, replayed"
#: Most rows one statement settles or looks up (a power of two): at most 2 parameters each, far
#: below both dialects' limits (SQLite 32,766).
ROWS_PER_STATEMENT = 1024
#: How stale a session's last sight may get before it is written again.
SESSION_TOUCH_SECONDS = 60.0
#: The kinds in the outbox, one index step each (a loose index scan: both dialects would otherwise
#: read every row for ``SELECT DISTINCT``).
KINDS_SQL = ("WITH RECURSIVE k(kind) AS (SELECT MIN(kind) FROM outbox UNION ALL "
             "SELECT (SELECT MIN(kind) FROM outbox WHERE kind > k.kind) FROM k WHERE k.kind IS NOT NULL) "
             "SELECT kind FROM k WHERE kind IS NOT NULL")
#: What a delivered row holds (then its ``state``, ``finished_at``, ``last_status``, ``last_response``
#: and ``latency_ms``): the same whether the forwarder marks it or the janitor settles its range.
DELIVERED_SET = ("state = ?, finished_at = ?, last_status = ?, last_response = ?, latency_ms = ?, "
                 "last_error = NULL, lease_owner = NULL, lease_expires_at = NULL, attempts = attempts + 1")
#: A range's delivered batches, with the answer their rows share.
RANGE_BATCHES = "SELECT id, item_ids, status, response, latency_ms, created_at FROM sent_batches"
#: A claim by row, while ranges are open, looks for rows outside them among this many claims' worth
#: of the oldest due rows (a range's rows are pending on disk until it is settled).
RANGE_WINDOW = 4
#: "No limit" in a ``LIMIT ?`` both dialects accept.
NO_LIMIT = 1 << 62
#: Versioned schema changes: ``migrations/<dialect>/NNNN_name.sql``, recorded in ``schema_version``.
SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
)


class Tx(Protocol):
    """One open write transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run a statement; the result has ``fetchall()`` and ``rowcount``."""

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run a statement for each row; returns the rows changed in all."""


def migration_files(dialect: str) -> list[tuple[int, str]]:
    """Versioned migration scripts shipped as package data, in order."""
    folder = resources.files("bridge.storage") / "migrations" / dialect
    found = [(int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8"))
             for entry in folder.iterdir() if entry.name.endswith(".sql")]
    return sorted(found)


def _text(value: str | None) -> str | None:
    """Text as both databases can store it: valid UTF-8 without NUL (PostgreSQL refuses it). A lone
    surrogate or a NUL (both allowed in JSON) is kept as its escape, ``\\ud800`` or ``\\u0000``."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\\u0000")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _sent_body(texts: Sequence[str | None]) -> str:
    """A sent batch's texts as one body. Calls (compact JSON objects, which hold no line break and
    no NUL) one a line: joined, not escaped again, which took the forwarder 1.3 µs an event (#11).
    Anything else as a JSON array of the texts, with ASCII escapes, as every batch was before."""
    if all(text is not None and text.startswith("{") for text in texts):
        body = "\n".join(texts)  # type: ignore[arg-type]
        if body.count("\n") == len(texts) - 1 and "\x00" not in body:
            return _text(body)  # type: ignore[return-value]
    return json.dumps(list(texts))


def _sent_texts(body: str) -> list[str | None]:
    """The texts ``_sent_body`` stored: a JSON array (``[``) or calls one a line (``{``)."""
    return json.loads(body) if body.startswith("[") else body.split("\n")  # type: ignore[return-value]


def _chunks(values: Sequence[T]) -> Iterable[list[T]]:
    """Chunks of at most ``ROWS_PER_STATEMENT``, each padded to a power of two by repeating its last
    value. A statement's text depends on its length, and the driver keeps each text as a prepared
    statement (sqlite3: 128 a connection, some large), so lengths come from a short list instead of
    any number; and a batch is still one statement. A repeated value changes nothing: an ``IN``
    list, and ``UPDATE ... FROM``, which updates a row once whatever it joins to."""
    for start in range(0, len(values), ROWS_PER_STATEMENT):
        chunk = list(values[start : start + ROWS_PER_STATEMENT])
        chunk += [chunk[-1]] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk))
        yield chunk


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _limit(count: int | None) -> int:
    """A ``LIMIT ?`` value: ``count``, or no limit for None."""
    return NO_LIMIT if count is None else count


def _label(value: str | None) -> str | None:
    """A search label as stored: one a NUL or lone surrogate would alter is not kept (never matched)."""
    return value if value is not None and _text(value) == value else None


def _contains(text: str) -> str:
    """A ``LIKE ... ESCAPE '\\'`` pattern for lower-cased text holding ``text`` literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _storable(*texts: str) -> bool:
    """Whether text can be a key as it is (PostgreSQL text holds no NUL; so nothing stored does)."""
    return not any("\x00" in text for text in texts)


#: An outbox row as inserted, in ``ITEM_MARKS``'s order (``_item_rows``).
INSERTED_COLUMNS = ("kind", "dedupe_key", "event_time", "event_type", "payload", "next_attempt_at",
                    "created_at")
INSERT_ITEMS = (f"INSERT INTO outbox ({', '.join(INSERTED_COLUMNS)}) {{rows}} "
                "ON CONFLICT (kind, event_time, dedupe_key) DO NOTHING")
ITEM_MARKS = "(?, ?, ?, ?, ?, ?, ?)"
RETURNING_KEYS = " RETURNING kind, event_time, dedupe_key"
INSERT_ITEM = INSERT_ITEMS.format(rows=f"VALUES {ITEM_MARKS}")
INSERT_QUARANTINE = ("INSERT INTO quarantine (source, fingerprint, body, errors, received_at) "
                     "VALUES (?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO NOTHING")


@cache
def _insert_items(rows: int, returning: str = "") -> str:
    """The INSERT of ``rows`` outbox rows, written once a count (``_chunks`` keeps counts few)."""
    return INSERT_ITEMS.format(rows="VALUES " + ",".join([ITEM_MARKS] * rows)) + returning


def _item_rows(items: Iterable[NewItem], now: float) -> list[tuple[Any, ...]]:
    """Items as ``ITEM_MARKS`` rows: due now, created now."""
    return [(i.kind, i.dedupe_key, i.event_time, i.event_type, i.payload, now, now) for i in items]


def _quarantine_rows(quarantined: Iterable[QuarantineEntry], now: float) -> list[tuple[Any, ...]]:
    return [(q.source, q.fingerprint, q.body, q.errors, now) for q in quarantined]


def _flat(rows: Iterable[Sequence[Any]]) -> list[Any]:
    """A multi-row statement's parameters."""
    return [value for row in rows for value in row]


class SqlStore(Store):
    dialect = ""
    #: A body's items of one type go in multi-row INSERTs (of ROWS_PER_STATEMENT at most) up to
    #: this many, beyond it through ``executemany``. No limit for SQLite.
    values_rows = 1 << 62
    #: ``accept_many`` puts several bodies' items in one statement up to this many items in all
    #: (a round of single events); beyond it, or with nothing to gain, each body on its own.
    round_rows = 0
    #: SQL for "the start of the ``?``-second bucket holding created_at".
    bucket_sql = ""
    #: Written before a column to keep the planner from using an index on it (SQLite: ``+``).
    unindexed = ""

    # -- what a dialect supplies --------------------------------------------------------------------

    def _write(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def _read(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows of a query; raises StorageUnavailable."""
        raise NotImplementedError

    def _write_one_statement(self) -> AbstractContextManager[Tx]:
        """A write of one statement, which is atomic on its own: by default a transaction."""
        return self._write()

    def _run_script(self, tx: Tx, script: str) -> None:
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._read(sql, params)[1]

    def _dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        names, rows = self._read(sql, params)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _apply_migrations(self, tx: Tx, now: float) -> None:
        """Apply the migrations not yet recorded; the caller holds the migration lock."""
        tx.execute(SCHEMA_VERSION_DDL)
        applied = {row[0] for row in tx.execute("SELECT version FROM schema_version").fetchall()}
        for version, script in migration_files(self.dialect):
            if version not in applied:
                self._run_script(tx, script)
                tx.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, now))

    def schema_version(self) -> int:
        return self._rows("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0]

    # -- the contract -------------------------------------------------------------------------------

    @property
    def _group_commit(self) -> GroupCommit[Tx]:
        """This store's committer, made at the first accept (``dict.setdefault``: one per store)."""
        group = self.__dict__.get("_group")
        if group is None:
            group = self.__dict__.setdefault("_group", GroupCommit(self._write))
        return group

    def accept(
        self, items: Sequence[NewItem], quarantined: Sequence[QuarantineEntry], now: float,
        identities: Sequence[tuple[str, str]] = (), dead: Sequence[DeadLetter] = (),
    ) -> AcceptResult:
        """Committed with whatever other accepts this process has waiting (group commit)."""
        return self._group_commit.run(
            lambda tx: self._accept_in(tx, items, quarantined, now, identities, dead))

    def accept_many(
        self, bodies: Sequence[tuple[Sequence[NewItem], Sequence[QuarantineEntry], float]],
    ) -> list[AcceptResult | BaseException]:
        if self.in_one_statement(bodies):
            one_statement = not any(quarantined for _, quarantined, _ in bodies)
            try:
                with self._write_one_statement() if one_statement else self._write() as tx:
                    return list(self._accept_round(tx, bodies))
            except Exception:  # each body again on its own, below: only a body that fails alone fails
                log.debug("a round failed in one statement; each body again on its own")
        outcomes = commit_together(self._write, [
            lambda tx, body=body: self._accept_in(tx, body[0], body[1], body[2], (), ())
            for body in bodies])
        return [result if error is None else error for result, error in outcomes]  # type: ignore[misc]

    def in_one_statement(
        self, bodies: Sequence[tuple[Sequence[NewItem], Sequence[QuarantineEntry], float]],
    ) -> bool:
        """Whether a round goes in one statement: small bodies, on a store that gains by it (never on
        SQLite, so its rounds pay nothing for asking), and no legacy keys to look up. A lone body
        too: on PostgreSQL, in autocommit, that is one round trip instead of BEGIN, its statements
        and COMMIT (#11: `serve`, single events, A/B, 3 pairs: 1,702 / 1,531 / 1,652 → 1,730 /
        1,776 / 1,704 req/s, the writer's CPU 264-296 → 248-260 µs a request)."""
        if not bodies or sum(len(items) for items, _, _ in bodies) > self.round_rows:
            return False
        return not any(i.legacy_keys for items, _, _ in bodies for i in items)

    def _accept_round(
        self, tx: Tx, bodies: Sequence[tuple[Sequence[NewItem], Sequence[QuarantineEntry], float]],
    ) -> list[AcceptResult]:
        """Many small bodies' items in one statement (one round trip, not one a body), each body
        counted as if accepted on its own, in order: a key is accepted by the first body that has
        it, if the statement inserted it, and a duplicate everywhere else."""
        rows = [row for items, _, now in bodies for row in _item_rows(items, now)]
        inserted = self._insert_new_keys(tx, rows)
        quarantine = [row for _, quarantined, now in bodies
                      for row in _quarantine_rows(quarantined, now)]
        if quarantine:
            tx.executemany(INSERT_QUARANTINE, quarantine)
        results = []
        for items, quarantined, _ in bodies:
            by_type: dict[str, int] = {}
            for item in items:
                key = (item.kind, item.event_time, item.dedupe_key)
                fresh = key in inserted
                inserted.discard(key)
                by_type[item.event_type] = by_type.get(item.event_type, 0) + fresh
            accepted = sum(by_type.values())
            results.append(AcceptResult(accepted, len(items) - accepted, len(quarantined), by_type))
        return results

    def _accept_in(
        self, tx: Tx, items: Sequence[NewItem], quarantined: Sequence[QuarantineEntry], now: float,
        identities: Sequence[tuple[str, str]], dead: Sequence[DeadLetter],
    ) -> AcceptResult:
        accepted_by_type: dict[str, int] = {}
        fresh = self._without_legacy_duplicates(tx, items)
        by_type: dict[str, list[NewItem]] = {}
        for item in fresh:
            by_type.setdefault(item.event_type, []).append(item)
        identities = [(user, email) for user, email in identities if _storable(user, email)]
        if identities:
            tx.executemany(
                "INSERT INTO identities (email, user_id, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (email) DO UPDATE SET user_id = excluded.user_id, "
                "updated_at = excluded.updated_at",
                [(email, user_id, now + n * 1e-6) for n, (user_id, email) in enumerate(identities)],
            )
        for event_type, group in by_type.items():
            accepted_by_type[event_type] = self._insert_new(tx, _item_rows(group, now))
        if quarantined:
            tx.executemany(INSERT_QUARANTINE, _quarantine_rows(quarantined, now))
        if dead:
            self._insert_dead(tx, dead, now)
        accepted = sum(accepted_by_type.values())
        return AcceptResult(accepted, len(items) - accepted, len(quarantined), accepted_by_type,
                            len(dead))

    def _insert_new_keys(self, tx: Tx, rows: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
        """Insert ``ITEM_MARKS`` rows, a key already stored skipped; the keys inserted, as
        (kind, event_time, dedupe_key)."""
        inserted: set[tuple[Any, ...]] = set()
        for chunk in _chunks(rows):
            inserted.update(map(tuple, tx.execute(_insert_items(len(chunk), RETURNING_KEYS),
                                                  _flat(chunk)).fetchall()))
        return inserted

    def _insert_new(self, tx: Tx, rows: list[tuple[Any, ...]]) -> int:
        """Insert ``ITEM_MARKS`` rows, a key already stored skipped; how many were inserted.

        Multi-row statements, not executemany: per row, half the cost in SQLite (#11). A row
        repeated as padding conflicts with itself and is not counted. Beyond ``values_rows``,
        executemany (a dialect may do better)."""
        if len(rows) > self.values_rows:
            return tx.executemany(INSERT_ITEM, rows)
        return sum(tx.execute(_insert_items(len(chunk)), _flat(chunk)).rowcount for chunk in _chunks(rows))

    @staticmethod
    def _without_legacy_duplicates(tx: Tx, items: Sequence[NewItem]) -> list[NewItem]:
        """Drop the items one of whose legacy keys is stored (accepted under an earlier rule)."""
        if not any(item.legacy_keys for item in items):
            return list(items)
        fresh = []
        for item in items:
            if item.legacy_keys:
                marks = ",".join("?" * len(item.legacy_keys))
                found = tx.execute(
                    "SELECT 1 FROM outbox WHERE kind = ? AND event_time = ? "
                    f"AND dedupe_key IN ({marks}) LIMIT 1",
                    (item.kind, item.event_time, *item.legacy_keys),
                ).fetchall()
                if found:
                    continue
            fresh.append(item)
        return fresh

    # -- the backfill (#13) --------------------------------------------------------------------------

    def accept_backfill_page(
        self, items: Sequence[NewItem], quarantined: Sequence[QuarantineEntry],
        messages: Mapping[str, str], checkpoint: Checkpoint, now: float,
    ) -> AcceptResult:
        with self._write() as tx:
            result = self._accept_in(tx, items, quarantined, now, (), ())
            if messages:
                tx.executemany(
                    "INSERT INTO backfill_messages (message_id, record) VALUES (?, ?) "
                    "ON CONFLICT (message_id) DO UPDATE SET record = excluded.record",
                    [(ident, _text(record)) for ident, record in sorted(messages.items())],
                )
            self._put_checkpoint(tx, checkpoint, now)
        return result

    def save_checkpoint(self, checkpoint: Checkpoint, now: float) -> None:
        with self._write() as tx:
            self._put_checkpoint(tx, checkpoint, now)

    @staticmethod
    def _put_checkpoint(tx: Tx, c: Checkpoint, now: float) -> None:
        tx.execute(
            "INSERT INTO backfill_checkpoints (resource, window_start, window_end, state, next_offset, "
            "expected, fetched, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (resource, window_start, window_end) DO UPDATE SET state = excluded.state, "
            "next_offset = excluded.next_offset, expected = excluded.expected, "
            "fetched = excluded.fetched, updated_at = excluded.updated_at",
            (c.resource, c.window_start, c.window_end, c.state, c.next_offset, c.expected, c.fetched,
             now),
        )

    def checkpoints(self, resource: str) -> dict[tuple[int, int], Checkpoint]:
        rows = self._rows(
            "SELECT resource, window_start, window_end, state, next_offset, expected, fetched "
            "FROM backfill_checkpoints WHERE resource = ?", (resource,))
        return {(int(r[1]), int(r[2])): Checkpoint(r[0], int(r[1]), int(r[2]), r[3], int(r[4]),
                                                   None if r[5] is None else int(r[5]), int(r[6]))
                for r in rows}

    def backfill_messages(self, message_ids: Iterable[str]) -> dict[str, str]:
        return self._lookup(
            "SELECT message_id, record FROM backfill_messages WHERE message_id IN ({marks})",
            message_ids)

    def earliest_event_time(self, kind: str, created_before: float) -> int | None:
        row = self._rows("SELECT MIN(event_time) FROM outbox WHERE kind = ? AND created_at < ? "
                         "AND event_time > 0", (kind, created_before))[0]
        return None if row[0] is None else int(row[0])

    def daily_counts(self, kind: str, since: int, until: int) -> dict[tuple[int, str], int]:
        rows = self._rows(
            "SELECT event_time / 86400 * 86400 AS day, event_type, COUNT(*) FROM outbox "
            "WHERE kind = ? AND event_time >= ? AND event_time < ? GROUP BY 1, 2",
            (kind, since, until))
        return {(int(day), event_type): int(count) for day, event_type, count in rows}

    def due_summary(self, kind: str, now: float, up_to: int | None = None) -> DueSummary:
        row = self._rows(
            "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM (SELECT created_at FROM outbox "
            "WHERE kind = ? AND state = ? AND next_attempt_at <= ? LIMIT ?) AS due",
            (kind, PENDING, now, _limit(up_to)),
        )[0]
        return DueSummary(row[0], row[1], row[2])

    def mark_delivered(self, outcomes: Iterable[Outcome], now: float, *, owner: str | None = None,
                       sent_batch: str | None = None) -> None:
        """One statement per answer and chunk: a batch shares its status, answer and latency, and
        only the text each row was sent as differs (``UPDATE ... FROM`` a list of values). With
        ``sent_batch``, the texts are kept once, as one row of ``sent_batches``, and the rows only
        get its id: a uniform ``UPDATE ... WHERE id IN``, with no text written per row."""
        outcomes = list(outcomes)
        by_answer: dict[tuple[Any, ...], list[tuple[int, str | None]]] = {}
        for o in outcomes:
            by_answer.setdefault((o.status, o.response, o.latency_ms), []).append((o.id, o.sent))
        if not by_answer:
            return
        only_owner = "AND outbox.state = ? AND outbox.lease_owner = ?" if owner is not None else ""
        with self._write() as tx:
            batch_id = None if sent_batch is None else self._keep_sent_batch(
                tx, sent_batch, outcomes, now)
            for (status, response, latency_ms), rows in by_answer.items():
                answer = (DELIVERED, now, status, _text(response), latency_ms)
                lease = (LEASED, owner) if owner is not None else ()
                for chunk in _chunks(rows):
                    if batch_id is not None:
                        ids = [item_id for item_id, _ in chunk]
                        tx.execute(f"UPDATE outbox SET {DELIVERED_SET}, sent = NULL, sent_batch = ? "
                                   f"WHERE id IN ({_marks(len(ids))}) {only_owner}",
                                   (*answer, batch_id, *ids, *lease))
                        continue
                    params: list[Any] = []
                    for item_id, sent in chunk:
                        params += (item_id, _text(sent))
                    tx.execute(
                        f"WITH v(id, sent) AS (VALUES {','.join(['(?, ?)'] * len(chunk))}) "
                        f"UPDATE outbox SET {DELIVERED_SET}, sent = v.sent, sent_batch = NULL "
                        f"FROM v WHERE outbox.id = v.id {only_owner}",
                        (*params, *answer, *lease),
                    )

    @staticmethod
    def _keep_sent_batch(tx: Tx, kind: str, outcomes: Sequence[Outcome], now: float,
                         range_id: int | None = None) -> int:
        """Store the texts of one sent batch, with the ids of its rows in the same order; its id.
        A batch of a range also keeps the answer its rows share, which they get when the range is
        settled. The body is the calls one a line (``_sent_body``)."""
        first = outcomes[0]
        return tx.execute(
            "INSERT INTO sent_batches (kind, item_ids, body, created_at, range_id, status, response, "
            "latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (kind, json.dumps([o.id for o in outcomes]), _sent_body([o.sent for o in outcomes]), now,
             range_id, first.status, _text(first.response), first.latency_ms),
        ).fetchall()[0][0]

    def _with_sent(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows as operators read them: a row of a batch kept once (``sent_batch``) gets its own
        text out of that batch as ``sent``, the same text it would have held itself. The one place
        that reads ``sent_batches``: each batch is fetched and parsed once per call. A row of an
        open range is shown in the state the range gives it first (``_in_ranges``)."""
        rows = self._in_ranges(rows)
        wanted = sorted({row["sent_batch"] for row in rows
                         if row.get("sent") is None and row.get("sent_batch") is not None})
        texts: dict[int, dict[int, str | None]] = {}
        for chunk in _chunks(wanted):
            for batch_id, item_ids, body in self._rows(
                    f"SELECT id, item_ids, body FROM sent_batches WHERE id IN ({_marks(len(chunk))})",
                    chunk):
                texts[batch_id] = dict(zip(json.loads(item_ids), _sent_texts(body), strict=True))
        for row in rows:
            batch_id = row.pop("sent_batch", None)
            if row.get("sent") is None and batch_id in texts:
                row["sent"] = _text(texts[batch_id].get(row["id"]))
        return rows

    # -- delivery by range (docs/range-delivery.md) ---------------------------------------------------

    def _lock_claims(self, tx: Tx, kind: str) -> None:
        """Claims of a kind take turns; SQLite's write lock already makes them."""

    def _claim_rows(self, tx: Tx, kind: str, limit: int, owner: str, lease_seconds: float,
                    now: float) -> list[tuple[Any, ...]]:
        """Lease the oldest due rows of a kind (``CLAIM_COLUMNS``), expired leases included."""
        raise NotImplementedError

    def _fresh_rows(self, tx: Tx, kind: str, after: int, limit: int, now: float) -> list[tuple[Any, ...]]:
        """Pending rows (``CLAIM_COLUMNS``) of a kind with ids past ``after``, by id, unwritten, up
        to the first that is not due yet: a range must hold every pending row within its bounds,
        and intake's clocks put rows committed in id order a millisecond apart either way (one
        skipped would wait inside the range until it is settled). SQLite is kept on the rowid's
        order (``unindexed``: its planner would take ``outbox_due`` and sort every pending row)."""
        plus = self.unindexed
        rows = tx.execute(
            f"SELECT {CLAIM_COLUMNS}, next_attempt_at FROM outbox WHERE id > ? AND {plus}kind = ? "
            f"AND {plus}state = ? ORDER BY id LIMIT ?", (after, kind, PENDING, limit),
        ).fetchall()
        due = next((n for n, row in enumerate(rows) if row[-1] > now), len(rows))
        return [row[:-1] for row in rows[:due]]

    @staticmethod
    def _take_back_expired(tx: Tx, kind: str, now: float) -> None:
        """A kind's rows whose lease has ended, pending again (before a claim looks for due rows)."""
        tx.execute("UPDATE outbox SET state = ?, lease_owner = NULL, lease_expires_at = NULL "
                   "WHERE kind = ? AND state = ? AND lease_expires_at <= ?", (PENDING, kind, LEASED, now))

    @staticmethod
    def _past_ranges(tx: Tx, kind: str) -> int | None:
        return tx.execute("SELECT MAX(last_id) FROM delivery_ranges WHERE kind = ?",
                          (kind,)).fetchall()[0][0]

    def claim(
        self, kind: str, limit: int, owner: str, lease_seconds: float, now: float
    ) -> list[ClaimedItem]:
        """While ranges of the kind are open, a pending row within a range's bounds is left alone:
        it is the range's, or on PostgreSQL one that committed after the range was claimed, which
        waits for the range to be settled."""
        with self._write() as tx:
            self._lock_claims(tx, kind)
            top = self._past_ranges(tx, kind)
            if top is None:
                rows = self._claim_rows(tx, kind, limit, owner, lease_seconds, now)
            else:
                rows = self._claim_outside_ranges(tx, kind, limit, owner, lease_seconds, now, top)
        rows.sort()  # by id, the first column
        return list(map(ClaimedItem._make, rows))

    def _claim_outside_ranges(self, tx: Tx, kind: str, limit: int, owner: str, lease_seconds: float,
                              now: float, top: int) -> list[tuple[Any, ...]]:
        """The oldest due rows outside every range, looked for among the oldest ``RANGE_WINDOW``
        claims' worth (rows further back wait for the ranges before them to be settled), and the
        rows past the newest range."""
        self._take_back_expired(tx, kind, now)
        oldest = [row[0] for row in tx.execute(
            "SELECT id FROM (SELECT id, next_attempt_at FROM outbox WHERE kind = ? AND state = ? "
            "AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?) AS o WHERE NOT EXISTS "
            "(SELECT 1 FROM delivery_ranges r WHERE r.kind = ? AND r.last_id >= o.id "
            "AND r.first_id <= o.id) ORDER BY next_attempt_at, id LIMIT ?",
            (kind, PENDING, now, limit * RANGE_WINDOW, kind, limit)).fetchall()]
        if len(oldest) < limit:
            oldest += [row[0] for row in self._fresh_rows(tx, kind, top, limit - len(oldest), now)]
        rows: list[tuple[Any, ...]] = []
        for chunk in _chunks(oldest):
            rows += tx.execute(
                f"UPDATE outbox SET state = ?, lease_owner = ?, lease_expires_at = ? WHERE id IN "
                f"({_marks(len(chunk))}) AND state = ? RETURNING {CLAIM_COLUMNS}",
                (LEASED, owner, now + lease_seconds, *chunk, PENDING)).fetchall()
        return rows

    def claim_range(
        self, kind: str, limit: int, owner: str, lease_seconds: float, now: float, *, after: int = 0
    ) -> tuple[int | None, list[ClaimedItem]]:
        """``Store.claim_range``; the rows are read by id from past the newest range, or past
        ``after`` (the last id the caller claimed), so that rows already settled are not read."""
        with self._write() as tx:
            self._lock_claims(tx, kind)
            rows = self._fresh_rows(tx, kind, max(self._past_ranges(tx, kind) or 0, after), limit, now)
            if not rows:
                return None, []
            ids = [row[0] for row in rows]
            range_id = tx.execute(
                "INSERT INTO delivery_ranges (kind, first_id, last_id, item_ids, events, state, owner, "
                "lease_expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (kind, ids[0], ids[-1], json.dumps(ids), len(ids), LEASED, owner, now + lease_seconds,
                 now),
            ).fetchall()[0][0]
        return range_id, list(map(ClaimedItem._make, rows))

    def mark_range_delivered(self, range_id: int, outcomes: Sequence[Outcome], now: float,
                             owner: str, sent_batch: str) -> bool:
        if not outcomes:
            return True
        count = len(outcomes)
        with self._write() as tx:
            # the right-hand sides read the row as it was: delivered + ? is the new count
            if not tx.execute(
                "UPDATE delivery_ranges SET delivered = delivered + ?, "
                "state = CASE WHEN delivered + ? >= events THEN ? ELSE state END, "
                "owner = CASE WHEN delivered + ? >= events THEN NULL ELSE owner END, "
                "lease_expires_at = CASE WHEN delivered + ? >= events THEN NULL ELSE lease_expires_at END "
                "WHERE id = ? AND state = ? AND owner = ?",
                (count, count, DELIVERED, count, count, range_id, LEASED, owner),
            ).rowcount:
                return False
            self._keep_sent_batch(tx, sent_batch, outcomes, now, range_id)
        return True

    def dissolve_range(self, range_id: int, owner: str, lease_expires_at: float, now: float) -> None:
        with self._write() as tx:
            gone = tx.execute("DELETE FROM delivery_ranges WHERE id = ? AND state = ? AND owner = ? "
                              "RETURNING item_ids", (range_id, LEASED, owner)).fetchall()
            if not gone:
                return
            settled = self._settle_range(tx, range_id, None)
            rest = [item_id for item_id in json.loads(gone[0][0]) if item_id not in settled]
            for chunk in _chunks(rest):
                tx.execute(f"UPDATE outbox SET state = ?, lease_owner = ?, lease_expires_at = ? "
                           f"WHERE id IN ({_marks(len(chunk))}) AND state = ?",
                           (LEASED, owner, lease_expires_at, *chunk, PENDING))

    def renew_ranges(self, range_ids: Sequence[int], owner: str, lease_expires_at: float) -> int:
        if not range_ids:
            return 0
        with self._write() as tx:
            return tx.execute(
                f"UPDATE delivery_ranges SET lease_expires_at = ? WHERE id IN ({_marks(len(range_ids))}) "
                "AND state = ? AND owner = ?", (lease_expires_at, *range_ids, LEASED, owner)).rowcount

    def settle_ranges(self, limit: int, now: float,
                      labellers: Mapping[str, Callable[[str, str], tuple[str | None, str | None]]]
                      | None = None) -> int:
        settled = 0
        for range_id, events in self._rows(
                "SELECT id, events FROM delivery_ranges WHERE state = ? ORDER BY id LIMIT ?",
                (DELIVERED, 64)):
            if settled and settled + events > limit:
                break
            with self._write() as tx:  # one range a transaction: intake goes on between them
                if tx.execute("DELETE FROM delivery_ranges WHERE id = ? AND state = ? RETURNING id",
                              (range_id, DELIVERED)).fetchall():
                    self._settle_range(tx, range_id, labellers)
            settled += events
        return settled

    def _let_ranges_go(self, where: str, params: Sequence[Any]) -> int:
        """Delete the leased ranges ``where`` picks, settling what they delivered: their other
        items are pending as they always were, and due again."""
        ranges = self._rows(f"SELECT id FROM delivery_ranges WHERE state = ? AND {where}",
                            (LEASED, *params))
        let_go = 0
        for (range_id,) in ranges:
            with self._write() as tx:
                if tx.execute(f"DELETE FROM delivery_ranges WHERE id = ? AND state = ? AND {where} "
                              "RETURNING id", (range_id, LEASED, *params)).fetchall():
                    self._settle_range(tx, range_id, None)
                    let_go += 1
        return let_go

    def _settle_range(self, tx: Tx, range_id: int,
                      labellers: Mapping[str, Callable[[str, str], tuple[str | None, str | None]]]
                      | None) -> set[int]:
        """Write each delivered batch of a range onto its rows (with labels, given labellers);
        the ids so settled."""
        settled: set[int] = set()
        outcome = f"{DELIVERED_SET}, sent_batch = ?, sent = NULL"
        for batch_id, item_ids, status, response, latency_ms, at in tx.execute(
                f"{RANGE_BATCHES} WHERE range_id = ?", (range_id,)).fetchall():
            ids = json.loads(item_ids)
            settled.update(ids)
            answer = (DELIVERED, at, status, response, latency_ms, batch_id)
            if labellers is None:
                for chunk in _chunks(ids):
                    tx.execute(f"UPDATE outbox SET {outcome} WHERE id IN ({_marks(len(chunk))}) "
                               "AND state = ?", (*answer, *chunk, PENDING))
                continue
            labelled = []
            for chunk in _chunks(ids):
                for item_id, kind, payload, key in tx.execute(
                        f"SELECT id, kind, payload, dedupe_key FROM outbox WHERE id IN "
                        f"({_marks(len(chunk))}) AND state = ?", (*chunk, PENDING)).fetchall():
                    labeller = labellers.get(kind)
                    recipient, ref = labeller(payload, key) if labeller and payload else (None, None)
                    labelled.append((*answer, _label(recipient) or "", _label(ref), item_id, PENDING))
            tx.executemany(f"UPDATE outbox SET {outcome}, recipient = ?, message_ref = ? "
                           "WHERE id = ? AND state = ?", labelled)
        return settled

    def _in_ranges(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pending rows that are items of an open range, as the range has them: delivered (by one
        of its batches, with that batch's answer) or leased."""
        pending = [row["id"] for row in rows if row.get("state") == PENDING]
        if not pending:
            return rows
        ranges = self._rows("SELECT id, item_ids FROM delivery_ranges WHERE first_id <= ? AND last_id >= ?",
                            (max(pending), min(pending)))
        if not ranges:
            return rows
        members: dict[int, int] = {}
        for range_id, item_ids in ranges:
            members.update(dict.fromkeys(json.loads(item_ids), range_id))
        wanted = sorted({members[i] for i in pending if i in members})
        done: dict[int, tuple[Any, ...]] = {}
        for chunk in _chunks(wanted):
            for batch_id, item_ids, status, response, latency_ms, at in self._rows(
                    f"{RANGE_BATCHES} WHERE range_id IN ({_marks(len(chunk))})", chunk):
                done.update(dict.fromkeys(json.loads(item_ids),
                                          (batch_id, status, response, latency_ms, at)))
        for row in rows:
            if row.get("state") != PENDING or row["id"] not in members:
                continue
            if row["id"] not in done:
                row["state"] = LEASED
                continue
            batch_id, status, response, latency_ms, at = done[row["id"]]
            row.update(state=DELIVERED, sent_batch=batch_id, last_status=status, last_response=response,
                       latency_ms=latency_ms, finished_at=at, last_error=None,
                       attempts=row.get("attempts", 0) + 1)
        return rows

    def release(
        self, ids: Sequence[int], owner: str, next_attempt_at: float, error: str | None,
        *, count_attempt: bool = True, status: int | None = None, now: float | None = None,
    ) -> None:
        with self._write() as tx:
            for chunk in _chunks(ids):
                if error is not None:  # tried, or the round failed: kept for the debugger. The
                    # slot is attempts modulo ATTEMPTS_KEPT (no ``%``: psycopg reads it as a placeholder)
                    tx.execute(
                        "INSERT INTO attempts (item_id, slot, at, status, error) "
                        "SELECT id, attempts - attempts / ? * ?, ?, ?, ? FROM outbox "
                        f"WHERE id IN ({_marks(len(chunk))}) AND state = ? AND lease_owner = ? "
                        "ON CONFLICT (item_id, slot) DO UPDATE SET at = excluded.at, "
                        "status = excluded.status, error = excluded.error",
                        (ATTEMPTS_KEPT, ATTEMPTS_KEPT, next_attempt_at if now is None else now, status,
                         _text(error), *chunk, LEASED, owner),
                    )
                tx.execute(
                    "UPDATE outbox SET state = ?, next_attempt_at = ?, last_error = ?, "
                    "last_status = ?, attempts = attempts + ?, lease_owner = NULL, "
                    f"lease_expires_at = NULL WHERE id IN ({_marks(len(chunk))}) AND state = ? "
                    "AND lease_owner = ?",
                    (PENDING, next_attempt_at, _text(error), status, int(count_attempt), *chunk,
                     LEASED, owner),
                )

    def renew(self, ids: Sequence[int], owner: str, lease_expires_at: float) -> int:
        renewed = 0
        with self._write() as tx:
            for chunk in _chunks(ids):
                renewed += tx.execute(
                    f"UPDATE outbox SET lease_expires_at = ? WHERE id IN ({_marks(len(chunk))}) "
                    "AND state = ? AND lease_owner = ?",
                    (lease_expires_at, *chunk, LEASED, owner),
                ).rowcount
        return renewed

    def recover_expired(self, kind: str, now: float) -> int:
        """Rows and ranges whose lease expired, given back (a range's delivered batches settled)."""
        return self._let_ranges_go("kind = ? AND lease_expires_at <= ?", (kind, now)) + \
            self._recover_expired_rows(kind, now)

    def _recover_expired_rows(self, kind: str, now: float) -> int:
        expired = self._rows(
            "SELECT 1 FROM outbox WHERE kind = ? AND state = ? AND lease_expires_at <= ? LIMIT 1",
            (kind, LEASED, now),
        )
        if not expired:  # the usual case: a read, no write transaction
            return 0
        with self._write() as tx:
            return tx.execute(
                "UPDATE outbox SET state = ?, next_attempt_at = ?, lease_owner = NULL, "
                "lease_expires_at = NULL WHERE kind = ? AND state = ? AND lease_expires_at <= ?",
                (PENDING, now, kind, LEASED, now),
            ).rowcount

    def make_due(self, kind: str, now: float) -> int:
        with self._write() as tx:
            return tx.execute(
                "UPDATE outbox SET next_attempt_at = created_at "
                "WHERE kind = ? AND state = ? AND next_attempt_at > ?",
                (kind, PENDING, now),
            ).rowcount

    def release_owner(self, owner: str, now: float) -> int:
        """Give back every lease this owner holds, due now (a clean shutdown)."""
        self._let_ranges_go("owner = ?", (owner,))
        with self._write() as tx:
            return tx.execute(
                "UPDATE outbox SET state = ?, next_attempt_at = ?, lease_owner = NULL, "
                "lease_expires_at = NULL WHERE state = ? AND lease_owner = ?",
                (PENDING, now, LEASED, owner),
            ).rowcount

    def mark_dead(self, outcomes: Iterable[Outcome], owner: str, now: float) -> None:
        with self._write() as tx:
            tx.executemany(
                "UPDATE outbox SET state = ?, finished_at = ?, sent = ?, sent_batch = NULL, "
                "last_status = ?, last_response = ?, latency_ms = ?, last_error = ?, "
                "attempts = attempts + 1, "
                "lease_owner = NULL, lease_expires_at = NULL, recipient = ?, message_ref = ? "
                "WHERE id = ? AND state = ? AND lease_owner = ?",
                [(DEAD, now, _text(o.sent), o.status, _text(o.response), o.latency_ms, _text(o.error),
                  _label(o.recipient), _label(o.message_ref), o.id, LEASED, owner) for o in outcomes],
            )

    def add_dead_letters(self, entries: Sequence[DeadLetter], now: float) -> None:
        with self._write() as tx:
            self._insert_dead(tx, entries, now)

    @staticmethod
    def _insert_dead(tx: Tx, entries: Sequence[DeadLetter], now: float) -> None:
        tx.executemany(
            "INSERT INTO outbox (kind, dedupe_key, event_type, payload, state, next_attempt_at, "
            "last_error, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, event_time, dedupe_key) DO NOTHING",
            [(e.kind, _text(e.dedupe_key), e.event_type, _text(e.payload), DEAD, now, _text(e.reason),
              now, now) for e in entries],
        )

    def _lookup(self, sql: str, keys: Iterable[str]) -> dict[str, str]:
        """Run ``sql`` (with one ``IN ({marks})``) over ``keys`` in chunks; later rows win."""
        wanted = sorted(key for key in set(keys) if _storable(key))  # a NUL key matches nothing stored
        found: dict[str, str] = {}
        for chunk in _chunks(wanted):
            for row in self._rows(sql.format(marks=_marks(len(chunk))), chunk):
                found[row[0]] = row[1]
        return found

    def user_ids_for(self, emails: Iterable[str]) -> dict[str, str]:
        return self._lookup("SELECT email, user_id FROM identities WHERE email IN ({marks})", emails)

    def emails_for(self, user_ids: Iterable[str]) -> dict[str, str]:
        return self._lookup(
            "SELECT user_id, email FROM identities WHERE user_id IN ({marks}) ORDER BY updated_at",
            user_ids,
        )

    def get_setting(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def put_setting(self, key: str, value: str, now: float, *, only_if_absent: bool = False) -> bool:
        conflict = "DO NOTHING" if only_if_absent else (
            "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
        )
        with self._write() as tx:
            return tx.execute(
                "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?) "
                f"ON CONFLICT (key) {conflict}",
                (key, value, now),
            ).rowcount > 0

    def delete_setting(self, key: str) -> bool:
        with self._write() as tx:
            return tx.execute("DELETE FROM settings WHERE key = ?", (key,)).rowcount > 0

    def stats(self, now: float, stuck_after: float = 300.0, *,
              count_limit: int | None = None) -> dict[str, Any]:
        """Every query walks the ``(kind, state, ...)`` index a kind and state at a time, so a
        backlog costs index steps, not a scan of the table; with ``count_limit`` each count stops
        there, and a probe costs the same with any backlog."""
        kinds = [row[0] for row in self._rows(KINDS_SQL)]
        counts = {state: 0 for state in (PENDING, LEASED, DELIVERED, DEAD)}
        stuck = {"leased_past_lease": 0, "due_unclaimed": 0}
        oldest = None
        cap = _limit(count_limit)
        if kinds:
            kind_in = f"kind IN ({_marks(len(kinds))})"
            # open ranges: their rows are pending on disk, and neither waiting nor stuck
            ranges = [r for r in self._rows(
                "SELECT kind, SUM(events), SUM(delivered), MIN(first_id), MAX(last_id), "
                "SUM(CASE WHEN state = ? AND lease_expires_at <= ? THEN events - delivered ELSE 0 END) "
                "FROM delivery_ranges GROUP BY kind", (LEASED, now)) if r[0] in kinds]
            outside, bounds = "", ()
            if ranges:
                outside = " AND (id < ? OR id > ?)"
                bounds = (min(r[3] for r in ranges), max(r[4] for r in ranges))
            counted = [(state, f"{kind_in} AND state = ?", (*kinds, state)) for state in counts]
            counted += [
                ("leased_past_lease", f"{kind_in} AND state = ? AND lease_expires_at <= ?",
                 (*kinds, LEASED, now)),
                ("due_unclaimed", f"{kind_in} AND state = ? AND next_attempt_at <= ?{outside}",
                 (*kinds, PENDING, now - stuck_after, *bounds)),
            ]
            row = self._rows(
                "SELECT " + ", ".join(
                    f"(SELECT COUNT(*) FROM (SELECT 1 FROM outbox WHERE {where} LIMIT ?) AS c{n})"
                    for n, (_, where, _) in enumerate(counted)),
                [value for _, _, params in counted for value in (*params, cap)],
            )[0]
            for (name, _, _), count in zip(counted, row, strict=True):
                if name in counts:
                    counts[name] = int(count)
                else:
                    stuck[name] = int(count)
            capped = {name for name, count in counts.items() if count >= cap}
            for _, events, delivered, _, _, expired in ranges:
                counts[PENDING] -= int(events)
                counts[LEASED] += int(events) - int(delivered)
                counts[DELIVERED] += int(delivered)
                stuck["leased_past_lease"] += int(expired)
            for name, count in counts.items():  # a count that reached the limit stays at it
                counts[name] = cap if name in capped else min(max(count, 0), cap)
            waiting = counts[PENDING] + counts[LEASED]
            if waiting and (count_limit is not None or waiting <= counts[DELIVERED] + counts[DEAD]):
                # the waiting rows through the index (all of them, or the first count_limit)
                oldest = self._rows(
                    f"SELECT MIN(created_at) FROM (SELECT created_at FROM outbox WHERE {kind_in} "
                    f"AND state IN (?, ?){outside} LIMIT ?) AS w",
                    (*kinds, PENDING, LEASED, *bounds, cap))[0][0]
            elif waiting:
                # most rows wait: the oldest rows first (outbox_created) soon finds one
                oldest = self._rows(f"SELECT MIN(created_at) FROM outbox WHERE state IN (?, ?){outside}",
                                    (PENDING, LEASED, *bounds))[0][0]
        quarantined = self._rows(
            "SELECT COUNT(*) FROM (SELECT 1 FROM quarantine LIMIT ?) AS q", (cap,))[0][0]
        result = {
            **counts,
            "quarantined": int(quarantined),
            "oldest_pending_age_seconds": round(now - oldest, 3) if oldest is not None else None,
            "stuck": stuck,
        }
        if count_limit is not None:
            result["counted_up_to"] = count_limit
        return result

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._with_sent(self._dicts(
            "SELECT id, kind, event_type, payload, sent, sent_batch, last_error, last_status, "
            "last_response, attempts, finished_at FROM outbox WHERE state = ? "
            "ORDER BY finished_at DESC, id DESC LIMIT ?",
            (DEAD, limit),
        ))

    def quarantine_entries(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._dicts(
            "SELECT id, source, body, errors, received_at FROM quarantine ORDER BY id DESC LIMIT ?",
            (limit,),
        )

    def item(self, item_id: int) -> dict[str, Any] | None:
        rows = self._with_sent(self._dicts(f"SELECT {ITEM_COLUMNS} FROM outbox WHERE id = ?",
                                           (item_id,)))
        return rows[0] if rows else None

    def recent(self, limit: int = 50, *, kind: str | None = None, event_type: str | None = None,
               state: str | None = None) -> list[dict[str, Any]]:
        where, params = [], []
        for column, value in (("kind", kind), ("event_type", event_type), ("state", state)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._with_sent(self._dicts(
            f"SELECT {ITEM_COLUMNS} FROM outbox {clause}ORDER BY id DESC LIMIT ?", (*params, limit)))
        # a pending row of an open range reads as the range has it (rows it delivered that are not
        # settled yet are pending on disk, and missing from a filter on another state until then)
        return [row for row in rows if not state or row["state"] == state]

    def find(self, *, recipient: str | None = None, message_ref: str | None = None,
             dedupe_key: str | None = None, text: str | None = None, kinds: Sequence[str] = (),
             limit: int = 100) -> list[dict[str, Any]]:
        """Indexed reads only: the labelled rows by the partial indexes of migration 0005, and the
        rows not labelled yet, whose payload is scanned: the open and dead ones of ``kinds``
        (``outbox_due``) and the delivered ones the janitor has yet to label (``outbox_to_label``,
        a few seconds' worth, more after a backlog). Labelled delivered rows, the bulk of a large
        outbox, are never scanned."""
        parts, params = [], []
        for sql, value in (("recipient = ?", recipient), ("message_ref = ?", message_ref),
                           ("dedupe_key = ? AND recipient IS NOT NULL", dedupe_key)):
            if value is not None and _storable(value):
                parts.append(f"SELECT id FROM outbox WHERE {sql}")
                params.append(value)
        found: dict[int, dict[str, Any]] = {}
        if parts:
            for row in self._dicts(f"SELECT {ITEM_COLUMNS} FROM outbox WHERE id IN "
                                   f"({' UNION '.join(parts)}) ORDER BY id DESC LIMIT ?",
                                   (*params, limit)):
                found[row["id"]] = row
        if text and kinds and _storable(text):
            match = "(LOWER(payload) LIKE ? ESCAPE '\\' OR dedupe_key = ?) ORDER BY id DESC LIMIT ?"
            wanted = (_contains(text), dedupe_key or "", limit)
            open_or_dead = self._dicts(
                f"SELECT {ITEM_COLUMNS} FROM outbox WHERE kind IN ({_marks(len(kinds))}) "
                f"AND state IN (?, ?, ?) AND recipient IS NULL AND {match}",
                (*kinds, PENDING, LEASED, DEAD, *wanted))
            # the delivered rows the janitor has yet to label, by outbox_to_label alone (its
            # condition spelled out, as a partial index needs; a kind here would pick outbox_due,
            # which holds every delivered row)
            to_label = self._dicts(
                f"SELECT {ITEM_COLUMNS} FROM outbox WHERE state = 'delivered' AND recipient IS NULL "
                f"AND {match}", wanted)
            for row in [*open_or_dead, *(row for row in to_label if row["kind"] in kinds)]:
                found[row["id"]] = row
        return self._with_sent(sorted(found.values(), key=lambda row: -row["id"])[:limit])

    def to_label(self, limit: int) -> list[dict[str, Any]]:
        """Delivered rows without search labels yet, oldest first (``outbox_to_label``)."""
        return self._dicts(
            "SELECT id, kind, payload, dedupe_key FROM outbox "
            "WHERE state = 'delivered' AND recipient IS NULL ORDER BY id LIMIT ?", (limit,))

    def label(self, labels: Sequence[tuple[int, str | None, str | None]]) -> None:
        """Set each row's labels; a row with no recipient to show gets ``''`` (never searched for),
        so it leaves the rows still to label."""
        rows = [(_label(recipient) or "", _label(ref), item_id) for item_id, recipient, ref in labels]
        for start in range(0, len(rows), ROWS_PER_STATEMENT):  # short transactions: intake goes on
            with self._write() as tx:
                tx.executemany("UPDATE outbox SET recipient = ?, message_ref = ? "
                               "WHERE id = ? AND recipient IS NULL",
                               rows[start : start + ROWS_PER_STATEMENT])

    def find_quarantined(self, text: str, limit: int = 100) -> list[dict[str, Any]]:
        if not _storable(text):
            return []
        return self._dicts(
            "SELECT id, source, body, errors, received_at FROM quarantine "
            "WHERE LOWER(body) LIKE ? ESCAPE '\\' ORDER BY id DESC LIMIT ?",
            (_contains(text), limit),
        )

    def attempts(self, item_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        kept: dict[int, list[dict[str, Any]]] = {}
        for chunk in _chunks(sorted(set(item_ids))):
            for row in self._dicts(
                "SELECT item_id, at, status, error FROM attempts "
                f"WHERE item_id IN ({_marks(len(chunk))}) ORDER BY item_id, at", chunk,
            ):
                kept.setdefault(row.pop("item_id"), []).append(row)
        return kept

    def dead_ids(self, after_id: int = 0, limit: int = 1000) -> list[int]:
        rows = self._rows("SELECT id FROM outbox WHERE state = ? AND id > ? ORDER BY id LIMIT ?",
                          (DEAD, after_id, limit))
        return [row[0] for row in rows]

    def requeue(self, ids: Sequence[int], now: float,
                rewrite: Mapping[int, tuple[str, str]] | None = None) -> int:
        with self._write() as tx:
            requeued = tx.executemany(
                "UPDATE outbox SET state = ?, next_attempt_at = ?, attempts = 0, last_error = NULL, "
                "finished_at = NULL, lease_owner = NULL, lease_expires_at = NULL, replayed = 1 "
                "WHERE id = ? AND state = ?",
                [(PENDING, now, i, DEAD) for i in ids],
            )
            if rewrite:
                tx.executemany("UPDATE outbox SET kind = ?, payload = ? WHERE id = ?",
                               [(kind, payload, i) for i, (kind, payload) in rewrite.items()])
        return requeued

    def quarantine_entry(self, entry_id: int) -> dict[str, Any] | None:
        rows = self._dicts("SELECT id, source, body, errors, received_at FROM quarantine WHERE id = ?",
                           (entry_id,))
        return rows[0] if rows else None

    def remove_quarantine(self, ids: Sequence[int]) -> None:
        with self._write() as tx:
            tx.executemany("DELETE FROM quarantine WHERE id = ?", [(i,) for i in ids])

    def timeline(self, since: float, kinds: Sequence[str], bucket_seconds: int = 60,
                 ) -> list[tuple[float, str, int]]:
        if not kinds:
            return []
        rows = self._rows(
            f"SELECT {self.bucket_sql} AS bucket, COALESCE(event_type, '') AS kind, COUNT(*) "
            f"FROM outbox WHERE created_at >= ? AND kind IN ({','.join('?' * len(kinds))}) "
            "GROUP BY 1, 2 ORDER BY 1",
            (bucket_seconds, bucket_seconds, since, *kinds),
        )
        return [(float(r[0]), r[1], r[2]) for r in rows]

    def latencies(self, since: float, limit: int = 20_000) -> list[float]:
        rows = self._rows(
            "SELECT latency_ms FROM outbox WHERE state = ? AND finished_at >= ? "
            "AND latency_ms IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            (DELIVERED, since, limit),
        )
        return [row[0] for row in rows]

    def login_failures(self, client: str, since: float, now: float, *, record: bool = False) -> int:
        if record:
            with self._write() as tx:
                tx.execute("INSERT INTO login_failures (client, at) VALUES (?, ?)", (client, now))
                tx.execute("DELETE FROM login_failures WHERE at < ?", (since,))
        return self._rows("SELECT COUNT(*) FROM login_failures WHERE client = ? AND at >= ?",
                          (client, since))[0][0]

    def open_session(self, session_id: str, credential: str, now: float, *, older_than: float) -> None:
        with self._write() as tx:
            tx.execute("DELETE FROM admin_sessions WHERE created_at < ?", (older_than,))
            tx.execute("INSERT INTO admin_sessions (id, credential, created_at, seen_at) VALUES (?, ?, ?, ?)",
                       (session_id, credential, now, now))

    def session_alive(self, session_id: str, credential: str, now: float, *, created_after: float,
                      seen_after: float) -> bool:
        rows = self._rows("SELECT credential, created_at, seen_at FROM admin_sessions WHERE id = ?",
                          (session_id,))
        if not rows:
            return False
        stored, created_at, seen_at = rows[0]
        if stored != credential or created_at < created_after or seen_at < seen_after:
            return False
        if now - seen_at >= SESSION_TOUCH_SECONDS:  # not a write per page view
            with self._write() as tx:
                tx.execute("UPDATE admin_sessions SET seen_at = ? WHERE id = ?", (now, session_id))
        return True

    def end_session(self, session_id: str) -> None:
        with self._write() as tx:
            tx.execute("DELETE FROM admin_sessions WHERE id = ?", (session_id,))

    def clear_login_failures(self, client: str) -> None:
        with self._write() as tx:
            tx.execute("DELETE FROM login_failures WHERE client = ?", (client,))

    def compact_delivered(self, before: float, batch: int = 1000) -> int:
        """Drop the payloads of delivered rows finished before ``before``, keeping their keys, and
        the sent batches kept before then (a batch is kept as its rows are marked delivered)."""
        compacted = 0
        while True:
            with self._write() as tx:
                count = tx.execute(
                    "UPDATE outbox SET payload = '', sent = NULL, sent_batch = NULL, "
                    "last_response = NULL WHERE id IN (SELECT id FROM outbox WHERE state = ? "
                    "AND finished_at < ? AND payload != '' ORDER BY id LIMIT ?)",
                    (DELIVERED, before, batch),
                ).rowcount
            compacted += count
            if count < batch:
                break
        self._drop_sent_batches(before, batch)
        return compacted

    def _drop_sent_batches(self, before: float, batch: int) -> None:
        """Delete the sent batches kept before ``before``, a few per transaction (each is up to
        half a megabyte), but those of a range not settled yet. A row still pointing to one shows
        no sent text, as a compacted row."""
        while True:
            with self._write() as tx:
                count = tx.execute(
                    "DELETE FROM sent_batches WHERE id IN (SELECT id FROM sent_batches "
                    "WHERE created_at < ? AND (range_id IS NULL OR range_id NOT IN "
                    "(SELECT id FROM delivery_ranges)) ORDER BY created_at LIMIT ?)",
                    (before, max(1, batch // 100)),
                ).rowcount
            if count < max(1, batch // 100):
                return

    def newest_applied(self, emails: Iterable[str]) -> dict[str, float]:
        return {email: float(ts) for email, ts in self._lookup(
            "SELECT email, applied_ts FROM contact_versions WHERE email IN ({marks})", emails).items()}

    def record_applied(self, versions: Mapping[str, float], now: float) -> None:
        if not versions:
            return
        with self._write() as tx:
            tx.executemany(
                "INSERT INTO contact_versions (email, applied_ts, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (email) DO UPDATE SET applied_ts = excluded.applied_ts, "
                "updated_at = excluded.updated_at WHERE excluded.applied_ts > contact_versions.applied_ts",
                [(email, ts, now) for email, ts in sorted(versions.items()) if _storable(email)],
            )

    def prune_delivered(self, before: float, batch: int = 1000) -> int:
        """Delete delivered rows finished before ``before``, one small batch per transaction."""
        removed = 0
        while True:
            with self._write() as tx:
                doomed = ("(SELECT id FROM outbox WHERE state = ? AND finished_at < ? ORDER BY id "
                          "LIMIT ?)", (DELIVERED, before, batch))
                tx.execute(f"DELETE FROM attempts WHERE item_id IN {doomed[0]}", doomed[1])
                count = tx.execute(f"DELETE FROM outbox WHERE id IN {doomed[0]}", doomed[1]).rowcount
            removed += count
            if count < batch:
                return removed

    def ping(self) -> None:
        self._rows("SELECT 1")


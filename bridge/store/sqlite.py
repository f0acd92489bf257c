"""The embedded SQLite store: WAL, ``synchronous=FULL`` (every commit is fsync'd), one writer thread.

Throughput with fsync comes from GROUP COMMIT: every write is an operation queued to the single writer
thread, which takes all operations waiting, runs them in one transaction and commits once; the callers'
futures are resolved only after that COMMIT returned. One failing operation fails alone: the
transaction is rolled back and the batch run again with each operation in its own SAVEPOINT (operations
are functions of the database alone, so the others give the same results; a savepoint costs two
statements per operation, so only a failed batch pays for them). The file is locked (``flock`` on
``PATH.lock``) so two bridges never deliver from the same outbox. Reads for /metrics use a second
connection (WAL readers do not wait for the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bridge.acksync import Ack, Changes, SyncState
from bridge.alertmanager import Notification
from bridge.audit import AuditEntry
from bridge.decisions import Group, Incident, Lookup, Occurrence, Policy, State
from bridge.pagerduty_webhook import WebhookEvent
from bridge.sinks.base import OutboxItem
from bridge.store import acks_sqlite, acksync_script, ingest
from bridge.store.base import (
    AuditQuery,
    DeadLetterRow,
    IngestResult,
    OutboxStats,
    Receipt,
    StoreError,
)
from bridge.store.ingest import GROUP_COLS, Conflict, GroupRow, LoadState, RecordReceipt, Write, decode_group
from bridge.store.migrations import AUDIT_VERSION, migrate, schema_version

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 512  # operations per group commit; bounds one transaction's latency
_CHUNK = 400  # parameters per IN (...) list (two lists share a statement: under SQLite's old 999)
ABANDONED = 1.0  # the lease of an item a crashed process had claimed: over, and not 0 (never handed out)
_RETRY_SQL = (
    "UPDATE outbox SET attempts = attempts + ?, next_attempt_at = ?, lease_until = 0, last_error = ? WHERE id = ?"
)
_INCIDENT_COLS = "key, scope, event_class, route, open, trigger, updated_at, grp"
_AUDIT_SQL = (
    "INSERT INTO audit (at, incident_key, side, actor, action, detail, certificate, environment, event_class,"
    " issuer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DEAD_LETTER_SQL = (
    "INSERT INTO dead_letters (id, sink, ordering_key, payload, attempts, created_at, dead_at, status, error)"
    " SELECT id, sink, ordering_key, payload, attempts + ?, created_at, ?, ?, ? FROM outbox WHERE id = ?"
)


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


_Outcome = tuple[_Op, Any, BaseException | None]  # (operation, result, failure)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: the hot B-tree pages stay in memory
    return conn


class SqliteStore:
    """The SQLite store (see module docstring). ``open()`` before use, ``close()`` after."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._lock_fd: int | None = None
        self.commits = 0  # group commits done (for tests and the benchmark)

    @property
    def is_open(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def open(self) -> None:
        """Lock the file, apply migrations, release stale leases and start the writer thread."""
        if self.is_open:
            return
        try:
            await asyncio.to_thread(self._open_sync)
        except (OSError, sqlite3.Error, RuntimeError) as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._thread = threading.Thread(target=self._run, name="certpager-store-writer", daemon=True)
        self._thread.start()

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The file a symlink points to is the one locked: two names for one outbox must not mean two writers.
        fd = os.open(f"{self.path.resolve()}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError("another bridge process holds it (only one may deliver from an outbox)") from None
        self._lock_fd = fd
        self._writer = _connect(self.path)
        migrate(self._writer)
        # This process owns the file: leases from a previous (crashed) process are void. They end now but
        # stay non-zero (ABANDONED): an item handed out and never reported back was held up, as a retry is.
        self._writer.execute("UPDATE outbox SET lease_until = ? WHERE lease_until != 0", (ABANDONED,))
        self._reader = _connect(self.path)

    async def close(self) -> None:
        """Finish queued operations, stop the writer and unlock the file."""
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
        self._writer = self._reader = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self.is_open:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, future, loop))
        return await future

    def _run(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
            batch = [op]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[_Op]) -> None:
        conn = self._writer
        assert conn is not None
        outcomes: list[_Outcome] | None
        try:
            outcomes = _transaction(conn, batch)
            if outcomes is None:  # one operation failed: again, each in its own savepoint
                outcomes = _isolated_transaction(conn, batch)
            self.commits += 1
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.error("store commit failed", extra={"kv": {"err": str(exc), "operations": len(batch)}})
            error: BaseException = StoreError(f"store commit failed: {exc}")
            outcomes = [(op, None, error) for op in batch]
        # One wake-up per event loop per batch, not one per operation.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
        for op, result, failure in outcomes:
            by_loop.setdefault(op.loop, []).append((op.future, result, failure))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle_all, settled)

    # --- inbound -------------------------------------------------------------------------------------

    async def ingest(
        self, receipt: Receipt, notification: Notification, policy: Policy, *, sinks: Sequence[str]
    ) -> IngestResult:
        """Record the webhook, decide and queue the events, in one transaction (see base.Store)."""
        def op(conn: sqlite3.Connection) -> IngestResult:
            # A fresh script per run: a failed batch runs its operations again (see _commit).
            return ingest.run(ingest.script(receipt, notification, policy, sinks), _SqliteIngest(conn))

        return await self._submit(op)

    # --- ack sync ------------------------------------------------------------------------------------

    async def record_pagerduty_webhook(self, receipt: Receipt, event: WebhookEvent) -> bool:
        return await self._submit(lambda conn: acks_sqlite.record_webhook(conn, receipt, event))

    async def sync(
        self, keys: Sequence[str] | None, decide: Callable[[SyncState], Changes | str], *, now: float,
        webhook_id: str | None = None,
    ) -> Changes | str:
        def op(conn: sqlite3.Connection) -> Changes | str:
            steps = acksync_script.script(keys, decide, now=now, webhook_id=webhook_id)
            return acksync_script.run(steps, acks_sqlite.SqliteAckSql(conn))

        return await self._submit(op)

    async def record_silence(self, key: str, silence_id: str, alertmanager: str, *, now: float) -> None:
        await self._submit(lambda conn: acks_sqlite.record_silence(conn, key, silence_id, alertmanager, now))

    async def live_silences(self, key: str) -> list[tuple[str, str]]:
        return await self._submit(lambda conn: acks_sqlite.live_silences(conn, key))

    async def silence_expired(self, key: str, silence_id: str, *, now: float) -> None:
        await self._submit(lambda conn: acks_sqlite.silence_expired(conn, key, silence_id, now))

    async def ack_state(self, key: str) -> Ack | None:
        return await self._submit(lambda conn: acks_sqlite.ack_of(conn, key))

    # --- outbox --------------------------------------------------------------------------------------

    async def claim(self, sink: str, *, now: float, limit: int, lease: float) -> list[OutboxItem]:
        """Due head-of-key items, leased (see base.Store)."""
        return await self._submit(lambda conn: _claim(conn, sink, now, limit, lease))

    async def next_due(self, sink: str, *, now: float) -> float | None:
        def query(conn: sqlite3.Connection) -> float | None:
            # Heads of keys only: an item behind an in-flight head is not claimable, however due it is.
            row = conn.execute(
                "SELECT next_attempt_at FROM outbox AS o WHERE sink = ? AND lease_until <= ?"
                " AND NOT EXISTS (SELECT 1 FROM outbox AS p WHERE p.sink = o.sink AND p.ordering_key = o.ordering_key"
                " AND p.id < o.id) ORDER BY next_attempt_at LIMIT 1",
                (sink, now),
            ).fetchone()
            return None if row is None else float(row[0])

        return await self._submit(query)

    async def mark_delivered(self, item_id: int, *, audit: Sequence[AuditEntry] = ()) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            conn.executemany(_AUDIT_SQL, [_audit_row(e) for e in audit])

        await self._submit(op)

    async def retry_at(
        self, item_id: int, *, at: float, error: str, attempted: bool = True, audit: Sequence[AuditEntry] = ()
    ) -> None:
        await self.retry_many([(item_id, at, error)], attempted=attempted, audit=audit)

    async def retry_many(
        self, retries: Sequence[tuple[int, float, str]], *, attempted: bool = True, audit: Sequence[AuditEntry] = ()
    ) -> None:
        rows = [(int(attempted), at, error, item_id) for item_id, at, error in retries]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(_RETRY_SQL, rows)
            conn.executemany(_AUDIT_SQL, [_audit_row(e) for e in audit])

        await self._submit(op)

    async def dead_letter(
        self, item_id: int, *, error: str, status: int, now: float, audit: Sequence[AuditEntry] = ()
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            _move_to_dead_letters(conn, item_id, error, status, now, attempted=True)
            conn.executemany(_AUDIT_SQL, [_audit_row(e) for e in audit])

        await self._submit(op)

    async def prune(self, *, before: float, audit_before: float | None = None) -> int:
        cutoff = before if audit_before is None else audit_before
        return await self._submit(lambda conn: _prune(conn, before, cutoff))

    async def lead(self, role: str) -> bool:
        """Always True while open: this process holds the file's lock, so it is the only replica."""
        return self.is_open

    # --- reads ---------------------------------------------------------------------------------------

    def outbox_stats(self) -> OutboxStats:
        """Depth, oldest item and dead letters per sink, from the read connection."""
        if self._reader is None:
            return OutboxStats()
        with self._reader_lock:
            rows = self._reader.execute("SELECT sink, COUNT(*), MIN(created_at) FROM outbox GROUP BY sink").fetchall()
            dead = self._reader.execute("SELECT sink, COUNT(*) FROM dead_letters GROUP BY sink").fetchall()
        return OutboxStats(
            depth={r[0]: int(r[1]) for r in rows},
            oldest_created_at={r[0]: float(r[2]) for r in rows},
            dead_letters={r[0]: int(r[1]) for r in dead},
        )

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetterRow]:
        """The newest dead letters first."""
        if self._reader is None:
            return []
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT id, sink, ordering_key, error, status, attempts, dead_at FROM dead_letters"
                " ORDER BY dead_at DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadLetterRow(*row) for row in rows]

    async def record_audit(self, entries: Sequence[AuditEntry]) -> None:
        rows = [_audit_row(e) for e in entries]
        if rows:
            await self._submit(lambda conn: conn.executemany(_AUDIT_SQL, rows))

    async def audit_trail(
        self, key: str | None = None, *, certificate: str | None = None, since: float | None = None,
        until: float | None = None, limit: int | None = None,
    ) -> list[AuditEntry]:
        """From the read connection (see base.Store)."""
        reader = self._reader
        if reader is None:
            raise StoreError("store is not open")
        query = AuditQuery(key, certificate, since, until, limit)

        def read() -> list[AuditEntry]:
            with self._reader_lock:
                return read_audit(reader, query)

        return await asyncio.to_thread(read)

    def pending(self, sink: str | None = None) -> list[OutboxItem]:
        """Every queued item in id order (for tests and operators)."""
        if self._reader is None:
            return []
        sql = "SELECT id, sink, ordering_key, payload, attempts, created_at FROM outbox"
        args: tuple[str, ...] = ()
        if sink is not None:
            sql, args = sql + " WHERE sink = ?", (sink,)
        with self._reader_lock:
            rows = self._reader.execute(sql + " ORDER BY id", args).fetchall()
        return [_item(row) for row in rows]


def _settle_all(settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in settled:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _transaction(conn: sqlite3.Connection, batch: list[_Op]) -> list[_Outcome] | None:
    """Run and commit ``batch``; None (rolled back) as soon as one operation fails."""
    conn.execute("BEGIN IMMEDIATE")
    outcomes: list[_Outcome] = []
    for op in batch:
        try:
            outcomes.append((op, op.fn(conn), None))
        except Exception:
            with contextlib.suppress(sqlite3.Error):  # some errors already ended the transaction
                conn.execute("ROLLBACK")
            return None
    conn.execute("COMMIT")
    return outcomes


def _isolated_transaction(conn: sqlite3.Connection, batch: list[_Op]) -> list[_Outcome]:
    """Run and commit ``batch``, each operation in a savepoint: a failing one fails alone."""
    conn.execute("BEGIN IMMEDIATE")
    outcomes = [(op, *_in_savepoint(conn, op.fn)) for op in batch]
    conn.execute("COMMIT")
    return outcomes


def _in_savepoint(
    conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]
) -> tuple[Any, BaseException | None]:
    conn.execute("SAVEPOINT op")
    try:
        result = fn(conn)
    except Exception as exc:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        log.error("store operation failed", exc_info=True)
        return None, exc if isinstance(exc, StoreError) else StoreError(f"store operation failed: {exc}")
    conn.execute("RELEASE op")
    return result, None


def _marks(values: Sequence[str]) -> str:
    return ",".join("?" * len(values))


def _chunks(values: Sequence[str]) -> list[Sequence[str]]:
    return [values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)]


class _SqliteIngest:
    """The ingest script's SQL for SQLite (:class:`bridge.store.ingest.IngestSql`), inside the writer's transaction.

    One writer thread runs every write, so ``load_state`` needs no lock of its own.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def record_receipt(self, step: RecordReceipt) -> int:
        r = step.receipt
        cursor = self.conn.execute(
            "INSERT INTO receipts (source, received_at, group_key, body, rejected) VALUES (?, ?, ?, ?, ?)",
            (r.source, r.received_at, step.group_key, r.body, r.rejected_json()),
        )
        return int(cursor.lastrowid or 0)

    def load_state(self, step: LoadState) -> State:
        wanted = step.wanted
        occurrences: dict[tuple[str, str], Occurrence] = {}
        incidents: dict[str, Incident] = {}
        cols = "fingerprint, starts_at, status, incident_key, scope, updated_at"
        scopes = _chunks(sorted(wanted.scopes))
        # One statement for both occurrence lookups (an empty IN () matches nothing in SQLite).
        for fps, in_scopes in itertools.zip_longest(_chunks(sorted(wanted.fingerprints)), scopes, fillvalue=()):
            sql = (
                f"SELECT {cols} FROM occurrences WHERE fingerprint IN ({_marks(fps)}) UNION ALL"
                f" SELECT {cols} FROM occurrences WHERE status = 'firing' AND scope IN ({_marks(in_scopes)})"
            )
            for row in self.conn.execute(sql, (*fps, *in_scopes)):
                occurrences[(row[0], row[1])] = Occurrence(*row)
        for part in scopes:
            sql = f"SELECT {_INCIDENT_COLS} FROM incidents WHERE scope IN ({_marks(part)})"
            for row in self.conn.execute(sql, part):
                incidents[row[0]] = Incident(
                    row[0], row[1], row[2], row[3], bool(row[4]), json.loads(row[5]), row[6], row[7]
                )
        return State(occurrences=occurrences, incidents=incidents, groups=self._groups(wanted, incidents))

    def _groups(self, wanted: Lookup, incidents: dict[str, Incident]) -> dict[str, Group]:
        groups: dict[str, Group] = {}
        keys = sorted({i.group for i in incidents.values() if i.group})
        for part in _chunks(sorted(wanted.slots)):
            sql = f"SELECT {GROUP_COLS} FROM groups WHERE open = 1 AND slot IN ({_marks(part)})"
            for row in self.conn.execute(sql, part):
                groups[row[0]] = decode_group(*row)
        for part in _chunks(keys):
            for row in self.conn.execute(f"SELECT {GROUP_COLS} FROM groups WHERE key IN ({_marks(part)})", part):
                groups[row[0]] = decode_group(*row)
        return groups

    def write(self, step: Write) -> None:
        changes, conn = step.changes, self.conn
        conn.executemany(
            "INSERT INTO occurrences (fingerprint, starts_at, status, incident_key, scope, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(o.fingerprint, o.starts_at, o.status, o.incident_key, o.scope, o.updated_at) for o in changes.created],
        )
        if changes.updated:
            cursor = conn.executemany(
                "UPDATE occurrences SET status = ?, incident_key = ?, scope = ?, updated_at = ?"
                " WHERE fingerprint = ? AND starts_at = ? AND status = ?",
                [(o.status, o.incident_key, o.scope, o.updated_at, o.fingerprint, o.starts_at, old)
                 for o, old in changes.updated],
            )
            if cursor.rowcount != len(changes.updated):
                raise Conflict("an occurrence changed since this transaction read it")
        conn.executemany(
            "INSERT INTO incidents (key, scope, event_class, route, open, trigger, updated_at, grp)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET scope = excluded.scope,"
            " event_class = excluded.event_class, route = excluded.route, open = excluded.open,"
            " trigger = excluded.trigger, updated_at = excluded.updated_at, grp = excluded.grp",
            [(i.key, i.scope, i.event_class, i.route, int(i.open), i.trigger, i.updated_at, i.group)
             for i in changes.incidents],
        )
        _write_groups(conn, changes.groups)
        conn.executemany(
            "INSERT INTO outbox (sink, ordering_key, payload, created_at, next_attempt_at, receipt_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(o.sink, o.ordering_key, o.payload, o.created_at, o.created_at, o.receipt_id) for o in changes.outbox],
        )
        conn.executemany(_AUDIT_SQL, [_audit_row(e) for e in changes.audit])


def _audit_row(e: AuditEntry) -> tuple[Any, ...]:
    return (e.at, e.key, e.side, e.actor, e.action, e.detail, e.certificate, e.environment, e.event_class, e.issuer)


def read_audit(conn: sqlite3.Connection, query: AuditQuery) -> list[AuditEntry]:
    """:meth:`SqliteStore.audit_trail` on any connection to the file."""
    sql, args = query.sql(lambda _: "?")
    return AuditQuery.entries(conn.execute(sql, args).fetchall())


class SqliteAuditReader:
    """The audit trail of a store file, read-only and without its lock: for ``certpager history`` and
    ``certpager report`` beside a running bridge (WAL readers never wait for the writer)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    async def audit_trail(
        self, key: str | None = None, *, certificate: str | None = None, since: float | None = None,
        until: float | None = None, limit: int | None = None,
    ) -> list[AuditEntry]:
        query = AuditQuery(key, certificate, since, until, limit)
        return await asyncio.to_thread(self._read, query)

    def _read(self, query: AuditQuery) -> list[AuditEntry]:
        if not self.path.is_file():
            raise StoreError(f"cannot read store {self.path}: no such file")
        try:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from exc
        try:
            if schema_version(conn) < AUDIT_VERSION:
                raise StoreError(f"store {self.path} has no audit trail yet: start this bridge version on it once")
            return read_audit(conn, query)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from exc
        finally:
            conn.close()


def _write_groups(conn: sqlite3.Connection, rows: Sequence[GroupRow]) -> None:
    new = [g for g in rows if g.version == 1]
    conn.executemany(  # the primary key refuses a group opened concurrently under the same key
        f"INSERT INTO groups ({GROUP_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(g.key, g.slot, g.route, g.opened_at, int(g.open), g.detail, g.updated_at, g.version) for g in new],
    )
    changed = [g for g in rows if g.version != 1]
    if changed:
        cursor = conn.executemany(
            "UPDATE groups SET open = ?, detail = ?, updated_at = ?, version = ? WHERE key = ? AND version = ?",
            [(int(g.open), g.detail, g.updated_at, g.version, g.key, g.version - 1) for g in changed],
        )
        if cursor.rowcount != len(changed):
            raise Conflict("a group changed since this transaction read it")


def _move_to_dead_letters(
    conn: sqlite3.Connection, item_id: int, error: str, status: int, now: float, *, attempted: bool
) -> None:
    conn.execute(_DEAD_LETTER_SQL, (int(attempted), now, status, error, item_id))
    conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))


def _item(row: Sequence[Any]) -> OutboxItem:
    payload = json.loads(row[3])
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    return OutboxItem(
        id=int(row[0]), sink=row[1], ordering_key=row[2], payload=payload, attempts=int(row[4]),
        created_at=float(row[5]), superseded=bool(row[6]) if len(row) > 6 else False,
    )


def _claim(conn: sqlite3.Connection, sink: str, now: float, limit: int, lease: float) -> list[OutboxItem]:
    # Head of key = no earlier item of the same key is still queued; a leased head blocks its successors.
    rows = conn.execute(
        "SELECT id, sink, ordering_key, payload, attempts, created_at,"
        " (next_attempt_at > created_at OR lease_until > 0) AND EXISTS"
        " (SELECT 1 FROM outbox AS n WHERE n.sink = o.sink AND n.ordering_key = o.ordering_key AND n.id > o.id)"
        " FROM outbox AS o"
        " WHERE sink = ? AND next_attempt_at <= ? AND lease_until <= ?"
        " AND NOT EXISTS (SELECT 1 FROM outbox AS p WHERE p.sink = o.sink AND p.ordering_key = o.ordering_key"
        " AND p.id < o.id) ORDER BY next_attempt_at, id LIMIT ?",
        (sink, now, now, limit),
    ).fetchall()
    items: list[OutboxItem] = []
    for row in rows:
        try:
            items.append(_item(row))
        except (ValueError, TypeError) as exc:  # a row nobody can deliver: aside, alone, so the others go
            error = f"outbox row {row[0]} cannot be read, not sent: {type(exc).__name__}: {exc}"
            kv = {"sink": sink, "item": row[0], "err": error}
            log.error("undecodable outbox row dead-lettered", extra={"kv": kv})
            _move_to_dead_letters(conn, int(row[0]), error, 0, now, attempted=False)
    conn.executemany("UPDATE outbox SET lease_until = ? WHERE id = ?", [(now + lease, i.id) for i in items])
    return items


def _prune(conn: sqlite3.Connection, before: float, audit_before: float) -> int:
    removed = conn.execute("DELETE FROM audit WHERE at < ?", (audit_before,)).rowcount
    for sql in (
        "DELETE FROM receipts WHERE received_at < ?",
        "DELETE FROM occurrences WHERE status = 'resolved' AND updated_at < ?",
        "DELETE FROM dead_letters WHERE dead_at < ?",
        "DELETE FROM pd_webhooks WHERE received_at < ?",
        "DELETE FROM silences WHERE expired_at < ?",
        "DELETE FROM incidents WHERE open = 0 AND updated_at < ? AND key NOT IN"
        " (SELECT incident_key FROM occurrences WHERE status = 'firing')",
        "DELETE FROM groups WHERE open = 0 AND updated_at < ?",
        "DELETE FROM ack_state WHERE updated_at < ? AND key NOT IN (SELECT key FROM incidents)"
        " AND key NOT IN (SELECT key FROM groups)",
    ):
        removed += conn.execute(sql, (before,)).rowcount
    return removed

"""The PostgreSQL store: several bridge replicas share one database and none pages twice.

- **Ingest**: the shared script (:mod:`bridge.store.ingest`) in a transaction from a connection pool.
  Concurrent webhooks are group-committed: a committer takes what is queued (up to ``MAX_BATCH``) into ONE
  transaction (:class:`_Batch`: one statement for the receipts, one load, the scripts answered in turn,
  one merged write), and a failing batch is run again one webhook per transaction so only the failing one
  gets its 503. One committer runs; another starts beside it only when ``MIN_BATCH_FOR_ANOTHER`` webhooks
  are queued, so batches stay large (each transaction costs its round trips). Before reading any state a
  transaction takes a transaction-scoped advisory lock per scope it touches, in sorted order (replicas
  never deadlock on them), so two replicas given the same transition (an HA Alertmanager pair sends to
  both) decide one after the other and the second sees a duplicate. Should two ever overlap anyway, the
  occurrences' primary key and the status guard refuse the second: its transaction rolls back and runs
  again. A failure that is not a conflict is a :class:`StoreError`: the webhook is answered 503 and
  Alertmanager retries.
- **Outbox**: claims are ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)`` of the head item
  of each ordering key, setting a lease. Any replica delivers; a replica that dies leaves leased items
  that any other claims once the lease ends; a key's next item waits while its head is leased, so per-key
  order holds across replicas.
- **Migrations** (:data:`bridge.store.migrations.POSTGRES_MIGRATIONS`) run under a session advisory lock,
  so replicas starting together apply each migration once; the version is in ``certpager_schema``.
- **Election** (:meth:`PostgresStore.lead`): a session advisory lock per role on a dedicated connection.
  The replica holding it runs that role's periodic work; when it dies its session ends, PostgreSQL
  releases the lock, and the next replica to ask takes the role over.
- **Gauges**: :meth:`outbox_stats` and :meth:`dead_letters` are synchronous (a scrape calls them), so they
  answer from a snapshot refreshed every ``stats_interval`` seconds.
- **Outages**: a lost connection fails the operation (503 for a webhook); the pool connects again on the
  next use, so replicas recover by themselves when the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bridge import acksync
from bridge.acksync import Ack, SyncState
from bridge.alertmanager import Notification
from bridge.audit import AuditEntry
from bridge.decisions import Group, Incident, Lookup, Occurrence, Policy, State
from bridge.pagerduty_webhook import WebhookEvent
from bridge.sinks.base import OutboxItem
from bridge.store import acks_postgres, acksync_script, ingest
from bridge.store.base import (
    AuditQuery,
    DeadLetterRow,
    IngestResult,
    OutboxStats,
    Receipt,
    StoreError,
)
from bridge.store.ingest import (
    GROUP_COLS,
    Changes,
    Conflict,
    GroupRow,
    IncidentRow,
    LoadState,
    OutboxRow,
    RecordReceipt,
    Write,
    decode_group,
)
from bridge.store.migrations import POSTGRES_MIGRATIONS, statements

log = logging.getLogger(__name__)
T = TypeVar("T")
Conn: TypeAlias = "asyncpg.Connection | PoolConnectionProxy"  # a pooled connection or a dedicated one

LOCK_CLASS = 0x43505247  # "CPRG": the first key of certpager's two-key advisory locks
MIGRATION_LOCK = (LOCK_CLASS, 0)
ELECTION_CLASS = LOCK_CLASS + 1  # (ELECTION_CLASS, crc32(role)); scope locks use the one-bigint key space
MAX_ATTEMPTS = 5  # an ingest that keeps conflicting gives up (503) rather than spin
MAX_BATCH = 64  # ingests per group commit; bounds one transaction's locks and latency
MIN_BATCH_FOR_ANOTHER = 8  # queued ingests that start another committer beside the running ones
_CONNECTION_ERRORS = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
)
SESSION_SETTINGS = {
    # Ask the server to notice a vanished client (host gone, not just the process) within ~30 s, so a
    # partitioned leader's advisory locks are released.
    "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3",
    # Plan each run of a prepared statement for its arguments and the tables as they are. The default
    # keeps a generic plan after five runs: made while a new database's tables were empty, the ingest's
    # lookups stayed sequential scans as the tables grew (until autovacuum analysed them), which cost the
    # server ~3 times the CPU per webhook in bench/bridge_ingest.py (docs/performance-bridge.md).
    "plan_cache_mode": "force_custom_plan",
}
_RETRYABLE = (
    Conflict, asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError, asyncpg.SerializationError,
)
_OCCURRENCE_COLS = "fingerprint, starts_at, status, incident_key, scope, updated_at"
_INCIDENT_COLS = "key, scope, event_class, route, open, trigger, updated_at, grp"
_CLAIM_SQL = """
UPDATE outbox SET lease_until = $4 FROM (
    SELECT id, lease_until > 0 AS abandoned FROM outbox AS o
    WHERE sink = $1 AND next_attempt_at <= $2 AND lease_until <= $2
      AND NOT EXISTS (SELECT 1 FROM outbox AS p
                      WHERE p.sink = o.sink AND p.ordering_key = o.ordering_key AND p.id < o.id)
    ORDER BY next_attempt_at, id LIMIT $3
    FOR UPDATE SKIP LOCKED) AS claimed
WHERE outbox.id = claimed.id
RETURNING outbox.id, sink, ordering_key, payload, attempts, created_at, next_attempt_at,
    (next_attempt_at > created_at OR claimed.abandoned) AND EXISTS (SELECT 1 FROM outbox AS n
        WHERE n.sink = outbox.sink AND n.ordering_key = outbox.ordering_key AND n.id > outbox.id) AS superseded
"""
_RETRY_SQL = """
UPDATE outbox AS o SET attempts = o.attempts + $1, next_attempt_at = r.at, lease_until = 0, last_error = r.error
FROM unnest($2::bigint[], $3::float8[], $4::text[]) AS r(id, at, error) WHERE o.id = r.id
"""
_DEAD_LETTER_MOVE = """
moved AS (DELETE FROM outbox WHERE id = $1 RETURNING *),
dead AS (INSERT INTO dead_letters (id, sink, ordering_key, payload, attempts, created_at, dead_at, status, error)
    SELECT id, sink, ordering_key, payload, attempts + $5, created_at, $2, $3, $4 FROM moved
    ON CONFLICT (id) DO NOTHING)"""
_DEAD_LETTER_SQL = f"WITH {_DEAD_LETTER_MOVE} SELECT 1"
# Heads of keys only: an item behind an in-flight head is not claimable, however due it is.
_NEXT_DUE_SQL = """
SELECT next_attempt_at FROM outbox AS o WHERE sink = $1 AND lease_until <= $2
  AND NOT EXISTS (SELECT 1 FROM outbox AS p WHERE p.sink = o.sink AND p.ordering_key = o.ordering_key AND p.id < o.id)
ORDER BY next_attempt_at LIMIT 1
"""


def _numbered(template: str, first: int) -> str:
    """``template`` with its ``{}`` placeholders as parameters ``$first``, ``$first + 1``, ..."""
    return template.format(*(f"${first + i}" for i in range(template.count("{}"))))


_AUDIT_TEMPLATE = (
    "INSERT INTO audit (at, incident_key, side, actor, action, detail, certificate, environment, event_class,"
    " issuer) SELECT * FROM unnest({}::float8[], {}::text[], {}::text[], {}::text[], {}::text[], {}::text[],"
    " {}::text[], {}::text[], {}::text[], {}::text[])"
)


_AUDIT_SQL = _numbered(_AUDIT_TEMPLATE, 1)
# An outbox change and the audit lines that say so, in ONE statement: one round trip, atomic without a
# transaction (a data-modifying WITH runs to completion whatever the rest of the statement reads).
_DELIVERED_AUDIT_SQL = f"WITH changed AS (DELETE FROM outbox WHERE id = $1) {_numbered(_AUDIT_TEMPLATE, 2)}"
_RETRY_AUDIT_SQL = f"WITH changed AS ({_RETRY_SQL}) {_numbered(_AUDIT_TEMPLATE, 5)}"
_DEAD_LETTER_AUDIT_SQL = f"WITH {_DEAD_LETTER_MOVE} {_numbered(_AUDIT_TEMPLATE, 6)}"
_PRUNE_SQL = (
    "DELETE FROM receipts WHERE received_at < $1",
    "DELETE FROM occurrences WHERE status = 'resolved' AND updated_at < $1",
    "DELETE FROM dead_letters WHERE dead_at < $1",
    "DELETE FROM incidents WHERE open = false AND updated_at < $1 AND key NOT IN"
    " (SELECT incident_key FROM occurrences WHERE status = 'firing')",
    "DELETE FROM groups WHERE open = false AND updated_at < $1",
    *acks_postgres.PRUNE_SQL,
)


def redacted(url: str) -> str:
    """``url`` without its user info (it may carry a password): what logs and errors show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def scope_lock_keys(scopes: Iterable[str]) -> list[int]:
    """One signed 64-bit advisory lock key per scope, sorted (every replica locks in the same order)."""
    keys = {int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big", signed=True) for s in scopes}
    return sorted(keys)


def role_key(role: str) -> int:
    """The election lock's second key for ``role`` (a signed 32-bit int)."""
    return zlib.crc32(role.encode()) - (1 << 31)


async def migrate(conn: Conn) -> int:
    """Apply the missing migrations, one replica at a time; return the resulting version."""
    await conn.execute("SELECT pg_advisory_lock($1, $2)", *MIGRATION_LOCK)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS certpager_schema (version INTEGER NOT NULL)")
        version = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM certpager_schema"))
        latest = len(POSTGRES_MIGRATIONS)
        if version > latest:
            raise RuntimeError(f"store schema version {version} is newer than this bridge knows ({latest})")
        for number in range(version + 1, latest + 1):
            async with conn.transaction():
                for statement in statements(POSTGRES_MIGRATIONS[number - 1]):
                    await conn.execute(statement)
                await conn.execute("DELETE FROM certpager_schema")
                await conn.execute("INSERT INTO certpager_schema (version) VALUES ($1)", number)
            log.info("store schema migrated", extra={"kv": {"version": number}})
        return max(version, latest)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", *MIGRATION_LOCK)


class PostgresStore:
    """The PostgreSQL store (see module docstring). ``open()`` before use, ``close()`` after."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        pool_size: int = 8,
        timeout: float = 10.0,
        stats_interval: float = 1.0,
    ) -> None:
        self.url = url
        self._password = password
        self._pool_size = pool_size
        self._timeout = timeout
        self._stats_interval = stats_interval
        self._pool: asyncpg.Pool | None = None
        self._stats = OutboxStats()
        self._dead: list[DeadLetterRow] = []
        self._stats_task: asyncio.Task[None] | None = None
        self._leader: asyncpg.Connection | None = None
        self._roles: set[str] = set()
        self._election = asyncio.Lock()
        self._queue: list[_Job] = []
        self._committers: set[asyncio.Task[None]] = set()
        self._max_committers = max(1, pool_size // 2)  # the other connections claim, deliver and elect
        self.commits = 0  # ingest transactions committed (for tests and the benchmark)

    def __repr__(self) -> str:
        return f"PostgresStore({redacted(self.url)!r})"

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def open(self) -> None:
        """Connect, apply migrations (one replica at a time) and start the gauge snapshots."""
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.url, password=self._password, min_size=1, max_size=self._pool_size, timeout=self._timeout,
                command_timeout=self._timeout, server_settings=SESSION_SETTINGS, reset=_keep_session,
            )
        except Exception as exc:
            raise StoreError(f"cannot open store {redacted(self.url)}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except Exception as exc:
            await pool.close()
            raise StoreError(f"cannot open store {redacted(self.url)}: {exc}") from exc
        self._pool = pool
        await self._refresh_stats()
        self._stats_task = asyncio.create_task(self._stats_loop(), name="certpager-store-stats")

    async def close(self) -> None:
        """Finish the queued ingests, stop the snapshots, give up every role and close the connections."""
        if self._committers:
            await asyncio.wait(set(self._committers), timeout=self._timeout)
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
            self._stats_task = None
        await self._drop_leader()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), self._timeout)

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, transaction: bool = True) -> T:
        """``fn`` on a pooled connection (in a transaction); conflicts run it again; failures are StoreError."""
        if self._pool is None:
            raise StoreError("store is not open")
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._pool.acquire(timeout=self._timeout) as conn:
                    if not transaction:
                        return await fn(conn)
                    async with conn.transaction():
                        return await fn(conn)
            except _RETRYABLE as exc:
                if attempt == MAX_ATTEMPTS:
                    raise StoreError(f"store operation kept conflicting: {exc}") from exc
                log.debug("store transaction conflicted; running it again", extra={"kv": {"err": str(exc)}})
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(f"store operation failed: {exc}") from exc
        raise AssertionError("unreachable")

    # --- inbound -------------------------------------------------------------------------------------

    async def ingest(
        self, receipt: Receipt, notification: Notification, policy: Policy, *, sinks: Sequence[str]
    ) -> IngestResult:
        """Record the webhook, decide and queue the events, in one transaction (see base.Store)."""

        if self._pool is None:
            raise StoreError("store is not open")
        job = _Job(receipt, notification, policy, tuple(sinks), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        if not self._committers or (
            len(self._committers) < self._max_committers and len(self._queue) >= MIN_BATCH_FOR_ANOTHER
        ):
            task = asyncio.create_task(self._commit_queued(), name="certpager-store-ingest")
            self._committers.add(task)
            task.add_done_callback(self._committers.discard)
        return await asyncio.shield(job.future)  # a caller that gives up does not undo the commit

    async def _commit_queued(self) -> None:
        # Group commit: each committer takes what is queued (up to MAX_BATCH ingests) into one transaction.
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                await self._commit_batch(batch)
            except Exception as exc:  # a bug: no webhook may wait forever on it, and the committer goes on
                log.exception("store committer failed", extra={"kv": {"webhooks": len(batch)}})
                for job in batch:
                    _settle(job, None, StoreError(f"store operation failed: {exc}"))

    async def _commit_batch(self, batch: list[_Job]) -> None:
        if len(batch) > 1:
            try:
                results = await self._run(lambda conn: _Batch(_PostgresIngest(conn)).run(batch))
            except StoreError as exc:
                if isinstance(exc.__cause__, _CONNECTION_ERRORS):  # all would fail alike: no retry one by one
                    for job in batch:
                        _settle(job, None, exc)
                    return
                # One ingest failed: each again in its own transaction, so only that one fails.
            else:
                self.commits += 1
                for job, result in zip(batch, results, strict=True):
                    _settle(job, result, None)
                return
        for job in batch:
            try:
                result = await self._run(functools.partial(_ingest_one, job))
            except StoreError as exc:
                _settle(job, None, exc)
            else:
                self.commits += 1
                _settle(job, result, None)

    # --- ack sync ------------------------------------------------------------------------------------

    async def record_pagerduty_webhook(self, receipt: Receipt, event: WebhookEvent) -> bool:
        return await self._run(lambda conn: acks_postgres.record_webhook(conn, receipt, event))

    async def sync(
        self, keys: Sequence[str] | None, decide: Callable[[SyncState], acksync.Changes | str], *, now: float,
        webhook_id: str | None = None,
    ) -> acksync.Changes | str:
        async def op(conn: Conn) -> acksync.Changes | str:
            steps = acksync_script.script(keys, decide, now=now, webhook_id=webhook_id)
            return await acksync_script.run_async(steps, acks_postgres.PostgresAckSql(conn))

        return await self._run(op)

    async def record_silence(self, key: str, silence_id: str, alertmanager: str, *, now: float) -> None:
        await self._run(lambda conn: acks_postgres.record_silence(conn, key, silence_id, alertmanager, now))

    async def live_silences(self, key: str) -> list[tuple[str, str]]:
        return await self._run(lambda conn: acks_postgres.live_silences(conn, key), transaction=False)

    async def silence_expired(self, key: str, silence_id: str, *, now: float) -> None:
        await self._run(lambda conn: acks_postgres.silence_expired(conn, key, silence_id, now))

    async def ack_state(self, key: str) -> Ack | None:
        return await self._run(lambda conn: acks_postgres.ack_of(conn, key), transaction=False)

    # --- outbox --------------------------------------------------------------------------------------

    async def claim(self, sink: str, *, now: float, limit: int, lease: float) -> list[OutboxItem]:
        """Due head-of-key items, leased, skipping rows another replica is claiming (see base.Store)."""

        # One statement, no transaction around it (BEGIN and COMMIT would double its round trips): the
        # claim is atomic by itself, and each dead letter below is one statement too. Should the process
        # stop in between, an unreadable row's lease runs out and the next claim moves it aside.
        async def op(conn: Conn) -> list[OutboxItem]:
            rows = sorted(await conn.fetch(_CLAIM_SQL, sink, now, limit, now + lease),
                          key=lambda r: (r["next_attempt_at"], r["id"]))
            items: list[OutboxItem] = []
            for row in rows:
                try:
                    items.append(_item(row))
                except (ValueError, TypeError) as exc:  # a row nobody can deliver: aside, alone, so the others go
                    error = f"outbox row {row['id']} cannot be read, not sent: {type(exc).__name__}: {exc}"
                    log.error("undecodable outbox row dead-lettered",
                              extra={"kv": {"sink": sink, "item": row["id"], "err": error}})
                    await conn.execute(_DEAD_LETTER_SQL, row["id"], now, 0, error, 0)
            return items

        return await self._run(op, transaction=False)

    async def next_due(self, sink: str, *, now: float) -> float | None:
        async def op(conn: Conn) -> Any:
            return await conn.fetchval(_NEXT_DUE_SQL, sink, now)

        value = await self._run(op, transaction=False)
        return None if value is None else float(value)

    async def mark_delivered(self, item_id: int, *, audit: Sequence[AuditEntry] = ()) -> None:
        await self._run(lambda conn: _with_audit(
            conn, "DELETE FROM outbox WHERE id = $1", _DELIVERED_AUDIT_SQL, [item_id], audit), transaction=False)

    async def retry_at(
        self, item_id: int, *, at: float, error: str, attempted: bool = True, audit: Sequence[AuditEntry] = ()
    ) -> None:
        await self.retry_many([(item_id, at, error)], attempted=attempted, audit=audit)

    async def retry_many(
        self, retries: Sequence[tuple[int, float, str]], *, attempted: bool = True, audit: Sequence[AuditEntry] = ()
    ) -> None:
        ids, ats, errors = [r[0] for r in retries], [r[1] for r in retries], [r[2] for r in retries]

        await self._run(lambda conn: _with_audit(
            conn, _RETRY_SQL, _RETRY_AUDIT_SQL, [int(attempted), ids, ats, errors], audit), transaction=False)

    async def dead_letter(
        self, item_id: int, *, error: str, status: int, now: float, audit: Sequence[AuditEntry] = ()
    ) -> None:
        await self._run(lambda conn: _with_audit(
            conn, _DEAD_LETTER_SQL, _DEAD_LETTER_AUDIT_SQL, [item_id, now, status, error, 1], audit), transaction=False)

    async def prune(self, *, before: float, audit_before: float | None = None) -> int:
        cutoff = before if audit_before is None else audit_before

        async def op(conn: Conn) -> int:
            removed = _rowcount(await conn.execute("DELETE FROM audit WHERE at < $1", cutoff))
            for sql in _PRUNE_SQL:
                removed += _rowcount(await conn.execute(sql, before))
            return removed

        return await self._run(op)

    # --- election ------------------------------------------------------------------------------------

    async def lead(self, role: str) -> bool:
        """Whether this replica holds ``role`` now: it campaigns when it does not (see module docstring)."""
        async with self._election:
            try:
                return await self._lead(role)
            except Exception as exc:
                if self._roles:
                    log.warning("lost the store connection holding roles", extra={"kv": {
                        "roles": ",".join(sorted(self._roles)), "err": str(exc)}})
                await self._drop_leader()
                return False

    async def _lead(self, role: str) -> bool:
        if self._pool is None:
            return False
        conn = self._leader
        if conn is None or conn.is_closed():
            if self._roles:
                log.warning("lost roles with their connection", extra={"kv": {"roles": ",".join(sorted(self._roles))}})
            self._roles.clear()
            self._leader = None
            conn = self._leader = await asyncpg.connect(
                self.url, password=self._password, timeout=self._timeout, command_timeout=self._timeout,
                server_settings=SESSION_SETTINGS,
            )
        if role in self._roles:
            await conn.fetchval("SELECT 1")  # the session lives, so it still holds the lock
            return True
        if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", ELECTION_CLASS, role_key(role)):
            self._roles.add(role)
            log.info("elected to run a role", extra={"kv": {"role": role}})
            return True
        return False

    async def _drop_leader(self) -> None:
        conn, self._leader = self._leader, None
        self._roles.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self._timeout)
            if not conn.is_closed():
                conn.terminate()

    # --- reads ---------------------------------------------------------------------------------------

    def outbox_stats(self) -> OutboxStats:
        """Depth, oldest item and dead letters per sink, as of the last snapshot."""
        return self._stats

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetterRow]:
        """The newest dead letters first, as of the last snapshot (at most 100)."""
        return self._dead[:limit]

    async def record_audit(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return

        async def op(conn: Conn) -> None:
            await insert_audit(conn, entries)

        await self._run(op, transaction=False)

    async def audit_trail(
        self, key: str | None = None, *, certificate: str | None = None, since: float | None = None,
        until: float | None = None, limit: int | None = None,
    ) -> list[AuditEntry]:
        sql, args = AuditQuery(key, certificate, since, until, limit).sql(lambda n: f"${n}")

        async def op(conn: Conn) -> list[AuditEntry]:
            return AuditQuery.entries(await conn.fetch(sql, *args))

        return await self._run(op, transaction=False)

    async def _stats_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._stats_interval)
            try:
                await self._refresh_stats()
            except Exception as exc:  # any failure: the loop goes on (no background task dies silently)
                if not failing:
                    log.warning("cannot read outbox stats; serving the last ones", extra={"kv": {"err": str(exc)}},
                                exc_info=not isinstance(exc, StoreError))
                failing = True
            else:
                failing = False

    async def _refresh_stats(self) -> None:
        async def op(conn: Conn) -> tuple[list[asyncpg.Record], ...]:
            return (
                await conn.fetch("SELECT sink, COUNT(*), MIN(created_at) FROM outbox GROUP BY sink"),
                await conn.fetch("SELECT sink, COUNT(*) FROM dead_letters GROUP BY sink"),
                await conn.fetch(
                    "SELECT id, sink, ordering_key, error, status, attempts, dead_at FROM dead_letters"
                    " ORDER BY dead_at DESC, id DESC LIMIT 100"
                ),
            )

        rows, dead, newest = await self._run(op)
        self._stats = OutboxStats(
            depth={r[0]: int(r[1]) for r in rows},
            oldest_created_at={r[0]: float(r[2]) for r in rows},
            dead_letters={r[0]: int(r[1]) for r in dead},
        )
        self._dead = [DeadLetterRow(*row) for row in newest]


class _PostgresIngest:
    """The ingest script's SQL for PostgreSQL (:class:`bridge.store.ingest.AsyncIngestSql`)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def record_receipt(self, step: RecordReceipt) -> int:
        r = step.receipt
        value = await self.conn.fetchval(
            "INSERT INTO receipts (source, received_at, group_key, body, rejected) VALUES ($1, $2, $3, $4, $5)"
            " RETURNING id",
            r.source, r.received_at, step.group_key, r.body, r.rejected_json(),
        )
        return int(value)

    async def record_receipts(self, steps: Sequence[RecordReceipt]) -> list[int]:
        """Several receipts in one statement; their ids in the order of ``steps``."""
        rows = await self.conn.fetch(
            "INSERT INTO receipts (source, received_at, group_key, body, rejected)"
            " SELECT s, r, g, b, j FROM unnest($1::text[], $2::float8[], $3::text[], $4::bytea[], $5::text[])"
            " WITH ORDINALITY AS t(s, r, g, b, j, n) ORDER BY n RETURNING id",
            [x.receipt.source for x in steps], [x.receipt.received_at for x in steps], [x.group_key for x in steps],
            [x.receipt.body for x in steps], [x.receipt.rejected_json() for x in steps],
        )
        # Identity values are taken row after row in the SELECT's order: ascending ids are the steps' order.
        return sorted(int(row["id"]) for row in rows)

    async def lock(self, scopes: Sequence[str]) -> None:
        """Held until COMMIT: another replica's ingest of these scopes waits here, then reads what this one wrote."""
        await self.conn.execute(
            "SELECT COUNT(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k", scope_lock_keys(scopes)
        )

    async def load_state(self, step: LoadState) -> State:
        wanted = step.wanted
        scopes, fingerprints = sorted(wanted.scopes), sorted(wanted.fingerprints)
        # Slots are locked with the scopes, in the same sorted call: two replicas never open two groups of one slot.
        await self.lock([*scopes, *(f"group\x1f{slot}" for slot in wanted.slots)])
        rows = await self.conn.fetch(
            f"SELECT {_OCCURRENCE_COLS} FROM occurrences WHERE fingerprint = ANY($1::text[]) UNION ALL"
            f" SELECT {_OCCURRENCE_COLS} FROM occurrences WHERE status = 'firing' AND scope = ANY($2::text[])",
            fingerprints, scopes,
        )
        occurrences = {(row[0], row[1]): Occurrence(*row) for row in rows}
        incidents: dict[str, Incident] = {}
        for row in await self.conn.fetch(
            f"SELECT {_INCIDENT_COLS} FROM incidents WHERE scope = ANY($1::text[])", scopes
        ):
            incidents[row[0]] = Incident(
                row[0], row[1], row[2], row[3], bool(row[4]), json.loads(row[5]), row[6], row[7]
            )
        groups: dict[str, Group] = {}
        if wanted.slots or any(i.group for i in incidents.values()):
            for row in await self.conn.fetch(
                f"SELECT {GROUP_COLS} FROM groups WHERE (open AND slot = ANY($1::text[])) OR key = ANY($2::text[])",
                sorted(wanted.slots), sorted({i.group for i in incidents.values() if i.group}),
            ):
                groups[row[0]] = decode_group(*row)
        return State(occurrences=occurrences, incidents=incidents, groups=groups)

    async def write(self, step: Write) -> None:
        """Every change in ONE statement (one round trip instead of up to seven): each INSERT or UPDATE
        is a data-modifying WITH, all of which run to completion; the guarded UPDATEs count their rows."""
        c, statement = step.changes, _Statement()
        if c.created:
            statement.change(
                f"INSERT INTO occurrences ({_OCCURRENCE_COLS}) SELECT * FROM unnest("
                "{}::text[], {}::text[], {}::text[], {}::text[], {}::text[], {}::float8[])",
                [o.fingerprint for o in c.created], [o.starts_at for o in c.created], [o.status for o in c.created],
                [o.incident_key for o in c.created], [o.scope for o in c.created],
                [o.updated_at for o in c.created],
            )
        if c.updated:
            u = [o for o, _ in c.updated]
            statement.guarded(
                len(u), "an occurrence changed since this transaction read it",
                "UPDATE occurrences AS o SET status = u.status, incident_key = u.key, scope = u.scope,"
                " updated_at = u.at FROM unnest({}::text[], {}::text[], {}::text[], {}::text[], {}::text[],"
                " {}::float8[], {}::text[]) AS u(fp, starts, status, key, scope, at, old)"
                " WHERE o.fingerprint = u.fp AND o.starts_at = u.starts AND o.status = u.old",
                [o.fingerprint for o in u], [o.starts_at for o in u], [o.status for o in u],
                [o.incident_key for o in u], [o.scope for o in u], [o.updated_at for o in u],
                [old for _, old in c.updated],
            )
        if c.incidents:
            i = c.incidents
            statement.change(
                f"INSERT INTO incidents ({_INCIDENT_COLS}) SELECT * FROM unnest({{}}::text[], {{}}::text[],"
                " {}::text[], {}::text[], {}::bool[], {}::text[], {}::float8[], {}::text[]) ON CONFLICT (key) DO UPDATE"
                " SET scope = excluded.scope, event_class = excluded.event_class, route = excluded.route,"
                " open = excluded.open, trigger = excluded.trigger, updated_at = excluded.updated_at,"
                " grp = excluded.grp",
                [r.key for r in i], [r.scope for r in i], [r.event_class for r in i], [r.route for r in i],
                [r.open for r in i], [r.trigger for r in i], [r.updated_at for r in i], [r.group for r in i],
            )
        _write_groups(statement, c.groups)
        if c.outbox:
            b = c.outbox
            statement.change(
                "INSERT INTO outbox (sink, ordering_key, payload, created_at, next_attempt_at, receipt_id)"
                " SELECT s, k, p, c, c, r FROM unnest({}::text[], {}::text[], {}::text[], {}::float8[],"
                " {}::bigint[]) AS b(s, k, p, c, r)",
                [o.sink for o in b], [o.ordering_key for o in b], [o.payload for o in b],
                [o.created_at for o in b], [o.receipt_id for o in b],
            )
        if c.audit:
            statement.change(_AUDIT_TEMPLATE, *_audit_columns(c.audit))
        await statement.run(self.conn)


_AUDIT_FIELDS = ("at", "key", "side", "actor", "action", "detail", "certificate", "environment", "event_class",
                 "issuer")


def _audit_columns(entries: Sequence[AuditEntry]) -> list[list[Any]]:
    return [[getattr(e, name) for e in entries] for name in _AUDIT_FIELDS]


async def insert_audit(conn: Conn, entries: Sequence[AuditEntry]) -> None:
    """Audit lines in one statement."""
    await conn.execute(_AUDIT_SQL, *_audit_columns(entries))


async def _with_audit(conn: Conn, sql: str, audited_sql: str, args: Sequence[Any], audit: Sequence[AuditEntry]) -> None:
    """``sql`` alone, or ``audited_sql``: the same change and the ``audit`` lines in one statement."""
    if audit:
        await conn.execute(audited_sql, *args, *_audit_columns(audit))
    else:
        await conn.execute(sql, *args)


def _write_groups(statement: _Statement, rows: Sequence[GroupRow]) -> None:
    new = [g for g in rows if g.version == 1]
    if new:  # the primary key refuses a group opened concurrently under the same key (retried)
        statement.change(
            f"INSERT INTO groups ({GROUP_COLS}) SELECT * FROM unnest({{}}::text[], {{}}::text[], {{}}::text[],"
            " {}::float8[], {}::bool[], {}::text[], {}::float8[], {}::int[])",
            [g.key for g in new], [g.slot for g in new], [g.route for g in new], [g.opened_at for g in new],
            [g.open for g in new], [g.detail for g in new], [g.updated_at for g in new], [g.version for g in new],
        )
    changed = [g for g in rows if g.version != 1]
    if changed:
        statement.guarded(
            len(changed), "a group changed since this transaction read it",
            "UPDATE groups AS g SET open = u.open, detail = u.detail, updated_at = u.at, version = u.version"
            " FROM unnest({}::text[], {}::bool[], {}::text[], {}::float8[], {}::int[])"
            " AS u(key, open, detail, at, version) WHERE g.key = u.key AND g.version = u.version - 1",
            [g.key for g in changed], [g.open for g in changed], [g.detail for g in changed],
            [g.updated_at for g in changed], [g.version for g in changed],
        )


class _Statement:
    """Several changes as ONE statement: each a data-modifying WITH (they all run to completion, on one
    snapshot, none seeing another's rows: the ingest's changes touch different rows). A guarded change
    counts the rows it changed; fewer than expected is a :class:`Conflict`."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._args: list[Any] = []
        self._guards: list[tuple[str, int, str]] = []  # (part, rows expected, the conflict's message)

    def change(self, template: str, *args: Any) -> None:
        """A change; ``template``'s ``{}`` placeholders take ``args`` in order."""
        self._parts.append(f"c{len(self._parts)} AS ({_numbered(template, len(self._args) + 1)})")
        self._args.extend(args)

    def guarded(self, expected: int, conflict: str, template: str, *args: Any) -> None:
        """A change that must change ``expected`` rows (an UPDATE guarded by what was read)."""
        self._guards.append((f"c{len(self._parts)}", expected, conflict))
        self.change(template + " RETURNING 1", *args)

    async def run(self, conn: Conn) -> None:
        if not self._parts:
            return
        counts = ", ".join(f"(SELECT COUNT(*) FROM {part})" for part, _, _ in self._guards) or "1"
        row = await conn.fetchrow(f"WITH {', '.join(self._parts)} SELECT {counts}", *self._args)
        assert row is not None
        for (_, expected, conflict), count in zip(self._guards, row, strict=False):
            if count != expected:
                raise Conflict(conflict)


@dataclass(slots=True)
class _Job:
    """One queued ingest and the future its webhook waits on."""

    receipt: Receipt
    notification: Notification
    policy: Policy
    sinks: tuple[str, ...]
    future: asyncio.Future[IngestResult]

    def script(self) -> ingest.Script:
        return ingest.script(self.receipt, self.notification, self.policy, self.sinks)


async def _ingest_one(job: _Job, conn: Conn) -> IngestResult:
    return await ingest.run_async(job.script(), _PostgresIngest(conn))


def _settle(job: _Job, result: IngestResult | None, error: BaseException | None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        assert result is not None
        job.future.set_result(result)


class _Batch:
    """Several ingests in ONE transaction, each running the shared script in turn.

    The receipts are inserted in one statement, the scopes of every ingest locked and their rows loaded in
    one go; then each script is answered from those rows as the scripts before it changed them
    (:class:`_Overlay`), and the merged changes are written once. The result is what the ingests would have
    written one after the other, in fewer round trips and one commit.
    """

    def __init__(self, sql: _PostgresIngest) -> None:
        self.sql = sql

    async def run(self, jobs: Sequence[_Job]) -> list[IngestResult]:
        scripts = [job.script() for job in jobs]
        ids = await self.sql.record_receipts([_expect(next(s), RecordReceipt) for s in scripts])
        loads = [_expect(s.send(i), LoadState) for s, i in zip(scripts, ids, strict=True)]
        union = Lookup(
            fingerprints=frozenset().union(*(load.wanted.fingerprints for load in loads)),
            scopes=frozenset().union(*(load.wanted.scopes for load in loads)),
            slots=frozenset().union(*(load.wanted.slots for load in loads)),
        )
        overlay = _Overlay(await self.sql.load_state(LoadState(union)))
        results: list[IngestResult] = []
        for steps, load in zip(scripts, loads, strict=True):
            try:
                overlay.apply(_expect(steps.send(overlay.state(load.wanted)), Write).changes)
                steps.send(None)
            except StopIteration as done:
                results.append(done.value)
            else:
                raise AssertionError("the ingest script went on after its write")
        await self.sql.write(Write(overlay.changes()))
        return results


S = TypeVar("S")


def _expect(step: object, kind: type[S]) -> S:
    if not isinstance(step, kind):
        raise AssertionError(f"the ingest script asked for {type(step).__name__}, expected {kind.__name__}")
    return step


class _Overlay:
    """The rows a batch loaded, as the batch's earlier ingests changed them, and what to write at the end."""

    def __init__(self, base: State) -> None:
        self.occurrences = dict(base.occurrences)
        self.incidents = dict(base.incidents)
        self.groups = dict(base.groups)
        self.stored = {key: row.status for key, row in base.occurrences.items()}  # as in the database
        self.stored_versions = {key: row.version for key, row in base.groups.items()}
        self.group_rows: dict[str, GroupRow] = {}
        self.touched: set[tuple[str, str]] = set()
        self.incident_rows: dict[str, IncidentRow] = {}
        self.outbox: list[OutboxRow] = []
        self.audit: list[AuditEntry] = []

    def state(self, wanted: Lookup) -> State:
        """What ``load_state`` would return now (the same filter as its SQL)."""
        fps, scopes = wanted.fingerprints, wanted.scopes
        incidents = {k: i for k, i in self.incidents.items() if i.scope in scopes}
        members_of = {i.group for i in incidents.values() if i.group}
        return State(
            occurrences={k: o for k, o in self.occurrences.items()
                         if o.fingerprint in fps or (o.status == "firing" and o.scope in scopes)},
            incidents=incidents,
            groups={k: g for k, g in self.groups.items() if (g.open and g.slot in wanted.slots) or k in members_of},
        )

    def apply(self, changes: Changes) -> None:
        for row in changes.created:
            self._put(row, None)
        for row, old in changes.updated:
            self._put(row, old)
        for inc in changes.incidents:
            self.incident_rows[inc.key] = inc
            self.incidents[inc.key] = Incident(
                inc.key, inc.scope, inc.event_class, inc.route, inc.open, json.loads(inc.trigger), inc.updated_at,
                inc.group,
            )
        for group in changes.groups:
            current = self.groups.get(group.key)
            if (0 if current is None else current.version) != group.version - 1:
                raise Conflict("a group changed within the batch since it was read")
            self.groups[group.key] = group.decoded()
            self.group_rows[group.key] = group
        self.outbox.extend(changes.outbox)
        self.audit.extend(changes.audit)

    def _put(self, row: Occurrence, old: str | None) -> None:
        key = (row.fingerprint, row.starts_at)
        current = self.occurrences.get(key)
        if (None if current is None else current.status) != old:
            raise Conflict("an occurrence changed within the batch since it was read")
        self.occurrences[key] = row
        self.touched.add(key)

    def changes(self) -> Changes:
        """The batch's net changes: INSERT what the database lacks, UPDATE the rest guarded by its status."""
        created = [self.occurrences[k] for k in sorted(self.touched) if k not in self.stored]
        updated = [(self.occurrences[k], self.stored[k]) for k in sorted(self.touched) if k in self.stored]
        groups = [  # the net change of each group, guarded by the version the database holds
            dataclasses.replace(row, version=self.stored_versions.get(key, 0) + 1)
            if row.version != self.stored_versions.get(key, 0) + 1 else row
            for key, row in self.group_rows.items()
        ]
        return Changes(created, updated, list(self.incident_rows.values()), self.outbox, groups, self.audit)


async def _keep_session(_: Conn) -> None:
    """The pool's reset on release, after asyncpg's own rollback of an unfinished transaction.

    asyncpg's default also sends ``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL`` and
    ``pg_advisory_unlock_all()``: one more round trip per operation, for session state this store
    never leaves on a pooled connection (its locks are transaction-scoped; the migration lock is
    released in a ``finally``; elections hold their own connection).
    """


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3`` or ``DELETE 0``."""
    return int(status.rsplit(" ", 1)[-1])


def _item(row: asyncpg.Record) -> OutboxItem:
    payload = json.loads(row["payload"])
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    return OutboxItem(
        id=int(row["id"]), sink=row["sink"], ordering_key=row["ordering_key"], payload=payload,
        attempts=int(row["attempts"]), created_at=float(row["created_at"]),
        superseded=bool(row.get("superseded", False)),
    )

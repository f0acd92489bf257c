"""What only the PostgreSQL store does: several replicas on one database (a real cluster, tests/postgres.py).

Replicas start together and migrate once; the same transition given to two replicas at once yields one
event, and the database refuses the second even without the scope locks; claims never hand an item to two
replicas and a dead replica's leases are taken over; one replica holds a role and another takes it over.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bridge.alertmanager import parse
from bridge.decisions import Lookup, Policy
from bridge.outbox import OutboxWorker
from bridge.store import ingest as script
from bridge.store.base import Receipt, StoreError
from bridge.store.migrations import MIGRATIONS, POSTGRES_MIGRATIONS
from bridge.store.postgres import SESSION_SETTINGS, PostgresStore, _PostgresIngest, redacted, role_key
from tests.bridge.conftest import alert, body
from tests.postgres import PASSWORD

SEVEN_DAYS = "certificate_expiring_7_days"


@pytest.fixture
async def replicas(pg):
    stores = [pg.new() for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))  # three replicas starting at once
    try:
        yield stores
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def ingest(store, *alerts, now=100.0):
    raw = body(*alerts)
    return await store.ingest(Receipt("alertmanager", raw, now), parse(raw), Policy(), sinks=["pagerduty"])


def test_both_backends_have_every_migration():
    assert len(POSTGRES_MIGRATIONS) == len(MIGRATIONS)


async def test_replicas_starting_together_migrate_once_and_a_newer_schema_is_refused(pg, replicas):
    assert [r[0] for r in await pg.fetch("SELECT version FROM certpager_schema")] == [len(POSTGRES_MIGRATIONS)]
    # 7: runbook action outcomes are audit trail lines; their own table is gone
    assert [r[0] for r in await pg.fetch("SELECT to_regclass('action_runs')")] == [None]
    conn = await pg.server.connect(pg.database)
    try:
        await conn.execute("UPDATE certpager_schema SET version = 99")
    finally:
        await conn.close()
    with pytest.raises(StoreError, match="schema version 99 is newer than this bridge knows"):
        await pg.new().open()


async def test_a_wrong_password_is_a_store_error_that_never_shows_it(pg):
    store = PostgresStore(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{pg.server.port}/{pg.database}",
                          password="not-" + PASSWORD)
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert "password authentication failed" in str(caught.value)
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(store)
    assert redacted("postgresql://u:secret@[::1]:5433/db") == "postgresql://[::1]:5433/db"


async def test_one_transition_sent_to_every_replica_at_once_is_one_event(pg, replicas):
    certs = [f"c{i}.example.com" for i in range(30)]
    firing = [alert(certificate=c) for c in certs]
    # An HA pair sends each notification to every replica; the ladder's two classes arrive on different ones.
    sends = [ingest(r, a) for a in firing for r in replicas]
    sends += [ingest(replicas[n % 3], alert(cls=SEVEN_DAYS, certificate=c)) for n, c in enumerate(certs)]
    results = await asyncio.gather(*sends)
    assert sum(r.new for r in results) == 60 and sum(r.duplicates for r in results) == 60
    items = await pg.pending()
    # Per certificate, exactly one trigger: the expired incident's (the 7-day one, if it came first, is resolved).
    opened = {}
    for item in items:
        key = item.payload["key"]
        opened[key] = opened.get(key, 0) + (1 if item.payload["action"] == "trigger" else -1)
    live = {k for k, v in opened.items() if v > 0}
    assert len(live) == 30 and all("expired" in k for k in live)
    assert sum(1 for i in items if i.payload["action"] == "trigger" and "expired" in i.payload["key"]) == 30


class Unlocked(_PostgresIngest):
    """The PostgreSQL SQL without the scope locks, pausing after its read: two such ingests overlap."""

    def __init__(self, conn, barrier: asyncio.Barrier) -> None:
        super().__init__(conn)
        self.barrier = barrier

    async def lock(self, scopes) -> None:
        pass

    async def load_state(self, step):
        state = await super().load_state(step)
        await self.barrier.wait()  # both transactions have read "never seen" before either writes
        return state


async def overlapping(pg, raw: bytes, at: float) -> list[object]:
    """One webhook ingested by two transactions at once, both reading before either writes (Unlocked)."""
    barrier = asyncio.Barrier(2)
    conns = [await pg.server.connect(pg.database) for _ in range(2)]

    async def overlap(conn):
        async with conn.transaction():
            steps = script.script(Receipt("alertmanager", raw, at), parse(raw), Policy(), ["pagerduty"])
            return await script.run_async(steps, Unlocked(conn, barrier))

    try:
        return await asyncio.gather(*(overlap(c) for c in conns), return_exceptions=True)
    finally:
        for conn in conns:
            await conn.close()


async def test_without_the_locks_the_primary_key_still_refuses_the_second_transition(pg, replicas):
    results = await overlapping(pg, body(alert()), 1.0)
    assert sorted(type(r).__name__ for r in results) == ["IngestResult", "UniqueViolationError"]
    assert isinstance(next(r for r in results if isinstance(r, BaseException)), asyncpg.UniqueViolationError)
    assert await pg.count("outbox") == 1
    # The store runs a refused transaction again (PostgresStore._run): then it sees a duplicate, as here.
    assert (await ingest(replicas[0], alert())).duplicates == 1


async def test_without_the_locks_the_status_guard_refuses_the_second_resolve(pg, replicas):
    # The resolve UPDATEs a stored occurrence only where it still has the status this transaction read
    # (one statement with the ingest's other writes): the second of two overlapping resolves changes no
    # row, which is a Conflict, and the store runs it again to find a duplicate.
    assert (await ingest(replicas[0], alert())).new == 1
    results = await overlapping(pg, body(alert("resolved")), 2.0)
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "IngestResult"]
    assert [r[0] for r in await pg.fetch("SELECT status FROM occurrences")] == ["resolved"]
    assert await pg.count("outbox") == 2  # the trigger and one resolve
    assert (await ingest(replicas[0], alert("resolved"))).duplicates == 1


async def test_replicas_never_claim_one_item_twice_and_take_over_a_dead_replicas_leases(pg, replicas):
    for i in range(60):
        await ingest(replicas[i % 3], alert(certificate=f"c{i}.example.com"))
    await ingest(replicas[0], alert("resolved", certificate="c0.example.com"))
    claims = await asyncio.gather(*(r.claim("pagerduty", now=200.0, limit=25, lease=30.0) for r in replicas))
    ids = [item.id for batch in claims for item in batch]
    assert len(ids) == len(set(ids)) == 60  # every head once; c0's resolve waits behind its leased trigger
    assert await replicas[1].claim("pagerduty", now=229.0, limit=100, lease=30.0) == []
    # Replica 0 "died" holding its claims: once the lease ends another replica takes them, in key order.
    retaken = await replicas[1].claim("pagerduty", now=230.5, limit=100, lease=30.0)
    assert sorted(i.id for i in retaken) == sorted(ids)
    c0 = next(i for i in retaken if i.payload["component"] == "c0.example.com")
    await replicas[1].mark_delivered(c0.id)
    (resolve,) = await replicas[2].claim("pagerduty", now=231.0, limit=100, lease=30.0)
    assert (resolve.payload["component"], resolve.payload["action"]) == ("c0.example.com", "resolve")


async def test_one_replica_holds_a_role_and_another_takes_it_over_when_it_dies(pg, replicas):
    first, second, third = replicas
    assert await first.lead("prune")
    assert not await second.lead("prune") and not await third.lead("prune")
    assert await first.lead("prune")  # still held
    assert await second.lead("silences")  # roles are elected independently
    # The leader's database session dies (its process killed, its host gone): the lock is released.
    conn = await pg.server.connect(pg.database)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND granted",
            role_key("prune") & 0xFFFFFFFF,  # pg_locks shows the key as an unsigned oid
        )
    finally:
        await conn.close()
    for _ in range(50):
        if await third.lead("prune"):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("nobody took the role over")
    assert not await first.lead("prune")  # the old leader learns it lost the role
    await third.close()
    for _ in range(50):
        if await first.lead("prune"):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("a closed leader's role was not released")


async def test_only_the_replica_elected_for_prune_prunes(pg, replicas):
    first, second, _ = replicas
    await ingest(first, alert(), now=100.0)
    await ingest(first, alert("resolved"), now=101.0)
    assert await first.lead("prune")

    async def one_round(store) -> None:
        worker = OutboxWorker(store, {}, clock=lambda: 10_000.0, retention=1000.0, sweep_interval=0.05)
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.2)
        await worker.stop()
        await task

    await one_round(second)  # not elected: its worker skips the prune
    assert await pg.count("receipts") == 2
    await one_round(first)
    assert await pg.count("receipts") == 0


async def test_the_stats_snapshot_loop_survives_any_failure(pg):
    store = pg.new()
    await store.open()
    try:
        refresh, failures = store._refresh_stats, []

        async def broken() -> None:  # a bug, not a StoreError: the loop must not die of it
            if not failures:
                failures.append(1)
                raise RuntimeError("stats bug")
            await refresh()

        store._refresh_stats = broken  # type: ignore[method-assign]
        await ingest(store, alert())
        for _ in range(100):  # bounded: 5 s at the fixture's 50 ms interval
            await asyncio.sleep(0.05)
            if failures and store.outbox_stats().depth.get("pagerduty"):
                break
        assert failures and store.outbox_stats().depth == {"pagerduty": 1}
    finally:
        await store.close()



async def test_a_committer_bug_answers_its_webhooks_and_the_next_ones_commit(pg, monkeypatch):
    store = pg.new()
    await store.open()
    try:
        commit = store._commit_batch

        async def broken(batch) -> None:  # a bug outside the transaction (not a StoreError)
            monkeypatch.setattr(store, "_commit_batch", commit)
            raise RuntimeError("committer bug")

        monkeypatch.setattr(store, "_commit_batch", broken)
        with pytest.raises(StoreError, match="committer bug"):
            await asyncio.wait_for(ingest(store, alert()), 5)
        assert (await asyncio.wait_for(ingest(store, alert()), 5)).new == 1
    finally:
        await store.close()


async def test_a_lookup_first_planned_on_an_empty_table_is_planned_again_as_the_table_grows(pg):
    # PostgreSQL keeps a generic plan for a prepared statement after its fifth run. Planned while the
    # occurrences table was empty, the ingest's lookup became a sequential scan and stayed one as the
    # table grew (until autovacuum analysed it): every ingest then read every occurrence. The store's
    # sessions (SESSION_SETTINGS) plan each run for its arguments and the table as it is.
    store = pg.new()
    await store.open()  # migrated
    await store.close()
    conn = await asyncpg.connect(pg.url, password=PASSWORD, server_settings=SESSION_SETTINGS)
    try:
        sql = _PostgresIngest(conn)
        wanted = Lookup(fingerprints=frozenset({"f1"}), scopes=frozenset({"production\x1fa.example.com"}),
                        slots=frozenset())
        for _ in range(8):
            async with conn.transaction():
                await sql.load_state(script.LoadState(wanted))
        await conn.execute(
            "INSERT INTO occurrences SELECT md5(i::text), '2026-01-01T00:00:00Z', 'firing', 'k' || i,"
            " 'production' || chr(31) || i || '.example.com', 0 FROM generate_series(1, 20000) AS i"
        )
        async with conn.transaction():
            await sql.load_state(script.LoadState(wanted))
        plans = await conn.fetch(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE '%FROM occurrences WHERE fingerprint = ANY%'"
            " AND statement NOT LIKE '%pg_prepared_statements%'"
        )
        plan = await conn.fetchval(
            "EXPLAIN SELECT fingerprint FROM occurrences WHERE fingerprint = ANY($1::text[])", ["f1"]
        )
    finally:
        await conn.close()
    assert [(p["generic_plans"], p["custom_plans"]) for p in plans] == [(0, 9)]
    assert "Seq Scan" not in plan


async def test_another_committer_starts_only_for_a_batch_worth_of_queued_webhooks(pg, monkeypatch):
    # A committer takes what is queued into one transaction. Another one beside it pays only when a batch
    # worth is queued: small batches cost a transaction (and its round trips) each.
    store = pg.new(pool_size=8)
    await store.open()
    batches: list[int] = []
    gate = asyncio.Event()
    commit_batch = store._commit_batch

    async def held_first(batch):
        batches.append(len(batch))
        if len(batches) == 1 or len(batches) == 3:
            await gate.wait()  # the first committer of each round is busy
        await commit_batch(batch)

    monkeypatch.setattr(store, "_commit_batch", held_first)

    async def round_of(count: int, prefix: str) -> list[asyncio.Task]:
        tasks = []
        for i in range(count):
            fingerprint = f"{prefix}{i:015x}"
            tasks.append(asyncio.create_task(ingest(store, alert(certificate=f"{fingerprint}.example.com",
                                                                 fingerprint=fingerprint))))
            await asyncio.sleep(0.02)  # each webhook arrives on its own
        return tasks

    try:
        tasks = await round_of(8, "a")  # one held, 7 queued behind it
        assert batches == [1]  # 7 queued start no second committer
        gate.set()
        assert [r.new for r in await asyncio.gather(*tasks)] == [1] * 8
        assert batches == [1, 7]
        gate.clear()
        tasks = await round_of(9, "b")  # one held, then 8 queued
        assert batches == [1, 7, 1, 8]  # the 8th queued started a second committer, which took all 8
        gate.set()
        assert [r.new for r in await asyncio.gather(*tasks)] == [1] * 9
    finally:
        await store.close()

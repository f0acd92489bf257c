"""The store, on every backend (the ``backend``/``any_store`` fixtures): atomic ingest, failure isolation,
head-of-key claims, leases, dead letters, pruning; then what only SQLite has (its file, its group commit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time

import pytest

from bridge.alertmanager import parse
from bridge.decisions import Policy
from bridge.store.base import Receipt, StoreError
from bridge.store.migrations import LATEST
from bridge.store.sqlite import SqliteStore
from tests.bridge.conftest import T1, alert, body

SINKS = ["pagerduty"]


@dataclasses.dataclass(frozen=True)
class ExplodingPolicy(Policy):
    """A policy whose severity lookup fails, to break an ingest half-way through its transaction."""

    def severity_for(self, event_class, labels):
        raise RuntimeError("boom")


DEFAULT_POLICY = Policy()
SEVEN_DAYS = "certificate_expiring_7_days"


async def ingest(store, *alerts, policy=DEFAULT_POLICY, now=100.0, sinks=SINKS):
    raw = body(*alerts)
    return await store.ingest(Receipt("alertmanager", raw, now), parse(raw), policy, sinks=sinks)


async def eventually(read, expected, timeout: float = 5.0):
    """``read()`` (sync) until it equals ``expected``: a backend may serve gauges from a periodic snapshot."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert value == expected


def count(path, table):
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


async def test_reopens_idempotently(backend):
    store = backend.new()
    await store.open()
    await ingest(store, alert())
    await store.close()
    again = backend.new()
    await again.open()
    try:
        assert [i.payload["action"] for i in await backend.pending()] == ["trigger"]
        assert (await ingest(again, alert())).duplicates == 1
    finally:
        await again.close()


async def test_ingest_is_atomic(backend, any_store):
    store = any_store
    with pytest.raises(StoreError, match="boom"):
        await ingest(store, alert(), policy=ExplodingPolicy())
    for table in ("receipts", "occurrences", "incidents", "outbox"):
        assert await backend.count(table) == 0, table
    result = await ingest(store, alert())
    assert (result.new, len(result.events)) == (1, 1)
    assert [await backend.count(t) for t in ("receipts", "occurrences", "incidents", "outbox")] == [1, 1, 1, 1]


async def test_concurrent_ingests_commit_and_a_failure_fails_alone(backend, any_store):
    store = any_store
    alerts = [alert(certificate=f"c{i}.example.com") for i in range(200)]
    tasks = [ingest(store, a) for a in alerts]
    tasks.insert(100, ingest(store, alert(certificate="bad.example.com"), policy=ExplodingPolicy()))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], StoreError)
    assert len({r.receipt_id for r in results if not isinstance(r, BaseException)}) == 200
    assert await backend.count("outbox") == 200
    assert "bad.example.com" not in {i.payload["component"] for i in await backend.pending()}


async def test_concurrent_ingests_group_commit_in_the_order_they_came(backend, any_store):
    store = any_store
    before = store.commits
    others = [ingest(store, alert(certificate=f"c{i}.example.com")) for i in range(100)]
    key = [ingest(store, alert()), ingest(store, alert("resolved")), ingest(store, alert(starts_at=T1)),
           ingest(store, alert(cls=SEVEN_DAYS)), ingest(store, alert("resolved", starts_at=T1))]
    results = await asyncio.gather(*others[:50], *key, *others[50:])
    assert store.commits - before < 50  # 105 webhooks in far fewer commits
    assert [r.new for r in results[50:55]] == [1, 1, 1, 1, 1]
    actions = [(i.payload["event_class"], i.payload["action"]) for i in await backend.pending()
               if i.payload["component"] == "api.example.com"]
    # As one after the other: when "expired" resolves, the still firing 7-day incident opens first.
    assert actions == [("certificate_expired", "trigger"), ("certificate_expired", "resolve"),
                       ("certificate_expired", "trigger"), (SEVEN_DAYS, "trigger"),
                       ("certificate_expired", "resolve")]


async def test_claims_only_the_head_of_each_key_under_a_lease(any_store):
    store = any_store
    await ingest(store, alert())
    await ingest(store, alert("resolved"))
    await ingest(store, alert(certificate="other.example.com"))
    heads = await store.claim("pagerduty", now=200.0, limit=10, lease=60.0)
    assert [(i.payload["component"], i.payload["action"]) for i in heads] == [
        ("api.example.com", "trigger"), ("other.example.com", "trigger")]
    assert await store.claim("pagerduty", now=200.0, limit=10, lease=60.0) == []  # leased, successors wait
    await store.mark_delivered(heads[0].id)
    (resolve,) = await store.claim("pagerduty", now=201.0, limit=10, lease=60.0)
    assert (resolve.payload["action"], resolve.attempts) == ("resolve", 0)
    # An expired lease (the delivery never reported back) hands the head out again.
    (again,) = await store.claim("pagerduty", now=260.5, limit=10, lease=60.0)
    assert again.id == heads[1].id


async def test_retry_keeps_the_head_and_dead_letter_releases_the_key(any_store):
    store = any_store
    await ingest(store, alert())
    await ingest(store, alert("resolved"))
    (trigger,) = await store.claim("pagerduty", now=200.0, limit=10, lease=60.0)
    await store.retry_at(trigger.id, at=300.0, error="503")
    assert await store.claim("pagerduty", now=299.0, limit=10, lease=60.0) == []
    # The head's retry time: the resolve behind it is not claimable before, however long it has been due.
    assert await store.next_due("pagerduty", now=299.0) == 300.0
    (retried,) = await store.claim("pagerduty", now=300.0, limit=10, lease=60.0)
    assert (retried.id, retried.attempts) == (trigger.id, 1)
    await store.dead_letter(retried.id, error="400 Event object is invalid: bad", status=400, now=301.0)
    (resolve,) = await store.claim("pagerduty", now=301.0, limit=10, lease=60.0)
    assert resolve.payload["action"] == "resolve"
    await eventually(lambda: len(store.dead_letters()), 1)
    (dead,) = store.dead_letters()
    assert (dead.id, dead.error, dead.status, dead.attempts) == (trigger.id, "400 Event object is invalid: bad", 400, 2)
    await eventually(lambda: dataclasses.astuple(store.outbox_stats()), (
        {"pagerduty": 1}, {"pagerduty": 100.0}, {"pagerduty": 1}))


async def test_prune_keeps_what_decisions_still_need(backend, any_store):
    store = any_store
    await ingest(store, alert(certificate="old.example.com"), now=100.0)
    await ingest(store, alert("resolved", certificate="old.example.com"), now=101.0)
    await ingest(store, alert(certificate="live.example.com"), now=102.0)
    removed = await store.prune(before=1000.0)
    # receipts, the resolved occurrence, the closed incident, the audit lines (a received and a queued per webhook)
    assert removed == 3 + 1 + 1 + 6
    assert await backend.count("occurrences") == 1
    assert await backend.count("incidents") == 1


async def test_closed_store_refuses_work(backend):
    with pytest.raises(StoreError, match="store is not open"):
        await ingest(backend.new(), alert())


async def test_a_webhook_larger_than_one_lookup_chunk_sees_all_its_state(any_store):
    store = any_store
    # 900 fingerprints and 450 scopes: the state lookups span several IN (...) statements.
    certs = [f"c{i}.example.com" for i in range(450)]
    firing = [alert(cls=cls, certificate=c) for c in certs for cls in (SEVEN_DAYS, "certificate_expired")]
    first = await ingest(store, *firing)
    assert (first.new, first.duplicates, len(first.events)) == (900, 0, 450)  # the ladder: only "expired" opens
    again = await ingest(store, *firing)
    assert (again.new, again.duplicates, again.events) == (0, 900, ())
    resolved = [alert("resolved", cls="certificate_expired", certificate=c) for c in certs]
    last = await ingest(store, *resolved, now=200.0)
    # Each scope: the expired incident resolves and the 7-day one, still firing, opens again.
    assert (last.new, len(last.events)) == (450, 900)
    assert sorted({(e.action.value, e.event_class) for e in last.events}) == [
        ("resolve", "certificate_expired"), ("trigger", SEVEN_DAYS)]


async def test_a_delayed_trigger_with_its_resolve_queued_is_superseded(backend, any_store):
    store = any_store
    await ingest(store, alert(), alert(certificate="other.example.com"), now=100.0)
    await ingest(store, alert(certificate="other.example.com", status="resolved"), now=100.5)
    first = await store.claim("pagerduty", now=101.0, limit=10, lease=60.0)
    # Both triggers go out when first due: the resolve queued behind one does not change that.
    assert [(i.payload["component"], i.superseded) for i in first] == [
        ("api.example.com", False), ("other.example.com", False)]
    for item in first:  # PagerDuty answered 503: both wait for a retry
        await store.retry_at(item.id, at=110.0, error="503")
    await ingest(store, alert(status="resolved"), now=105.0)
    again = await store.claim("pagerduty", now=110.0, limit=10, lease=60.0)
    # Delayed, and resolved meanwhile: sending them now would page for something fixed.
    assert [(i.payload["action"], i.superseded) for i in again] == [("trigger", True), ("trigger", True)]
    for item in again:
        await store.mark_delivered(item.id)
    resolves = await store.claim("pagerduty", now=111.0, limit=10, lease=60.0)
    assert [(i.payload["action"], i.superseded) for i in resolves] == [("resolve", False), ("resolve", False)]


async def test_an_undecodable_outbox_row_becomes_a_dead_letter_alone(backend, any_store):
    store = any_store
    await ingest(store, alert(certificate="a.example.com"), alert(certificate="b.example.com"))
    first, second = await backend.pending()
    await backend.set_payload(first.id, "{not json")
    await backend.set_payload(second.id, "[1, 2]")
    await ingest(store, alert(certificate="c.example.com"), now=101.0)
    items = await store.claim("pagerduty", now=200.0, limit=10, lease=60.0)
    assert [i.payload["component"] for i in items] == ["c.example.com"]
    await eventually(lambda: len(store.dead_letters()), 2)
    dead = store.dead_letters()
    assert sorted(d.id for d in dead) == [first.id, second.id]
    assert all(d.error.startswith(f"outbox row {d.id} cannot be read, not sent:") for d in dead)
    assert {d.attempts for d in dead} == {0}
    assert await store.claim("pagerduty", now=201.0, limit=10, lease=60.0) == []


# --- SQLite only ---------------------------------------------------------------------------------------


async def test_sqlite_migrates_an_empty_file_in_wal_mode(tmp_path):
    path = tmp_path / "sub" / "b.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST == 7
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "audit" in tables and "action_runs" not in tables  # 7: action outcomes are audit lines


async def test_sqlite_refuses_a_newer_schema_and_a_second_process(tmp_path):
    path = tmp_path / "b.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99 is newer than this bridge knows"):
        await SqliteStore(path).open()
    other = tmp_path / "c.db"
    first = SqliteStore(other)
    await first.open()
    try:
        with pytest.raises(StoreError, match="another bridge process holds it"):
            await SqliteStore(other).open()
    finally:
        await first.close()


async def test_sqlite_group_commit_batches_concurrent_ingests(store):
    before = store.commits
    await asyncio.gather(*(ingest(store, alert(certificate=f"c{i}.example.com")) for i in range(200)))
    assert store.commits - before < 50  # 200 operations in far fewer fsync'd commits


async def test_sqlite_leases_of_a_crashed_process_are_released_at_open(tmp_path):
    store = SqliteStore(tmp_path / "b.db")
    await store.open()
    await ingest(store, alert())
    assert len(await store.claim("pagerduty", now=200.0, limit=10, lease=3600.0)) == 1
    await store.close()
    store = SqliteStore(tmp_path / "b.db")
    await store.open()
    try:
        assert len(await store.claim("pagerduty", now=201.0, limit=10, lease=60.0)) == 1
    finally:
        await store.close()


async def test_sqlite_a_symlink_to_the_store_file_is_the_same_lock(tmp_path):
    real = tmp_path / "data" / "b.db"
    first = SqliteStore(real)
    await first.open()
    (tmp_path / "elsewhere").mkdir()
    alias = tmp_path / "elsewhere" / "alias.db"
    alias.symlink_to(real)
    try:
        with pytest.raises(StoreError, match="another bridge process holds it"):
            await SqliteStore(alias).open()
    finally:
        await first.close()


async def test_a_trigger_claimed_by_a_process_that_died_is_superseded_by_its_resolve(backend, any_store):
    # Handed out when first due, never reported back (its process died with it), resolved meanwhile: when
    # it is handed out again it is late, as a retried trigger is, and does not page for something fixed.
    store = any_store
    await ingest(store, alert(), alert(certificate="other.example.com"), now=100.0)
    first = await store.claim("pagerduty", now=101.0, limit=10, lease=60.0)
    assert [i.superseded for i in first] == [False, False]
    await ingest(store, alert(status="resolved"), now=120.0)
    if backend.name == "sqlite":  # one process per file: the next one voids the leases at start
        await store.close()
        store = backend.new()
        await store.open()
        now = 130.0
    else:  # another replica, once the lease is over
        store = backend.new()
        await store.open()
        now = 161.0
    try:
        again = await store.claim("pagerduty", now=now, limit=10, lease=60.0)
        assert [(i.payload["component"], i.payload["action"], i.superseded) for i in again] == [
            ("api.example.com", "trigger", True), ("other.example.com", "trigger", False)]
    finally:
        await store.close()

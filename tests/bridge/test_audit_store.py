"""The audit trail on every backend: what one ingest writes (verdicts and why, events queued), the lines an
outcome writes with it, the queries history and report make, and its own retention."""

from __future__ import annotations

import asyncio

from bridge.alertmanager import parse
from bridge.audit import AuditEntry
from bridge.decisions import Policy
from bridge.keys import incident_key
from bridge.store.base import Receipt
from tests.bridge.conftest import T1, alert, body

EXPIRED = incident_key("certificate_expired", "api.example.com", "production")
OTHER = incident_key("certificate_expired", "other.example.com", "production")
DAY = 86400.0
NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


async def ingest(store, *alerts, now=NOW, peer="10.0.0.7", external="http://am-1:9093"):
    raw = body(*alerts).replace(b"http://alertmanager.example:9093", external.encode())
    return await store.ingest(Receipt("alertmanager", raw, now, peer=peer), parse(raw), Policy(),
                              sinks=["pagerduty", "statuspage"])


def words(entries):
    return [(e.side, e.actor, e.action, e.detail) for e in entries]


async def test_each_webhook_says_who_sent_it_and_what_became_of_each_alert(any_store):
    await ingest(any_store, alert(issuer="R3"), alert(certificate="other.example.com"))
    await ingest(any_store, alert(), now=NOW + 1, peer="10.0.0.8", external="http://am-2:9093")  # HA peer
    await ingest(any_store, alert("resolved"), now=NOW + 60)
    await ingest(any_store, alert(), now=NOW + 61, peer="10.0.0.8", external="http://am-2:9093")  # its stale copy
    await ingest(any_store, alert(starts_at="2026-11-19T10:00:00.000000Z"), now=NOW + 62)  # older than known
    trail = await any_store.audit_trail(certificate="api.example.com")
    assert words(trail) == [
        ("alertmanager", "10.0.0.7", "received", "firing from http://am-1:9093 via 10.0.0.7 (receipt 1)"),
        ("bridge", "certpager", "trigger", "queued for PagerDuty, Statuspage"),
        ("alertmanager", "10.0.0.8", "duplicate",
         "firing from http://am-2:9093 via 10.0.0.8 (receipt 2): duplicate: firing already recorded at 08:00:00"),
        ("alertmanager", "10.0.0.7", "received", "resolved from http://am-1:9093 via 10.0.0.7 (receipt 3)"),
        ("bridge", "certpager", "resolve", "queued for PagerDuty, Statuspage (resolved in Alertmanager)"),
        ("alertmanager", "10.0.0.8", "stale", "firing from http://am-2:9093 via 10.0.0.8 (receipt 4): "
         "stale snapshot of an occurrence resolved at 08:01:00"),
        ("alertmanager", "10.0.0.7", "stale", "firing from http://am-1:9093 via 10.0.0.7 (receipt 5): "
         "stale snapshot: a newer occurrence of this alert started at 2026-11-20T10:00:00.000000Z"),
    ]
    first = trail[0]
    assert (first.key, first.certificate, first.environment, first.event_class, first.issuer, first.at) == (
        EXPIRED, "api.example.com", "production", "certificate_expired", "R3", NOW)
    assert [e.key for e in await any_store.audit_trail(OTHER)] == [OTHER, OTHER]


async def test_queries_by_key_time_and_limit_and_lines_written_with_an_outcome(any_store):
    await ingest(any_store, alert())
    await ingest(any_store, alert("resolved"), now=NOW + 10)
    (trigger,) = await any_store.claim("pagerduty", now=NOW + 100, limit=10, lease=30)  # head of its key
    await any_store.mark_delivered(trigger.id, audit=[AuditEntry(NOW + 11, EXPIRED, "pagerduty", "certpager",
                                                                 "delivered", "trigger: accepted")])
    await any_store.record_audit([AuditEntry(NOW + 20, EXPIRED, "pagerduty", "Jane Doe", "acknowledge", "")])
    trail = await any_store.audit_trail(EXPIRED, since=NOW + 10, until=NOW + 20)
    assert [e.action for e in trail] == ["received", "resolve", "delivered"]
    assert [e.action for e in await any_store.audit_trail(EXPIRED, limit=2)] == ["delivered", "acknowledge"]
    assert [e.action for e in await any_store.audit_trail(since=NOW + 20)] == ["acknowledge"]
    # Retention: the audit trail is kept longer than receipts.
    assert await any_store.prune(before=NOW + 100, audit_before=NOW + 10) > 0
    assert [e.action for e in await any_store.audit_trail()] == ["received", "resolve", "delivered", "acknowledge"]


async def test_a_batch_of_webhooks_writes_every_line(any_store):
    """PostgreSQL commits concurrent webhooks as one batch; SQLite as one group commit: no line is lost."""
    alerts = [alert(certificate=f"c{i}.example.com", starts_at=T1) for i in range(20)]
    await asyncio.gather(*(ingest(any_store, a) for a in alerts), *(ingest(any_store, a) for a in alerts))
    trail = await any_store.audit_trail()
    assert sorted(e.action for e in trail).count("received") == 20
    assert sorted(e.action for e in trail).count("duplicate") == 20
    assert sorted(e.action for e in trail).count("trigger") == 20

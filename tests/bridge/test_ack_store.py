"""Ack sync's store operations, on every backend (SQLite, and PostgreSQL on uvloop): the same script, the
same answers."""

from __future__ import annotations

import json

from bridge import acksync, audit
from bridge.alertmanager import parse
from bridge.decisions import Policy
from bridge.keys import incident_key
from bridge.pagerduty_webhook import parse as parse_webhook
from bridge.store.base import Receipt
from tests.bridge.conftest import alert, body

KEY = incident_key("certificate_expired", "api.example.com", "production")
SETTINGS = acksync.Settings(silence_max=3600.0, rest=False)


def webhook(event_type: str, occurred_at: str, webhook_id: str):
    raw = json.dumps({"event": {
        "id": webhook_id, "event_type": event_type, "occurred_at": occurred_at,
        "agent": {"type": "user_reference", "summary": "Alice"},
        "data": {"type": "incident", "id": "PINC", "incident_key": KEY, "html_url": "https://pd/incidents/PINC"},
    }}).encode()
    return raw, parse_webhook(raw, {"x-webhook-id": webhook_id})


async def test_webhook_dedup_sync_once_silences_and_audit(any_store):
    store = any_store
    raw = body(alert())
    await store.ingest(Receipt("alertmanager", raw, 100.0), parse(raw), Policy(), sinks=["pagerduty"])
    data, event = webhook("incident.acknowledged", "2026-11-20T10:05:00Z", "w1")
    assert await store.record_pagerduty_webhook(Receipt("pagerduty", data, 101.0), event) is True
    assert await store.record_pagerduty_webhook(Receipt("pagerduty", data, 102.0), event) is False

    def decide(state: acksync.SyncState) -> acksync.Changes:
        return acksync.on_pagerduty_event(state, event, [KEY], SETTINGS, now=103.0)

    changes = await store.sync([KEY], decide, now=103.0, webhook_id="w1")
    assert isinstance(changes, acksync.Changes)
    assert [(r.sink, r.payload["op"]) for r in changes.outbox] == [("alertmanager", "create")]
    again = await store.sync([KEY], decide, now=104.0, webhook_id="w1")  # a redelivered item: nothing
    assert isinstance(again, acksync.Changes) and again.outbox == [] and again.acks == []
    ack = await store.ack_state(KEY)
    assert ack is not None and (ack.status, ack.actor, ack.silenced, ack.pd_incident_id) == (
        "acknowledged", "Alice", True, "PINC")

    await store.record_silence(KEY, "s-1", "http://am", now=105.0)
    assert await store.live_silences(KEY) == [("s-1", "http://am")]
    polled: list[acksync.SyncState] = []
    await store.sync(None, lambda s: polled.append(s) or acksync.Changes(), now=106.0)
    assert polled[0].own_silences == frozenset({"s-1"})
    assert polled[0].incidents[KEY].firing and polled[0].incidents[KEY].open
    await store.silence_expired(KEY, "s-1", now=107.0)
    assert await store.live_silences(KEY) == []

    # Resolved by a person while firing: closed, its firing occurrence counted resolved.
    _, resolved = webhook("incident.resolved", "2026-11-20T10:07:00Z", "w2")
    await store.sync([KEY], lambda s: acksync.on_pagerduty_event(s, resolved, [KEY], SETTINGS, now=108.0),
                     now=108.0)
    after: list[acksync.SyncState] = []
    await store.sync([KEY], lambda s: after.append(s) or acksync.Changes(), now=109.0)
    assert not after[0].incidents[KEY].open and after[0].incidents[KEY].firing == ()
    repeat = await store.ingest(Receipt("alertmanager", raw, 110.0), parse(raw), Policy(), sinks=["pagerduty"])
    assert (repeat.new, repeat.stale, repeat.events) == (0, 1, ())

    trail = await store.audit_trail(KEY)
    assert [(e.side, e.action) for e in trail if e.side == "alertmanager"] == [  # the ingest's, and why
        ("alertmanager", "received"), ("alertmanager", "stale")]
    assert [(e.side, e.action) for e in trail if not audit.from_pipeline(e)] == [
        ("pagerduty", "incident.acknowledged"), ("bridge", "silence created"), ("bridge", "silence expired"),
        ("pagerduty", "incident.resolved"),
    ]
    assert await store.prune(before=1e12) > 0
    assert await store.audit_trail(KEY) == []

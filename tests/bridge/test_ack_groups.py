"""Ack sync of grouped incidents (``grouping: type: intelligent``): one PagerDuty incident under a
``certgroup-`` key stands for several certificates. On every store backend, then end to end with the real
Alertmanager HA pair and the fake PagerDuty."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from bridge import acksync
from bridge.alertmanager import parse
from bridge.decisions import Policy
from bridge.events import Severity
from bridge.keys import incident_key
from bridge.pagerduty_webhook import parse as parse_webhook
from bridge.store.base import Receipt, Store
from tests.bridge.ackharness import Harness, Pair, alertmanager_pair, eventually, harness
from tests.bridge.conftest import alert, body

EXP = "certificate_expired"
POLICY = Policy(severity_mapping={EXP: Severity.CRITICAL}, correlation=frozenset({EXP}),
                group_fields=("environment", "issuer"), group_window=300.0)
SETTINGS = acksync.Settings(silence_max=3600.0, rest=False)
CERTS = ("a.example.com", "b.example.com")
KEYS = [incident_key(EXP, c, "production") for c in CERTS]


def member(cert: str, **kw: str) -> dict:
    return alert(cls=EXP, certificate=cert, issuer="R3", fingerprint=f"fp-{cert}", **kw)


def webhook(event_type: str, occurred_at: str, webhook_id: str, key: str, person: bool = True):
    agent = {"type": "user_reference" if person else "service_reference", "summary": "Alice"}
    raw = json.dumps({"event": {
        "id": webhook_id, "event_type": event_type, "occurred_at": occurred_at, "agent": agent,
        "data": {"type": "incident", "id": "PGRP", "incident_key": key, "html_url": "https://pd/incidents/PGRP"},
    }}).encode()
    return raw, parse_webhook(raw, {"x-webhook-id": webhook_id})


async def pd_event(store: Store, event_type: str, at: float, key: str) -> acksync.Changes:
    raw, event = webhook(event_type, f"2026-11-20T10:{int(at) % 60:02d}:00Z", f"w{at}", key)
    assert await store.record_pagerduty_webhook(Receipt("pagerduty", raw, at), event)
    changes = await store.sync([key], lambda s: acksync.on_pagerduty_event(s, event, [key], SETTINGS, now=at),
                               now=at, webhook_id=event.webhook_id)
    assert isinstance(changes, acksync.Changes)
    return changes


async def state_of(store: Store, keys: list[str] | None, at: float) -> acksync.SyncState:
    seen: list[acksync.SyncState] = []
    await store.sync(keys, lambda s: seen.append(s) or acksync.Changes(), now=at)
    return seen[0]


async def opened_group(store: Store) -> str:
    raw = body(*(member(c) for c in CERTS))
    result = await store.ingest(Receipt("alertmanager", raw, 100.0), parse(raw), POLICY, sinks=["pagerduty"])
    [event] = result.events
    assert event.key.startswith("certgroup-")
    return event.key


async def test_group_ack_silences_each_member_and_a_person_resolve_closes_them(any_store):
    store = any_store
    group = await opened_group(store)
    changes = await pd_event(store, "incident.acknowledged", 101.0, group)
    creates = [r.payload for r in changes.outbox if r.payload["op"] == "create"]
    # One silence per member, all recorded under the group's key; each matches its own certificate only.
    assert [(r.sink, r.ordering_key) for r in changes.outbox] == [("alertmanager", group)] * 2
    assert {p["key"] for p in creates} == {group}
    assert sorted(m["value"] for p in creates for m in p["matchers"] if m["name"] == "certificate") == list(CERTS)
    ack = await store.ack_state(group)
    assert ack is not None and (ack.status, ack.silenced, ack.pd_incident_id) == ("acknowledged", True, "PGRP")

    unack = await pd_event(store, "incident.unacknowledged", 102.0, group)
    assert [r.payload for r in unack.outbox] == [{"op": "expire", "key": group}]

    await pd_event(store, "incident.acknowledged", 103.0, group)
    resolved = await pd_event(store, "incident.resolved", 104.0, group)
    assert [r.payload for r in resolved.outbox] == [{"op": "expire", "key": group}]
    after = await state_of(store, [*KEYS, group], 105.0)
    assert all(not after.incidents[k].open and after.incidents[k].firing == () for k in KEYS)
    assert all(after.incidents[k].group == "" for k in KEYS)
    assert not after.groups[group].open and after.groups[group].members == {}
    # Alertmanager's repeats are stale: nobody is paged again until a new occurrence.
    raw = body(*(member(c) for c in CERTS))
    repeat = await store.ingest(Receipt("alertmanager", raw, 106.0), parse(raw), POLICY, sinks=["pagerduty"])
    assert (repeat.new, repeat.stale, repeat.events) == (0, 2, ())
    raw = body(member(CERTS[0], starts_at="2026-11-20T11:00:00Z"))
    anew = await store.ingest(Receipt("alertmanager", raw, 107.0), parse(raw), POLICY, sinks=["pagerduty"])
    [event] = anew.events
    assert event.action.value == "trigger" and event.key.startswith("certgroup-") and event.key != group


async def test_group_resolved_by_pagerduty_itself_closes_nothing(any_store):
    store = any_store
    group = await opened_group(store)
    raw, event = webhook("incident.resolved", "2026-11-20T10:05:00Z", "w-auto", group, person=False)
    await store.record_pagerduty_webhook(Receipt("pagerduty", raw, 101.0), event)
    await store.sync([group], lambda s: acksync.on_pagerduty_event(s, event, [group], SETTINGS, now=101.0),
                     now=101.0, webhook_id="w-auto")
    after = await state_of(store, None, 102.0)
    assert all(after.incidents[k].open and after.incidents[k].group == group for k in KEYS)
    assert after.groups[group].open


def snapshot(silenced: dict[str, tuple[str, ...]], *, person: str = "alice") -> acksync.Snapshot:
    alerts = {f"fp-{c}": acksync.AlertView(f"fp-{c}", "suppressed" if silenced.get(c) else "active",
                                           silenced_by=silenced.get(c, ())) for c in CERTS}
    ids = {sid for sids in silenced.values() for sid in sids}
    return acksync.Snapshot(alerts, {sid: acksync.SilenceView(sid, person, "on it", "active") for sid in ids})


async def poll(store: Store, snap: acksync.Snapshot, at: float) -> acksync.Changes:
    changes = await store.sync(None, lambda s: acksync.on_poll(s, snap, now=at, vanished_after=5.0), now=at)
    assert isinstance(changes, acksync.Changes)
    return changes


def sent(changes: acksync.Changes) -> list[tuple[str, str]]:
    return [(r.payload["action"], r.ordering_key) for r in changes.outbox if r.sink == "pagerduty"]


async def test_poller_acks_a_group_only_when_every_firing_member_is_silenced(any_store):
    store = any_store
    group = await opened_group(store)
    assert sent(await poll(store, snapshot({CERTS[0]: ("s1",)}), 101.0)) == []  # one member: not the group
    assert sent(await poll(store, snapshot({CERTS[0]: ("s1",), CERTS[1]: ("s2",)}), 102.0)) == [
        ("acknowledge", group)]
    assert sent(await poll(store, snapshot({CERTS[0]: ("s1",), CERTS[1]: ("s2",)}), 103.0)) == []  # once
    # The bridge's own silences are never a person's: no ack loop.
    assert sent(await poll(store, snapshot({c: ("own",) for c in CERTS}, person="certpager"), 103.5)) == []
    # A silence ends while its member fires: trigger again on the group's key (never a member's own key).
    again = await poll(store, snapshot({CERTS[1]: ("s2",)}), 104.0)
    assert sent(again) == [("trigger", group)]
    [trigger] = [r.payload for r in again.outbox]
    assert trigger["custom_details"]["group_key"] == group

    # Suppressed again, then every member gone from Alertmanager without a resolve: the group resolved.
    await poll(store, snapshot({c: (f"s-{c}",) for c in CERTS}), 105.0)
    empty = acksync.Snapshot({}, {})
    assert sent(await poll(store, empty, 106.0)) == []
    gone = await poll(store, empty, 112.0)
    assert sent(gone) == [("resolve", group)]
    after = await state_of(store, [*KEYS, group], 113.0)
    assert all(not after.incidents[k].open and after.incidents[k].group == "" for k in KEYS)
    assert not after.groups[group].open


# --- end to end: the real Alertmanager HA pair, the fake PagerDuty ------------------------------------------

GROUPING = {"type": "intelligent", "fields": ["environment", "issuer"], "time_window": "5m", "correlation": [EXP]}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    with alertmanager_pair(tmp_path_factory.mktemp("am-pair")) as started:
        yield started


async def silenced_by(h: Harness, cert: str) -> list[str]:
    found = await h.am_alert(cert)
    return list(found["status"]["silencedBy"]) if found else []


async def test_a_group_incident_syncs_with_alertmanager_both_ways(tmp_path, pair: Pair):
    run = time.monotonic_ns()
    members, outsider = [f"g{n}-{run}.example.com" for n in (0, 1)], f"o-{run}.example.com"
    async with harness(tmp_path, pair, grouping=GROUPING) as h:
        for cert in members:
            await h.fire(cert, issuer="R3")
        await h.fire(outsider, issuer="Other CA")  # its own group: another PagerDuty incident
        await eventually("two PagerDuty incidents", lambda: len(h.fake.incidents) == 2)
        incident = next(i for i in h.fake.incidents if i.triggers > 1)  # opened, then the second member joined
        group = incident.dedup_key
        assert group.startswith("certgroup-")

        incident.status = "acknowledged"
        await h.send(h.fake.webhook("incident.acknowledged", incident, agent="Alice Oncall"))
        for cert in members:  # one silence per member, matching that member's alert and nothing else
            [silence] = await eventually(f"{cert} silenced", lambda c=cert: silenced_by(h, c))
            [mine] = [s for s in await h.silences(cert) if s["id"] == silence]
            assert mine["createdBy"] == "certpager" and mine["comment"].startswith("ACK! acknowledged in PagerDuty")
        assert await silenced_by(h, outsider) == []
        for _ in range(3):  # the bridge's own silences cover the group: never taken for a person's
            await h.bridge.poller.poll()  # type: ignore[union-attr]
        assert ("acknowledge", group) not in h.fake.actions()

        await h.send(h.fake.webhook("incident.unacknowledged", incident, agent=None,
                                    occurred_at="2026-11-20T10:06:00.000Z"))
        for cert in members:
            await eventually(f"{cert} unsilenced", lambda c=cert: _not(silenced_by(h, c)))

        # Alertmanager -> PagerDuty: a person's silences over every member acknowledge the group's incident.
        first = await h.person_silence(members[0])
        for _ in range(3):
            await h.bridge.poller.poll()  # type: ignore[union-attr]
        assert ("acknowledge", group) not in h.fake.actions()  # one member silenced is not the group
        await h.person_silence(members[1])
        await eventually("group acknowledged", lambda: ("acknowledge", group) in h.fake.actions())
        assert not any(key in {h.key(c) for c in members} for _, key in h.fake.actions())  # never a member's key
        triggers = h.fake.actions().count(("trigger", group))
        await h.expire_silence(first)
        await eventually("triggered again", lambda: h.fake.actions().count(("trigger", group)) == triggers + 1)

        # Silenced again, then gone from Alertmanager without a resolved notification: the group resolved.
        first = await h.person_silence(members[0])
        await eventually("acknowledged again", lambda: h.fake.actions().count(("acknowledge", group)) == 2)
        for cert in members:
            await h.resolve_in_alertmanager(cert)
        await eventually("group resolved", lambda: ("resolve", group) in h.fake.actions())
        assert ("resolve", h.key(outsider)) not in h.fake.actions()


async def _not(value) -> bool:
    return not await value


async def test_a_group_escalated_or_raised_in_pagerduty_is_made_worse_on_statuspage(any_store):
    store, policy = any_store, dataclasses.replace(POLICY, severity_mapping={EXP: Severity.ERROR})
    raw = body(*(member(c) for c in CERTS))
    [opened] = (await store.ingest(Receipt("alertmanager", raw, 100.0), parse(raw), policy, sinks=["pagerduty"])).events
    settings = dataclasses.replace(SETTINGS, statuspage_min=Severity.WARNING)
    raw_event, event = webhook("incident.escalated", "2026-11-20T10:05:00Z", "w-esc", opened.key)
    await store.record_pagerduty_webhook(Receipt("pagerduty", raw_event, 101.0), event)
    changes = await store.sync([opened.key], lambda s: acksync.on_pagerduty_event(
        s, event, [opened.key], settings, now=101.0), now=101.0, webhook_id="w-esc")
    assert isinstance(changes, acksync.Changes)
    [row] = changes.outbox  # no REST token here: Statuspage only, on the group's own incident
    assert (row.sink, row.ordering_key, row.payload["severity"]) == ("statuspage", opened.key, "critical")
    assert row.payload["custom_details"]["group_key"] == opened.key


async def test_snoozing_a_group_or_one_of_its_members_snoozes_the_group_incident(any_store):
    # PagerDuty pages the group as one incident: its key, or the key of a member (which is never paged on
    # its own), snoozes that incident and silences each firing member until then.
    store = any_store
    group = await opened_group(store)

    async def snooze(key: str, at: float) -> acksync.Changes | str:
        return await store.sync([key], lambda s: acksync.on_snooze(
            s, key, duration=600.0, actor="dave", now=at, settings=SETTINGS), now=at)

    for asked, at in ((group, 101.0), (KEYS[1], 102.0)):
        changes = await snooze(asked, at)
        assert isinstance(changes, acksync.Changes)
        rest = [(r.sink, r.ordering_key, r.payload["op"], r.payload["key"]) for r in changes.outbox
                if r.sink == acksync.REST_SINK]
        assert rest == [(acksync.REST_SINK, group, "snooze", group)]
        creates = [r.payload for r in changes.outbox if r.payload["op"] == "create"]
        assert {p["key"] for p in creates} == {group}
        assert sorted(m["value"] for p in creates for m in p["matchers"] if m["name"] == "certificate") == list(CERTS)
        ack = await store.ack_state(group)
        assert ack is not None
        assert (ack.status, ack.side, ack.actor, ack.silenced) == ("acknowledged", "api", "dave", True)
    # The second snooze replaced the first one's silences.
    assert [r.payload for r in changes.outbox if r.payload["op"] == "expire"] == [{"op": "expire", "key": group}]
    assert await snooze("certgroup-nope", 103.0) == "no incident 'certgroup-nope'"
    raw = body(*(member(c, status="resolved") for c in CERTS))
    await store.ingest(Receipt("alertmanager", raw, 104.0), parse(raw), POLICY, sinks=["pagerduty"])
    assert await snooze(group, 105.0) == f"group {group!r} is not firing"

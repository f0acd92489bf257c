"""Ack sync end to end: a real Alertmanager HA pair, the fake PagerDuty (Events + REST), signed Webhooks v3.

The bridge's list of Alertmanagers starts with one nobody listens on, so every silence write here also
proves the fail-over to the pair, and every silence is checked to exist once (gossiped to both peers).
"""

from __future__ import annotations

import contextlib
import time

import pytest

from bridge.audit import AuditEntry, from_pipeline
from tests.bridge.ackharness import (
    NEW_SECRET,
    OLD_SECRET,
    ROUTING_KEY,
    TOKEN,
    Harness,
    Pair,
    alertmanager_pair,
    eventually,
    harness,
    parse_time,
)
from tests.fakes.pagerduty import Incident
from tests.fakes.statuspage import run_fake_statuspage


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    with alertmanager_pair(tmp_path_factory.mktemp("am-pair")) as started:
        yield started


async def opened(h: Harness, certificate: str) -> None:
    await h.fire(certificate)
    await eventually("the trigger reached PagerDuty", lambda: any(
        h.key(certificate) in i.alert_keys for i in h.fake.incidents))


async def bridge_silences(h: Harness, certificate: str, state: str = "active") -> list[dict]:
    return [s for s in await h.silences(certificate) if s["createdBy"] == "certpager" and s["status"]["state"] == state]


async def test_pagerduty_ack_silences_the_alert_and_unack_expires_it(tmp_path, pair: Pair):
    cert = f"ack-{time.monotonic_ns()}.example.com"
    async with harness(tmp_path, pair) as h:
        await opened(h, cert)
        incident = h.incident(cert)
        incident.status = "acknowledged"
        ack = h.fake.webhook("incident.acknowledged", incident, agent="Alice Oncall")
        # During a rotation PagerDuty signs with both secrets; afterwards with the new one alone.
        status, body = await h.send(ack, secrets=(OLD_SECRET, NEW_SECRET), webhook_id="wh-ack-1")
        assert (status, body["status"]) == (202, "accepted")
        [silence] = await eventually("the ack silence", lambda: bridge_silences(h, cert))

        async def acked() -> bool:  # the lifecycle metric of the ack (certpager report's MTTA)
            [family] = h.bridge.metrics.time_to_acknowledge.collect()
            return any(s.name.endswith("_count") and s.value == 1 for s in family.samples)

        await eventually("time to acknowledge observed", acked)
        assert silence["comment"].startswith("ACK! acknowledged in PagerDuty by Alice Oncall: "
                                             f"https://acme.pagerduty.com/incidents/{incident.id}")
        # Ends at the service's acknowledgement timeout (1800 s in the fake), under silence_max (24 h).
        assert abs(parse_time(silence["endsAt"]) - parse_time(silence["startsAt"]) - 1800) < 5
        # The alert really is silenced, on both peers (the silence was written once and gossiped).
        for url in h.am:
            alert = await eventually("silenced on " + url, lambda u=url: _silenced_by(h, cert, u))
            assert alert == [silence["id"]]
        # A redelivery of the same webhook changes nothing.
        status, body = await h.send(ack, webhook_id="wh-ack-1")
        assert (status, body["status"]) == (202, "duplicate")
        for _ in range(3):  # polls see the bridge's own silence: never a person's, so no ack goes back
            await h.bridge.poller.poll()  # type: ignore[union-attr]
        assert ("acknowledge", h.key(cert)) not in h.fake.actions()

        status, _ = await h.send(h.fake.webhook("incident.unacknowledged", incident, agent=None,
                                                occurred_at="2026-11-20T10:35:00.000Z"))
        assert status == 202
        await eventually("the silence expired", lambda: bridge_silences(h, cert, "expired"))
        assert await bridge_silences(h, cert) == []
        assert len({s["id"] for s in await h.silences(cert)}) == 1  # written exactly once
        audit = await ack_lines(h, cert)
        assert [(a["side"], a["action"]) for a in audit] == [
            ("pagerduty", "incident.acknowledged"), ("bridge", "silence created"),
            ("pagerduty", "incident.unacknowledged"), ("bridge", "silence expired"),
        ]
        assert audit[0]["actor"] == "Alice Oncall"


async def ack_lines(h: Harness, cert: str) -> list[dict]:
    """The audit lines of ack sync (the trail also holds the ingest's and the outbox's, bridge.audit)."""
    return [a for a in await h.audit(cert) if not from_pipeline(AuditEntry(**a))]


async def _silenced_by(h: Harness, cert: str, url: str) -> list[str] | None:
    alert = await h.am_alert(cert, url)
    return alert["status"]["silencedBy"] if alert and alert["status"]["silencedBy"] else None


async def test_webhook_signatures_replays_and_unknown_types(tmp_path, pair: Pair):
    async with harness(tmp_path, pair) as h:
        await opened(h, cert := f"sig-{time.monotonic_ns()}.example.com")
        event = h.fake.webhook("incident.acknowledged", h.incident(cert))
        assert (await h.send(event, secrets=()))[0] == 401  # no signature
        status, body = await h.send(event, secrets=("not-the-secret",))
        assert (status, body["error"]) == (403, "X-PagerDuty-Signature matches no configured secret")
        assert (await h.send(event, signature="v1=zz, garbage"))[0] == 403
        status, body = await h.send({"event": {"id": "x"}})
        assert (status, body["error"]) == (400, "event.event_type: expected a non-empty string")
        status, body = await h.send({**h.fake.webhook("pagey.ping", h.incident(cert))})
        assert (status, body["status"]) == (202, "ignored")
        status, body = await h.send(h.fake.webhook("incident.conference_bridge.updated", h.incident(cert)))
        assert (status, body["status"]) == (202, "ignored")
        metrics = await (await h.client.get("/metrics")).text()
        assert 'certpager_bridge_webhooks_total{result="ignored",source="pagerduty"} 2.0' in metrics
        assert 'certpager_bridge_webhooks_total{result="bad_signature",source="pagerduty"} 2.0' in metrics
        assert 'certpager_bridge_webhooks_total{result="unauthorized",source="pagerduty"} 1.0' in metrics
        # Nothing unsigned, badly signed or ignored was acted on.
        await h.bridge.poller.poll()  # type: ignore[union-attr]
        assert await ack_lines(h, cert) == []  # (the webhooks that opened it are audited too)


async def test_resolved_by_a_person_closes_until_a_new_occurrence(tmp_path, pair: Pair):
    cert = f"res-{time.monotonic_ns()}.example.com"
    async with harness(tmp_path, pair) as h:
        await opened(h, cert)
        incident = h.incident(cert)
        incident.status = "acknowledged"
        await h.send(h.fake.webhook("incident.acknowledged", incident, occurred_at="2026-11-20T10:05:00Z"))
        await eventually("the ack silence", lambda: bridge_silences(h, cert))
        incident.status = "resolved"
        await h.send(h.fake.webhook("incident.resolved", incident, agent="Bob", occurred_at="2026-11-20T10:07:00Z"))
        await eventually("the silence expired", lambda: bridge_silences(h, cert, "expired"))
        # An acknowledged delivered late (out of order) must not silence a resolved incident again.
        await h.send(h.fake.webhook("incident.acknowledged", incident, occurred_at="2026-11-20T10:06:00Z"))
        await eventually("the late ack audited", lambda: _has(h, cert, "out of order"))
        assert await bridge_silences(h, cert) == []
        # Alertmanager repeats the firing alert (repeat_interval): it does not page again.
        triggers = h.fake.actions().count(("trigger", h.key(cert)))
        answer = await h.alertmanager_webhook(h.fired[cert])
        assert (answer["new"], answer["stale"], answer["events"]) == (0, 1, 0)
        # A new occurrence (it resolved and fired anew: a later startsAt) pages.
        again = h.fired[cert]
        again["alerts"][0]["startsAt"] = "2030-01-01T00:00:00Z"
        await h.alertmanager_webhook(again)
        await eventually("a new trigger", lambda: h.fake.actions().count(("trigger", h.key(cert))) == triggers + 1)
        audit = await h.audit(cert)
        assert ("Bob", "incident.resolved") in [(a["actor"], a["action"]) for a in audit]


async def _has(h: Harness, cert: str, text: str) -> bool:
    return any(text in a["detail"] for a in await h.audit(cert))


async def test_escalation_raises_priority_through_rest_with_429_and_grouped_incidents(tmp_path, pair: Pair):
    async with harness(tmp_path, pair) as h:
        await opened(h, a := f"esc-a-{time.monotonic_ns()}.example.com")
        await opened(h, b := f"esc-b-{time.monotonic_ns()}.example.com")
        first, second = h.incident(a), h.incident(b)
        h.fake.group(first, second)  # alert grouping: one incident, two alerts, no incident_key
        first.priority_id = "PP3"
        h.fake.fail_next_rest(1, 429, retry_after=0)  # the first REST call is rate limited
        status, _ = await h.send(h.fake.webhook("incident.escalated", first))
        assert status == 202
        await eventually("priority raised", lambda: first.priority_id == "PP2")
        assert ("GET", f"/incidents/{first.id}/alerts") in [(m, p) for m, p, _ in h.fake.rest_requests]
        assert [r for r in h.fake.rest_requests if r[0] == "PUT"][-1][2] == {
            "incident": {"type": "incident_reference", "priority": {"id": "PP2", "type": "priority_reference"}}}
        await h.send(h.fake.webhook("incident.priority_updated", first, occurred_at="2026-11-20T10:09:00Z"))
        for cert in (a, b):  # both bridge incidents of the grouped PagerDuty incident are audited
            await eventually("priority recorded", lambda c=cert: _has(h, c, "priority P2"))
        # An incident PagerDuty no longer knows (404) and a wrong token (401) are dead letters carrying
        # PagerDuty's error, not retry loops.
        gone = Incident(ROUTING_KEY, "x", id="QGONE", alert_keys=["x", "y"])
        await h.send(h.fake.webhook("incident.escalated", gone))
        dead = await eventually("dead letter", lambda: h.bridge.store.dead_letters())
        assert dead[0].sink == "pagerduty_webhook" and dead[0].error.endswith("404 Not Found")
        h.fake.api_token = "rotated-elsewhere"
        await h.send(h.fake.webhook("incident.escalated", first, occurred_at="2026-11-20T10:10:00Z"))
        dead = await eventually("dead letter", lambda: len(h.bridge.store.dead_letters()) == 2 and
                                h.bridge.store.dead_letters())
        assert dead[0].sink == "pagerduty_webhook" and dead[0].error.endswith("401 Unauthorized")


async def test_escalation_makes_the_statuspage_components_one_status_worse(tmp_path, pair: Pair):
    async with contextlib.AsyncExitStack() as stack:
        sp = await stack.enter_async_context(
            run_fake_statuspage(token="sp-token", components={"cmp1": "Gateway API"}, rate_limit=10_000))
        h = await stack.enter_async_context(harness(tmp_path, pair, statuspage=sp.url))
        cert = f"sp-{time.monotonic_ns()}.example.com"
        await h.fire(cert, service="Gateway API")  # severity error: partial_outage
        await eventually("on the status page", lambda: sp.statuses().get("cmp1") == "partial_outage")
        await h.send(h.fake.webhook("incident.escalated", h.incident(cert)))
        await eventually("one status worse", lambda: sp.statuses().get("cmp1") == "major_outage")
        assert len(sp.own_incidents()) == 1  # the same customer-facing incident, updated
        assert await _has(h, cert, "Statuspage components one status worse (as critical)")


async def test_silence_by_a_person_acknowledges_and_its_expiry_triggers_again(tmp_path, pair: Pair):
    cert = f"person-{time.monotonic_ns()}.example.com"
    async with harness(tmp_path, pair) as h:
        before_page = time.time()
        await opened(h, cert)
        silence = await h.person_silence(cert, who="carol")
        await eventually("PagerDuty acknowledged", lambda: h.incident(cert).status == "acknowledged")
        assert h.fake.actions().count(("acknowledge", h.key(cert))) == 1
        # The poller's ack line feeds the lifecycle metrics: one time to acknowledge, from the page to the poll.
        await eventually("time to acknowledge observed", lambda: time_to_acknowledge(h)[0] == 1)
        _, seconds = time_to_acknowledge(h)
        assert 0 < seconds <= time.time() - before_page
        # PagerDuty's own webhook for that ack comes back: no silence of ours on top of carol's.
        await h.send(h.fake.webhook("incident.acknowledged", h.incident(cert), agent=None))
        await eventually("echo audited", lambda: _has(h, cert, "already acknowledged from alertmanager"))
        assert await bridge_silences(h, cert) == []
        await h.expire_silence(silence)
        await eventually("triggered again", lambda: h.fake.actions().count(("trigger", h.key(cert))) == 2)
        audit = [(a["side"], a["actor"], a["action"]) for a in await h.audit(cert)]
        assert ("alertmanager", "carol", "acknowledge") in audit
        assert ("alertmanager", "carol", "trigger") in audit


def time_to_acknowledge(h: Harness) -> tuple[float, float]:
    """(count, sum) of certpager_bridge_time_to_acknowledge_seconds for the harness's certificates."""
    labels = {"class": "certificate_expired", "environment": "production"}
    samples = {s.name: s.value for m in h.bridge.metrics.time_to_acknowledge.collect() for s in m.samples
               if s.labels == labels}
    return (samples.get("certpager_bridge_time_to_acknowledge_seconds_count", 0.0),
            samples.get("certpager_bridge_time_to_acknowledge_seconds_sum", 0.0))


async def test_suppressed_alert_gone_without_resolved_notification_resolves(tmp_path, pair: Pair):
    cert = f"gone-{time.monotonic_ns()}.example.com"
    async with harness(tmp_path, pair) as h:
        await opened(h, cert)
        incident = h.incident(cert)
        await h.send(h.fake.webhook("incident.acknowledged", incident))
        await eventually("the ack silence", lambda: bridge_silences(h, cert))
        await eventually("seen suppressed", lambda: _ack_suppressed(h, cert))
        await h.resolve_in_alertmanager(cert)  # silenced: Alertmanager sends no resolved notification
        await eventually("resolved in PagerDuty", lambda: incident.status == "resolved")
        await eventually("the silence expired", lambda: bridge_silences(h, cert, "expired"))
        answer = await h.alertmanager_webhook(h.fired[cert])  # a late repeat of the firing
        assert answer["events"] == 0


async def _ack_suppressed(h: Harness, cert: str) -> bool:
    state = await h.bridge.store.ack_state(h.key(cert))
    return state is not None and state.suppressed


async def test_snooze_endpoint(tmp_path, pair: Pair):
    cert = f"snooze-{time.monotonic_ns()}.example.com"
    async with harness(tmp_path, pair) as h:
        await opened(h, cert)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        url = f"/api/v1/incidents/{h.key(cert)}/snooze"
        async with h.client.post(url, params={"duration": "forever"}, headers=auth) as resp:
            assert resp.status == 400
        async with h.client.post("/api/v1/incidents/nope/snooze", params={"duration": "1h"}, headers=auth) as resp:
            assert resp.status == 404
        async with h.client.post(url, params={"duration": "1h"}) as resp:
            assert resp.status == 401
        async with h.client.post(url, params={"duration": "1h", "by": "dave"}, headers=auth) as resp:
            assert resp.status == 202, await resp.text()
        incident = h.incident(cert)
        await eventually("snoozed in PagerDuty", lambda: incident.snoozed_for == 3600)
        assert incident.status == "acknowledged"
        [silence] = await eventually("the snooze silence", lambda: bridge_silences(h, cert))
        assert silence["comment"].startswith("ACK! snoozed by dave for 3600s")
        assert abs(parse_time(silence["endsAt"]) - time.time() - 3600) < 10


async def test_a_priority_raised_by_a_person_makes_statuspage_worse_without_a_rest_write(tmp_path, pair: Pair):
    async with contextlib.AsyncExitStack() as stack:
        sp = await stack.enter_async_context(
            run_fake_statuspage(token="sp-token", components={"cmp1": "Gateway API"}, rate_limit=10_000))
        h = await stack.enter_async_context(harness(tmp_path, pair, statuspage=sp.url))
        cert = f"prio-{time.monotonic_ns()}.example.com"
        await h.fire(cert, service="Gateway API")
        await eventually("on the status page", lambda: sp.statuses().get("cmp1") == "partial_outage")
        incident = h.incident(cert)
        incident.priority_id = "PP3"
        await h.send(h.fake.webhook("incident.priority_updated", incident, occurred_at="2026-11-20T10:06:00Z"))
        await eventually("P3 recorded", lambda: _has(h, cert, "priority P3"))
        incident.priority_id = "PP2"  # a person raises it in PagerDuty
        await h.send(h.fake.webhook("incident.priority_updated", incident, occurred_at="2026-11-20T10:07:00Z"))
        await eventually("one status worse", lambda: sp.statuses().get("cmp1") == "major_outage")
        assert await _has(h, cert, "priority P2, raised from P3")
        assert [r for r in h.fake.rest_requests if r[0] == "PUT"] == []  # the person's priority stands
        assert len(sp.own_incidents()) == 1

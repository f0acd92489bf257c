"""PagerDutySink against the fake Events API over real HTTP: every answer class, local limits, secrets."""

from __future__ import annotations

import dataclasses
import logging
import socket

import httpx
import pytest

from bridge.events import Action, Severity
from bridge.sinks.base import DeadLetter, Delivered, RetryLater
from bridge.sinks.pagerduty import PagerDutySink, build_body
from tests.bridge_sinks.conftest import ROUTING_KEY, STAGING_KEY, FakeClock, followup, item, trigger
from tests.fakes.pagerduty import run_fake_pagerduty

KEYS = {"production": ROUTING_KEY, "staging": STAGING_KEY}


def make_sink(client: httpx.AsyncClient, url: str, keys: dict[str, str] | None = None, **options) -> PagerDutySink:
    table = KEYS if keys is None else keys
    return PagerDutySink(client, url=url, routing_key_for=table.get, **options)


async def test_trigger_then_resolve_delivered_as_built(fake_pd, http):
    sink = make_sink(http, fake_pd.url)
    assert sink.name == "pagerduty"
    first = await sink.deliver(item(trigger()))
    assert first == Delivered(status=202, info="Event processed")
    assert await sink.deliver(item(followup(Action.RESOLVE))) == Delivered(status=202, info="Event processed")
    assert fake_pd.accepted[0].body == build_body(trigger(), ROUTING_KEY)
    assert fake_pd.actions() == [
        ("trigger", "cert-api-example-com-expired"),
        ("resolve", "cert-api-example-com-expired"),
    ]
    assert [(i.routing_key, i.status, i.severity) for i in fake_pd.incidents] == [(ROUTING_KEY, "resolved", "critical")]


async def test_route_picks_the_routing_key_at_delivery_time(fake_pd, http):
    keys = {"staging": STAGING_KEY}
    sink = make_sink(http, fake_pd.url, keys)
    queued = item(trigger(route="staging", severity=Severity.WARNING))
    keys["staging"] = ROUTING_KEY  # rotated after the event was queued: the new key applies
    assert isinstance(await sink.deliver(queued), Delivered)
    assert fake_pd.accepted[0].body["routing_key"] == ROUTING_KEY


async def test_unknown_route_is_a_dead_letter_without_a_request(fake_pd, http):
    sink = make_sink(http, fake_pd.url)
    outcome = await sink.deliver(item(trigger(route="qa")))
    assert outcome == DeadLetter(
        error="no PagerDuty routing key for route 'qa': set integrations.pagerduty.routing_keys.qa "
        "or integrations.pagerduty.routing_key"
    )
    assert fake_pd.requests == 0


async def test_invalid_outbox_payload_is_a_dead_letter(fake_pd, http):
    sink = make_sink(http, fake_pd.url)
    payload = {**trigger().to_json(), "severity": "high"}
    bad = item(payload)
    outcome = await sink.deliver(bad)
    assert outcome == DeadLetter(
        error=f"outbox item {bad.id} is not a valid IncidentEvent: ValueError: 'high' is not a valid Severity"
    )
    missing = item({"action": "trigger"})
    assert await sink.deliver(missing) == DeadLetter(
        error=f"outbox item {missing.id} is not a valid IncidentEvent: KeyError: 'severity'"
    )
    assert fake_pd.requests == 0


async def test_wrongly_typed_payload_is_a_dead_letter(fake_pd, http):
    sink = make_sink(http, fake_pd.url)
    outcome = await sink.deliver(item({**trigger().to_json(), "custom_details": [1, 2]}))
    assert outcome == DeadLetter(
        error="event cannot be translated, not sent: TypeError: cannot convert dictionary update sequence "
        "element #0 to a sequence"
    )
    key_number = await sink.deliver(item({**trigger().to_json(), "key": 42}))
    assert key_number == DeadLetter(
        error="event cannot be translated, not sent: TypeError: object of type 'int' has no len()"
    )
    assert fake_pd.requests == 0


async def test_lone_surrogate_is_replaced_not_fatal(fake_pd, http):
    sink = make_sink(http, fake_pd.url)
    assert isinstance(await sink.deliver(item(trigger(summary="bad \ud800 text"))), Delivered)
    assert fake_pd.accepted[0].body["payload"]["summary"] == "bad ? text"


async def test_locally_invalid_event_is_not_sent(fake_pd, http):
    sink = make_sink(http, fake_pd.url)
    outcome = await sink.deliver(item(trigger(summary="  ", source="")))
    assert outcome == DeadLetter(
        error="event rejected locally, not sent: payload.summary is empty; payload.source is empty"
    )
    assert fake_pd.requests == 0


async def test_400_is_a_dead_letter_with_pagerdutys_errors(fake_pd, http):
    sink = make_sink(http, fake_pd.url, {"production": "not-a-32-character-key"})
    outcome = await sink.deliver(item(trigger()))
    assert outcome == DeadLetter(error="400 Event object is invalid: 'routing_key' must be 32 characters", status=400)


@pytest.mark.parametrize(("retry_after", "after"), [(7, 7.0), (None, 30.0), ("not-a-number", 30.0)])
async def test_429_retries_after_retry_after_or_30_s(fake_pd, http, retry_after, after):
    sink = make_sink(http, fake_pd.url)
    fake_pd.fail_next(1, 429, retry_after=retry_after)
    assert await sink.deliver(item(trigger())) == RetryLater(after=after, error="429 rate limited", status=429)
    assert fake_pd.accepted == []


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_retries_with_the_workers_backoff(fake_pd, http, status):
    sink = make_sink(http, fake_pd.url)
    fake_pd.fail_next(1, status)
    outcome = await sink.deliver(item(trigger()))
    assert outcome == RetryLater(
        after=None, error=f'{status} {{"status": "fault", "message": "injected by the test"}}', status=status
    )
    assert isinstance(await sink.deliver(item(trigger())), Delivered)  # the retry goes through
    assert fake_pd.actions() == [("trigger", "cert-api-example-com-expired")]


@pytest.mark.parametrize("status", [401, 403, 413])
async def test_other_4xx_is_a_dead_letter_with_status_and_excerpt(fake_pd, http, status):
    sink = make_sink(http, fake_pd.url)
    fake_pd.fail_next(1, status)
    outcome = await sink.deliver(item(trigger()))
    assert outcome == DeadLetter(
        error=f'{status} {{"status": "fault", "message": "injected by the test"}}', status=status
    )


async def test_wrong_url_404_is_a_dead_letter(fake_pd, http):
    sink = make_sink(http, fake_pd.url + "/nothing-here")
    assert await sink.deliver(item(trigger())) == DeadLetter(error="404 404: Not Found", status=404)


async def test_slow_answer_beyond_the_client_timeout_retries(fake_pd):
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.2)) as client:
        sink = make_sink(client, fake_pd.url)
        fake_pd.fail_next(1, None, delay=0.6)
        assert await sink.deliver(item(trigger())) == RetryLater(after=None, error="timeout: ReadTimeout")


async def test_connection_refused_retries(http):
    with socket.socket() as probe:  # a port nobody listens on: bound, then released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = make_sink(http, f"http://127.0.0.1:{port}")
    outcome = await sink.deliver(item(trigger()))
    assert isinstance(outcome, RetryLater)
    assert outcome.after is None and outcome.local is False
    assert outcome.error.startswith("network error: ConnectError: ")


async def test_121st_event_within_60_s_is_held_back_locally(http):
    clock = FakeClock()
    # The fake runs on the same clock: the local limiter must keep PagerDuty from ever answering 429.
    async with run_fake_pagerduty(clock=clock) as fake:
        sink = make_sink(http, fake.url, clock=clock)
        for i in range(120):
            assert isinstance(await sink.deliver(item(trigger(key=f"cert-{i}"))), Delivered)
            clock.advance(0.25)
        held = await sink.deliver(item(trigger(key="cert-120")))
        # 61 s after the first send, not 60: a second of margin for arrival jitter (RATE_WINDOW).
        assert held == RetryLater(after=31.0, error="rate limit (local)", local=True)
        assert fake.requests == 120
        assert isinstance(await sink.deliver(item(trigger(key="s", route="staging"))), Delivered)  # per key
        clock.advance(30.9)
        again = await sink.deliver(item(trigger(key="cert-120")))
        assert isinstance(again, RetryLater) and again.local and again.after == pytest.approx(0.1)
        clock.advance(0.1)
        assert isinstance(await sink.deliver(item(trigger(key="cert-120"))), Delivered)
        assert fake.requests == 122
        assert len(fake.accepted) == 122  # no 429 from "PagerDuty"


async def test_only_accepted_events_use_the_local_limit(http):
    # After PagerDuty answered 500 (or 429, or nothing) for a while, the triggers must not then wait a
    # minute for a window full of sends PagerDuty never counted.
    clock = FakeClock()
    async with run_fake_pagerduty(clock=clock) as fake:
        sink = make_sink(http, fake.url, clock=clock, rate_limit_per_minute=2)
        fake.fail_next(3, 500)
        fake.fail_next(1, 429, retry_after=1)
        for i in range(4):
            outcome = await sink.deliver(item(trigger(key=f"cert-{i}")))
            assert isinstance(outcome, RetryLater) and not outcome.local
        for i in range(2):
            assert isinstance(await sink.deliver(item(trigger(key=f"cert-{i}"))), Delivered)
        third = await sink.deliver(item(trigger(key="cert-2")))
        assert third == RetryLater(after=61.0, error="rate limit (local)", local=True)  # two accepted: full
        assert fake.requests == 6


async def test_held_back_item_is_answered_before_its_payload_is_read(http):
    # The limiter is asked first, so a held-back item costs no decoding or encoding: a payload that
    # would be a dead letter is only found out when a slot is free to send it.
    clock = FakeClock()
    async with run_fake_pagerduty(clock=clock) as fake:
        sink = make_sink(http, fake.url, clock=clock, rate_limit_per_minute=1)
        assert isinstance(await sink.deliver(item(trigger(key="first"))), Delivered)
        broken = item({**trigger(key="broken").to_json(), "severity": "high"})
        assert await sink.deliver(broken) == RetryLater(after=61.0, error="rate limit (local)", local=True)
        clock.advance(61.0)
        outcome = await sink.deliver(broken)
        assert isinstance(outcome, DeadLetter) and "not a valid IncidentEvent" in outcome.error
        assert isinstance(await sink.deliver(item(trigger(key="second"))), Delivered)  # no slot was taken
        assert fake.requests == 2


async def test_routing_key_never_logged(fake_pd, http, caplog):
    caplog.set_level(logging.DEBUG)
    sink = make_sink(http, fake_pd.url)
    fake_pd.fail_next(1, 503)
    fake_pd.fail_next(1, 400)
    for event in (trigger(), trigger(), trigger(), trigger(summary=""), trigger(route="qa")):
        await sink.deliver(item(event))
    bad_key = make_sink(http, fake_pd.url, {"production": ROUTING_KEY[:31]})
    await bad_key.deliver(item(trigger()))
    assert len(caplog.records) >= 6
    for record in caplog.records:
        text = record.getMessage() + repr(getattr(record, "kv", {}))
        assert ROUTING_KEY[:31] not in text


async def test_aclose_closes_the_client(fake_pd):
    client = httpx.AsyncClient()
    sink = make_sink(client, fake_pd.url)
    await sink.aclose()
    assert client.is_closed


def late_item(**overrides):
    """A trigger that was delayed and resolved meanwhile (its resolve is queued behind it)."""
    return dataclasses.replace(item(trigger(**overrides)), superseded=True)


async def test_a_late_resolved_trigger_is_a_change_event_per_mode(fake_pd, http):
    mode = ["change_event"]
    sink = make_sink(http, fake_pd.url, late_resolved=lambda: mode[0])
    outcome = await sink.deliver(late_item(route="staging"))
    assert outcome == Delivered(status=202, info="Event processed", late="change_event")
    (change,) = fake_pd.changes()
    assert change["routing_key"] == STAGING_KEY and "event_action" not in change and "dedup_key" not in change
    assert change["payload"]["summary"].startswith("RESOLVED before it paged: CRITICAL: Certificate Expired")
    assert fake_pd.actions() == [] and fake_pd.incidents == []
    mode[0] = "drop"
    assert await sink.deliver(late_item(route="staging")) == Delivered(info="late resolved: dropped", late="drop")
    mode[0] = "page"
    assert (await sink.deliver(late_item(route="staging"))).late == "page"
    assert fake_pd.actions() == [("trigger", "cert-api-example-com-expired")]
    assert fake_pd.requests == 2


async def test_a_ruleset_key_takes_no_change_events_so_a_late_trigger_pages(fake_pd, http):
    sink = make_sink(http, fake_pd.url)  # ROUTING_KEY begins with R: a ruleset integration key
    outcome = await sink.deliver(late_item())
    assert isinstance(outcome, Delivered) and outcome.late == "page"
    assert fake_pd.actions() == [("trigger", "cert-api-example-com-expired")] and fake_pd.changes() == []


async def test_a_huge_late_trigger_still_fits_as_a_change_event(fake_pd, http):
    sink = make_sink(http, fake_pd.url)
    outcome = await sink.deliver(late_item(route="staging", custom_details={"blob": "x" * 700_000}))
    assert outcome.late == "change_event"
    assert "custom_details removed" in fake_pd.changes()[0]["payload"]["custom_details"]["error"]

"""The Statuspage sink against the fake Statuspage API: incidents, updates, components, ownership, limits."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bridge.events import Action, IncidentEvent, Severity
from bridge.metrics import StatuspageMetrics
from bridge.sinks.base import DeadLetter, Delivered, RetryLater
from bridge.sinks.dryrun import DryRunStatuspage
from bridge.sinks.statuspage import Answer, HttpTransport, StatuspageSettings, StatuspageSink, Transport
from tests.bridge_sinks.conftest import FakeClock, item
from tests.fakes.statuspage import FakeStatuspage, run_fake_statuspage

TOKEN = "sp-secret-token"
GATEWAY, WEB, DB = "gw0000000001", "web000000001", "db0000000001"
COMPONENTS = {GATEWAY: "Gateway API", WEB: "Web", DB: "Database"}
MAP = {"Gateway API": GATEWAY, "Web": WEB, "Database": DB}
STATUS = {Severity.CRITICAL: "major_outage", Severity.ERROR: "partial_outage",
          Severity.WARNING: "degraded_performance", Severity.INFO: "degraded_performance"}


def settings(**overrides: Any) -> StatuspageSettings:
    fields: dict[str, Any] = {"page_id": "page01", "component_map": MAP, "component_status": STATUS,
                              "min_severity": Severity.ERROR}
    fields.update(overrides)
    return StatuspageSettings(**fields)


def trigger(key: str = "cert-a", services: str = "Gateway API", severity: Severity = Severity.CRITICAL,
            **labels: str) -> IncidentEvent:
    return IncidentEvent(
        action=Action.TRIGGER, key=key, route="production", summary="s", severity=severity,
        component=f"{key}.example.com", group="production", event_class="certificate_expired",
        custom_details={"labels": {"service": services, **labels}, "annotations": {"summary": "x"}},
    )


def resolve(key: str = "cert-a", severity: Severity = Severity.CRITICAL) -> IncidentEvent:
    return IncidentEvent(action=Action.RESOLVE, key=key, route="production", severity=severity)


def sp_item(event: IncidentEvent):
    return item(event)


@pytest.fixture
async def fake() -> AsyncIterator[FakeStatuspage]:
    async with run_fake_statuspage(token=TOKEN, components=dict(COMPONENTS), rate_limit=10_000) as fake:
        yield fake


def make_sink(fake: FakeStatuspage, *, token: str = TOKEN, registry: CollectorRegistry | None = None,
              transport: Transport | None = None, **kw: Any) -> StatuspageSink:
    conf = kw.pop("conf", settings())
    transport = transport or HttpTransport(httpx.AsyncClient(timeout=kw.pop("timeout", 5.0)), url=fake.url,
                                           token=lambda: token)
    metrics = StatuspageMetrics(registry) if registry is not None else None
    return StatuspageSink(transport, settings=lambda: conf, token=lambda: token, requests_per_second=1000,
                          metrics=metrics, **kw)


async def test_opens_updates_and_resolves_its_incident_with_components(fake):
    sink = make_sink(fake)
    assert isinstance(await sink.deliver(sp_item(trigger("cert-a"))), Delivered)
    (incident,) = fake.own_incidents()
    assert incident.status == "investigating"
    assert incident.name == "Connection problems with Gateway API"
    assert "certificate problem" in incident.updates[0]["body"]
    assert fake.statuses()[GATEWAY] == "major_outage"
    assert incident.metadata["certpager"]["group"] == "cert-a"
    # A redelivery (the outbox's at-least-once) changes nothing.
    writes = len(fake.writes())
    assert isinstance(await sink.deliver(sp_item(trigger("cert-a"))), Delivered)
    assert len(fake.writes()) == writes
    assert isinstance(await sink.deliver(sp_item(resolve("cert-a"))), Delivered)
    assert incident.status == "resolved"
    assert "fixed" in incident.updates[-1]["body"]
    assert fake.statuses()[GATEWAY] == "operational"
    assert fake.components[GATEWAY].history == ["major_outage", "operational"]
    await sink.aclose()


async def test_several_services_and_the_worst_status_among_the_bridges_incidents(fake):
    sink = make_sink(fake)
    await sink.deliver(sp_item(trigger("cert-a", "Gateway API, Web", Severity.ERROR)))
    await sink.deliver(sp_item(trigger("cert-b", "Web", Severity.CRITICAL)))
    assert fake.statuses() == {GATEWAY: "partial_outage", WEB: "major_outage", DB: "operational"}
    assert len(fake.own_incidents()) == 2
    await sink.deliver(sp_item(resolve("cert-b")))
    assert fake.statuses()[WEB] == "partial_outage"  # cert-a still holds it, at its own status
    await sink.deliver(sp_item(resolve("cert-a", Severity.ERROR)))
    assert fake.statuses() == {GATEWAY: "operational", WEB: "operational", DB: "operational"}
    assert all(i.status == "resolved" for i in fake.own_incidents())
    await sink.aclose()


async def test_a_persons_incident_and_its_components_are_never_touched(fake):
    human = fake.open_human_incident("Database maintenance gone wrong", {DB: "partial_outage"})
    sink = make_sink(fake)
    await sink.deliver(sp_item(trigger("cert-a", "Database,Gateway API")))
    (mine,) = fake.own_incidents()
    assert fake.statuses()[DB] == "partial_outage"  # the person's, not major_outage
    assert fake.statuses()[GATEWAY] == "major_outage"
    await sink.deliver(sp_item(resolve("cert-a")))
    assert mine.status == "resolved"
    assert fake.statuses()[DB] == "partial_outage"
    assert human.status == "investigating" and human.metadata == {} and len(human.updates) == 1
    assert not [w for w in fake.writes() if human.id in w.path]
    await sink.aclose()


async def test_alerts_joining_and_leaving_one_incident_post_updates():
    # Until grouping (#19) a group is one incident key; a re-trigger at another severity is an update.
    async with run_fake_statuspage(token=TOKEN, components=dict(COMPONENTS), rate_limit=10_000) as fake:
        sink = make_sink(fake)
        await sink.deliver(sp_item(trigger("cert-a", "Web", Severity.ERROR)))
        await sink.deliver(sp_item(trigger("cert-a", "Web,Gateway API", Severity.CRITICAL)))
        (incident,) = fake.own_incidents()
        assert [u["status"] for u in incident.updates] == ["investigating", "investigating"]
        assert "Affected now: Web, Gateway API" in incident.updates[-1]["body"]
        assert fake.statuses()[WEB] == "major_outage"
        await sink.aclose()


async def test_scheduled_maintenance_suppresses_new_incidents_for_its_components(fake):
    fake.start_maintenance("Gateway upgrade", [GATEWAY])
    registry = CollectorRegistry()
    sink = make_sink(fake, registry=registry)
    outcome = await sink.deliver(sp_item(trigger("cert-a", "Gateway API")))
    assert isinstance(outcome, Delivered) and "maintenance" in outcome.info
    assert not fake.own_incidents() and fake.statuses()[GATEWAY] == "under_maintenance"
    assert registry.get_sample_value("certpager_bridge_statuspage_skipped_total", {"reason": "maintenance"}) == 1
    # Another component still opens one, without the maintained component.
    await sink.deliver(sp_item(trigger("cert-b", "Gateway API,Web")))
    (incident,) = fake.own_incidents()
    assert incident.component_ids == [WEB] and fake.statuses()[GATEWAY] == "under_maintenance"
    writes = len(fake.writes())
    await sink.deliver(sp_item(trigger("cert-b", "Gateway API,Web")))  # redelivered: nothing to change
    assert len(fake.writes()) == writes
    await sink.aclose()


async def test_below_severity_and_unknown_services_make_no_request(fake):
    registry = CollectorRegistry()
    sink = make_sink(fake, registry=registry)
    await sink.deliver(sp_item(trigger("cert-a", "Gateway API", Severity.WARNING)))
    await sink.deliver(sp_item(resolve("cert-a", Severity.WARNING)))
    await sink.deliver(sp_item(trigger("cert-b", "Billing, Search")))
    assert fake.log == []
    sample = registry.get_sample_value
    assert sample("certpager_bridge_statuspage_skipped_total", {"reason": "below_severity"}) == 2
    assert sample("certpager_bridge_statuspage_skipped_total", {"reason": "no_component"}) == 1
    assert sample("certpager_bridge_statuspage_unknown_services_total", {"service": "Billing"}) == 1
    await sink.deliver(sp_item(trigger("cert-c", "Billing,Web")))  # one known service is enough
    assert sample("certpager_bridge_statuspage_unknown_services_total", {"service": "Billing"}) == 2
    assert len(fake.own_incidents()) == 1
    await sink.aclose()


@pytest.mark.parametrize(("token", "page", "expected"), [
    ("wrong-token", "page01", "401 Could not authenticate"),
    (TOKEN, "otherpage", "404 The requested resource could not be found."),
])
async def test_401_and_404_are_dead_letters_with_statuspages_text(fake, token, page, expected):
    sink = make_sink(fake, token=token, conf=settings(page_id=page))
    outcome = await sink.deliver(sp_item(trigger()))
    assert outcome == DeadLetter(error=expected, status=int(expected[:3]))
    await sink.aclose()


async def test_422_is_a_dead_letter_with_the_validation_errors(fake):
    sink = make_sink(fake, conf=settings(component_map={**MAP, "Search": "nosuch000001"}))
    outcome = await sink.deliver(sp_item(trigger("cert-a", "Search")))
    assert isinstance(outcome, DeadLetter) and outcome.status == 422
    assert "Component nosuch000001 could not be found" in outcome.error
    await sink.aclose()


@pytest.mark.parametrize("status", [420, 429])
async def test_rate_limit_answers_pause_the_whole_sink_for_retry_after(fake, status):
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    sink = make_sink(fake, clock=clock, sleep=sleep)
    fake.fail_next(1, status=status, retry_after=7)
    outcome = await sink.deliver(sp_item(trigger()))
    assert isinstance(outcome, RetryLater) and outcome.after == 7 and not outcome.local
    other = sp_item(trigger("cert-b"))
    held = sink.held_back(other)
    assert held is not None and held.local and held.after == 7
    requests = len(fake.log)
    assert isinstance(await sink.deliver(other), RetryLater) and len(fake.log) == requests  # nothing sent
    clock.advance(7)
    assert isinstance(await sink.deliver(other), Delivered)
    await sink.aclose()


async def test_5xx_and_timeouts_are_retried_and_a_lost_answer_opens_nothing_twice(fake):
    sink = make_sink(fake, timeout=0.3)
    fake.fail_next(1, status=503)  # the first read
    assert (await sink.deliver(sp_item(trigger()))).error.startswith("503")  # type: ignore[union-attr]
    fake.fail_next(2, status=None)  # the two reads of the page answer normally ...
    fake.fail_next(1, status=None, delay=1.0, apply=True)  # ... the POST is applied, its answer never comes
    outcome = await sink.deliver(sp_item(trigger()))
    assert isinstance(outcome, RetryLater) and outcome.after is None and outcome.error.startswith("timeout")
    assert len(fake.own_incidents()) == 1
    assert isinstance(await sink.deliver(sp_item(trigger())), Delivered)  # the retry reads the page first
    assert len(fake.own_incidents()) == 1
    fake.fail_next(1, status=502, apply=True)  # a resolve applied, answered 502
    assert isinstance(await sink.deliver(sp_item(resolve())), RetryLater)
    assert isinstance(await sink.deliver(sp_item(resolve())), Delivered)
    assert [w.method for w in fake.writes() if w.status < 300] == ["POST", "PATCH"]
    await sink.aclose()


class Recording:
    """A transport that stamps each request with the injected clock."""

    def __init__(self, inner: Transport, clock: FakeClock) -> None:
        self.inner, self.clock, self.at = inner, clock, []  # type: list[float]

    async def send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Answer | RetryLater:
        self.at.append(self.clock())
        return await self.inner.send(method, path, body)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_never_more_than_one_request_per_second(fake):
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    recording = Recording(HttpTransport(httpx.AsyncClient(), url=fake.url, token=lambda: TOKEN), clock)
    sink = StatuspageSink(recording, settings=settings, token=lambda: TOKEN, requests_per_second=1.0,
                          clock=clock, sleep=sleep)
    for n in range(5):
        await sink.deliver(sp_item(trigger(f"cert-{n}")))
    assert len(recording.at) == 7  # two reads of the page, five incidents
    gaps = [b - a for a, b in zip(recording.at, recording.at[1:], strict=False)]
    assert min(gaps) >= 1.0
    await sink.aclose()


async def test_dry_run_logs_the_requests_it_would_send(caplog):
    transport = DryRunStatuspage(logging.getLogger("test.dryrun"))
    sink = StatuspageSink(transport, settings=settings, requests_per_second=1000)
    with caplog.at_level(logging.INFO, logger="test.dryrun"):
        assert isinstance(await sink.deliver(sp_item(trigger())), Delivered)
        assert isinstance(await sink.deliver(sp_item(resolve())), Delivered)
    methods = [(m, p.rsplit("/", 1)[-1]) for m, p, _ in transport.sent]
    assert methods == [("POST", "incidents"), ("PATCH", "dryrun000001")]
    assert transport.sent[1][2]["incident"]["status"] == "resolved"
    assert transport.sent[1][2]["incident"]["components"] == {GATEWAY: "operational"}
    logged = [r.message for r in caplog.records if r.name == "test.dryrun"]
    assert logged == ["dry-run: would send Statuspage request"] * 2

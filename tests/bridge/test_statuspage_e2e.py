"""Webhook -> store -> outbox -> PagerDuty and Statuspage sinks -> both fakes, in one process: each sink is
isolated from the other (one failing or slow never holds the other back), seen from the fakes' side.
The outages are scaled down (seconds, not a minute) so the suite stays fast."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from bridge.app import ALERTMANAGER_PATH, Bridge, ConfigHolder
from bridge.config import load
from bridge.metrics import StatuspageMetrics
from bridge.sinks.pagerduty import PagerDutySink
from bridge.sinks.statuspage import HttpTransport, StatuspageSink
from bridge.store.sqlite import SqliteStore
from tests.bridge.conftest import alert, body
from tests.fakes.pagerduty import run_fake_pagerduty
from tests.fakes.statuspage import run_fake_statuspage

ROUTING_KEY = "P" * 32
TOKEN = "statuspage-token-e2e"
GATEWAY, WEB = "gw0000000001", "web000000001"
CERTS = 4
OUTAGE = 1.5  # seconds: "a minute" scaled down


def write_config(tmp_path: Path, pd_url: str, sp_url: str) -> Path:
    path = tmp_path / "bridge.yml"
    path.write_text(
        f"integrations:\n  pagerduty:\n    routing_key: {ROUTING_KEY}\n    events_url: {pd_url}\n"
        "    rate_limit_per_minute: 100000\n"
        f"  statuspage:\n    api_token: $SP_TOKEN\n    page_id: page01\n    api_url: {sp_url}\n"
        "    component_map: $SP_MAP\n    min_severity: error\n    requests_per_second: 50\n"
        "outbox:\n  max_in_flight: 2\n  retry_initial: 50ms\n  retry_max: 200ms\n  sweep_interval: 100ms\n"
    )
    return path


async def start(serve_app, tmp_path: Path, pd_url: str, sp_url: str, *, pd_timeout: float = 5.0,
                sp_timeout: float = 5.0):
    path = write_config(tmp_path, pd_url, sp_url)
    env = {"SP_TOKEN": TOKEN, "SP_MAP": f'{{"Gateway API": "{GATEWAY}", "Web": "{WEB}"}}'}
    holder = ConfigHolder(load(path, env=env), loader=lambda: load(path, env=env))
    registry = CollectorRegistry()
    sinks = {
        "pagerduty": PagerDutySink(httpx.AsyncClient(timeout=pd_timeout), url=pd_url,
                                   routing_key_for=holder.routing_key_for, rate_limit_per_minute=100000),
        "statuspage": StatuspageSink(
            HttpTransport(httpx.AsyncClient(timeout=sp_timeout), url=sp_url, token=holder.statuspage_token),
            settings=holder.statuspage_settings, token=holder.statuspage_token, requests_per_second=50,
            metrics=StatuspageMetrics(registry),
        ),
    }
    bridge = Bridge(holder, store=SqliteStore(tmp_path / "b.db"), sinks=sinks, registry=registry)
    client = await serve_app(bridge.app)
    return client, registry, sinks


async def until(condition, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def alerts(status: str = "firing") -> list[bytes]:
    return [body(alert(status, certificate=f"c{i}.example.com", service="Gateway API" if i % 2 else "Web",
                       severity="critical")) for i in range(CERTS)]


async def test_pagerduty_down_does_not_hold_statuspage_back(serve_app, tmp_path):
    async with run_fake_pagerduty() as pd, run_fake_statuspage(
        token=TOKEN, components={GATEWAY: "Gateway API", WEB: "Web"}, rate_limit=10_000
    ) as sp:
        # PagerDuty hangs (timeouts: both of the sink's slots are taken for the outage), then answers 503.
        pd.fail_next(2, status=503, delay=OUTAGE)
        pd.fail_next(20, status=503)
        client, registry, sinks = await start(serve_app, tmp_path, pd.url, sp.url, pd_timeout=OUTAGE)
        for data in alerts():
            assert (await client.post(ALERTMANAGER_PATH, data=data)).status == 200
        took = await until(lambda: len(sp.own_incidents()) == CERTS, timeout=OUTAGE)
        assert took < OUTAGE / 2 and not pd.accepted  # Statuspage is done while PagerDuty still hangs
        assert sp.statuses() == {GATEWAY: "major_outage", WEB: "major_outage"}
        for data in alerts("resolved"):
            assert (await client.post(ALERTMANAGER_PATH, data=data)).status == 200
        await until(lambda: all(i.status == "resolved" for i in sp.own_incidents()), timeout=OUTAGE)
        assert sp.statuses() == {GATEWAY: "operational", WEB: "operational"}
        await until(lambda: len(pd.accepted) == 2 * CERTS, timeout=3 * OUTAGE)  # then PagerDuty catches up:
        # each problem, resolved while PagerDuty was down, as a change event (late_resolved), then its resolve.
        assert len(pd.changes()) == CERTS and sorted(a for a, _ in pd.actions()) == ["resolve"] * CERTS
        assert pd.incidents == []  # nobody paged for what was already fixed
        assert registry.get_sample_value("certpager_bridge_deliveries_total",
                                         {"sink": "statuspage", "result": "delivered"}) == 2 * CERTS
        assert registry.get_sample_value("certpager_bridge_deliveries_total",
                                         {"sink": "pagerduty", "result": "retry"}) >= 2
        for sink in sinks.values():
            await sink.aclose()


async def test_statuspage_down_does_not_hold_pagerduty_back(serve_app, tmp_path):
    async with run_fake_pagerduty() as pd, run_fake_statuspage(
        token=TOKEN, components={GATEWAY: "Gateway API", WEB: "Web"}, rate_limit=10_000
    ) as sp:
        sp.fail_next(2, status=None, delay=OUTAGE)  # hangs (timeouts) ...
        sp.fail_next(20, status=502)  # ... then 502s for a while
        client, registry, sinks = await start(serve_app, tmp_path, pd.url, sp.url, sp_timeout=OUTAGE)
        for data in alerts():
            assert (await client.post(ALERTMANAGER_PATH, data=data)).status == 200
        took = await until(lambda: len(pd.actions()) == CERTS, timeout=OUTAGE)
        assert took < OUTAGE / 2 and not sp.own_incidents()
        await until(lambda: len(sp.own_incidents()) == CERTS, timeout=6 * OUTAGE)  # then Statuspage catches up
        assert len(sp.incidents) == CERTS  # each opened once, despite the retries
        deadline = time.monotonic() + OUTAGE
        while 'certpager_bridge_outbox_depth{sink="statuspage"} 0.0' not in await (await client.get("/metrics")).text():
            assert time.monotonic() < deadline, "the statuspage outbox did not drain"
            await asyncio.sleep(0.05)
        assert registry.get_sample_value("certpager_bridge_statuspage_requests_total",
                                         {"method": "GET", "code": "502"}) >= 1
        for sink in sinks.values():
            await sink.aclose()


async def test_a_rotated_token_applies_to_queued_events_and_nothing_is_refused(serve_app, tmp_path):
    async with run_fake_pagerduty() as pd, run_fake_statuspage(
        token=TOKEN, components={GATEWAY: "Gateway API", WEB: "Web"}, rate_limit=10_000
    ) as sp:
        (tmp_path / "sp.token").write_text(TOKEN + "\n")
        path = write_config(tmp_path, pd.url, sp.url)
        path.write_text(path.read_text().replace("api_token: $SP_TOKEN", "api_token_file: sp.token"))
        env = {"SP_MAP": f'{{"Gateway API": "{GATEWAY}", "Web": "{WEB}"}}'}
        holder = ConfigHolder(load(path, env=env), loader=lambda: load(path, env=env))
        sink = StatuspageSink(
            HttpTransport(httpx.AsyncClient(timeout=5), url=sp.url, token=holder.statuspage_token),
            settings=holder.statuspage_settings, token=holder.statuspage_token, requests_per_second=50,
        )
        sp.fail_next(1, status=503, delay=0.3)  # the first attempt fails after the rotation: its retry
        bridge = Bridge(holder, store=SqliteStore(tmp_path / "b.db"), sinks={"statuspage": sink},
                        registry=CollectorRegistry())
        client = await serve_app(bridge.app)
        assert (await client.post(ALERTMANAGER_PATH, data=alerts()[0])).status == 200
        (tmp_path / "sp.token").write_text("the-new-statuspage-token\n")  # 1-2: new key written, reloaded
        assert (await client.post("/-/reload")).status == 200
        sp.token = "the-new-statuspage-token"  # 4: the old key is revoked
        await until(lambda: len(sp.own_incidents()) == 1, timeout=OUTAGE * 2)
        assert not [e for e in sp.log if e.status == 401]
        await sink.aclose()


async def test_an_alert_joining_adds_its_service_and_pagerduty_deduplicates_it(serve_app, tmp_path):
    async with run_fake_pagerduty() as pd, run_fake_statuspage(
        token=TOKEN, components={GATEWAY: "Gateway API", WEB: "Web"}, rate_limit=10_000
    ) as sp:
        client, registry, sinks = await start(serve_app, tmp_path, pd.url, sp.url)
        # One wildcard certificate served by two services' targets: the second alert joins the incident.
        first = alert(certificate="*.example.com", service="Gateway API", severity="critical", fingerprint="f1")
        second = alert(certificate="*.example.com", service="Web", severity="critical", fingerprint="f2")
        assert (await client.post(ALERTMANAGER_PATH, data=body(first))).status == 200
        await until(lambda: sp.statuses()[GATEWAY] == "major_outage", timeout=OUTAGE * 2)
        assert (await client.post(ALERTMANAGER_PATH, data=body(second))).status == 200
        await until(lambda: sp.statuses()[WEB] == "major_outage", timeout=OUTAGE * 2)
        (incident,) = sp.own_incidents()
        assert len(incident.updates) == 2 and "Affected now: Gateway API, Web" in incident.updates[1]["body"]
        await until(lambda: len(pd.accepted) == 2, timeout=OUTAGE * 2)
        assert [a.outcome for a in pd.accepted] == ["opened", "deduplicated"]
        assert registry.get_sample_value("certpager_bridge_incidents_total", {
            "class": "certificate_expired", "environment": "production", "severity": "critical"}) == 1
        for data in (body(alert("resolved", certificate="*.example.com", fingerprint="f1")),
                     body(alert("resolved", certificate="*.example.com", fingerprint="f2"))):
            assert (await client.post(ALERTMANAGER_PATH, data=data)).status == 200
        await until(lambda: incident.status == "resolved", timeout=OUTAGE * 2)
        assert sp.statuses() == {GATEWAY: "operational", WEB: "operational"}
        for sink in sinks.values():
            await sink.aclose()

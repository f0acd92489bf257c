"""The lifecycle metrics on /metrics: pages in and off working hours (Europe/Berlin, across its daylight
saving change), time to resolve from Alertmanager's resolve and to acknowledge from an ack line as ack sync
writes it, with an injected clock."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry

from bridge.app import ALERTMANAGER_PATH, Bridge
from bridge.audit import AuditEntry
from bridge.keys import incident_key
from bridge.store.sqlite import SqliteStore
from tests.bridge.conftest import Clock, RecordingSink, alert, body, loaded_config

BERLIN = ZoneInfo("Europe/Berlin")
KEY = incident_key("certificate_expired", "api.example.com", "production")


def local(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp()


async def test_pages_time_to_acknowledge_and_time_to_resolve(serve_app, tmp_path):
    clock = Clock(local("2027-03-29T08:59:59"))  # CEST since Sunday: one second before working hours
    registry = CollectorRegistry()
    config = loaded_config({"analytics": {"timezone": "Europe/Berlin", "working_hours": "09:00-17:00"}})
    bridge = Bridge(config, store=SqliteStore(tmp_path / "b.db"), sinks={"pagerduty": RecordingSink()},
                    clock=clock, registry=registry)
    client = await serve_app(bridge.app)

    def value(name, **labels):
        return registry.get_sample_value(name, labels) or 0.0

    assert (await client.post(ALERTMANAGER_PATH, data=body(alert()))).status == 200
    clock.advance(1)
    assert (await client.post(ALERTMANAGER_PATH, data=body(alert(certificate="www.example.com")))).status == 200
    assert value("certpager_bridge_pages_total", environment="production", off_hours="true") == 1
    assert value("certpager_bridge_pages_total", environment="production", off_hours="false") == 1

    # Acknowledged in PagerDuty after 4:10 (the line ack sync writes, then reports).
    ack = AuditEntry(local("2027-03-29T09:04:09"), KEY, "pagerduty", "Jane Doe", "incident.acknowledged")
    await bridge.store.record_audit([ack])
    bridge.lifecycle([ack])
    labels = {"class": "certificate_expired", "environment": "production"}
    for _ in range(200):
        if value("certpager_bridge_time_to_acknowledge_seconds_count", **labels):
            break
        await asyncio.sleep(0.01)
    assert value("certpager_bridge_time_to_acknowledge_seconds_sum", **labels) == 250.0
    assert value("certpager_bridge_time_to_acknowledge_seconds_bucket", le="300.0", **labels) == 1
    assert value("certpager_bridge_time_to_acknowledge_seconds_bucket", le="60.0", **labels) == 0

    clock.advance(3722)  # resolved in Alertmanager 1:02:03 after the page
    assert (await client.post(ALERTMANAGER_PATH, data=body(alert("resolved")))).status == 200
    for _ in range(200):
        if value("certpager_bridge_time_to_resolve_seconds_count", **labels):
            break
        await asyncio.sleep(0.01)
    assert value("certpager_bridge_time_to_resolve_seconds_sum", **labels) == 3723.0
    # A second ack line of the same page is not a new observation.
    bridge.lifecycle([AuditEntry(clock(), KEY, "alertmanager", "bob", "acknowledge")])
    await asyncio.sleep(0.1)
    assert value("certpager_bridge_time_to_acknowledge_seconds_count", **labels) == 1


async def test_pages_of_every_configured_environment_start_at_zero(serve_app, tmp_path):
    """A page counter that appears at 1 has no increase(): the first page after a start would be invisible."""
    registry = CollectorRegistry()
    keys = {"production": "P" * 32, "staging": "S" * 32}
    config = loaded_config({"integrations": {"pagerduty": {"routing_keys": keys}}})
    bridge = Bridge(config, store=SqliteStore(tmp_path / "b.db"), sinks={"pagerduty": RecordingSink()},
                    clock=Clock(local("2027-03-29T03:00:00")), registry=registry)
    client = await serve_app(bridge.app)
    for environment in ("production", "staging", ""):
        for off in ("true", "false"):
            labels = {"environment": environment, "off_hours": off}
            assert registry.get_sample_value("certpager_bridge_pages_total", labels) == 0.0, labels
    assert registry.get_sample_value("certpager_bridge_pages_total", {"environment": "other", "off_hours": "true"}) \
        is None  # only what the config names: bounded
    assert (await client.post(ALERTMANAGER_PATH, data=body(alert()))).status == 200
    assert registry.get_sample_value("certpager_bridge_pages_total",
                                     {"environment": "production", "off_hours": "true"}) == 1.0

"""Fixtures for the PagerDuty edge: the fake Events API on loopback, an httpx client, event builders."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bridge.events import Action, IncidentEvent, Link, Severity
from bridge.sinks.base import OutboxItem
from tests.fakes.pagerduty import FakePagerDuty, run_fake_pagerduty

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"  # 32 characters, like an integration key
STAGING_KEY = "STAG1NGKEY0123456789abcdefABCDEF"
_ids = itertools.count(1)


@pytest.fixture
async def fake_pd() -> AsyncIterator[FakePagerDuty]:
    async with run_fake_pagerduty() as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as client:
        yield client


def trigger(**overrides: Any) -> IncidentEvent:
    """The DESIGN.md example event, as the decision layer would produce it."""
    fields: dict[str, Any] = {
        "action": Action.TRIGGER,
        "key": "cert-api-example-com-expired",
        "route": "production",
        "summary": "CRITICAL: Certificate Expired - api.example.com",
        "severity": Severity.CRITICAL,
        "component": "api.example.com",
        "group": "production",
        "event_class": "certificate_expired",
        "timestamp": "2026-11-22T08:00:00Z",
        "custom_details": {"certificate_name": "api.example.com", "issuer": "Example CA", "environment": "production"},
        "links": (Link("https://grafana.example.com/d/certs", "Dashboard"), Link("https://runbooks.example.com/x")),
        "client_url": "https://prometheus.example.com/graph",
    }
    fields.update(overrides)
    return IncidentEvent(**fields)


def followup(action: Action, key: str = "cert-api-example-com-expired", route: str = "production") -> IncidentEvent:
    return IncidentEvent(action=action, key=key, route=route)


def item(event: IncidentEvent | dict[str, Any], *, attempts: int = 0) -> OutboxItem:
    payload = event.to_json() if isinstance(event, IncidentEvent) else event
    key = str(payload.get("key", "?"))
    return OutboxItem(
        id=next(_ids), sink="pagerduty", ordering_key=key, payload=payload, attempts=attempts, created_at=0.0
    )


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

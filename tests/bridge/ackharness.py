"""Ack-sync test harness: a real Debian Alertmanager HA pair (gossiping silences), the fake PagerDuty (Events
API, REST API) and the bridge served on loopback, plus helpers to fire alerts the way Prometheus and
Alertmanager would and to send signed Webhooks v3 the way PagerDuty would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from prometheus_client import CollectorRegistry

from bridge.app import Bridge, ConfigHolder
from bridge.cli import make_statuspage_sink
from bridge.keys import incident_key
from bridge.sinks.base import Sink
from bridge.sinks.pagerduty import PagerDutySink
from bridge.store.sqlite import SqliteStore
from tests.bridge.conftest import loaded_config
from tests.e2e.harness import Program, free_port, http_get, running, wait_until
from tests.fakes.pagerduty import FakePagerDuty, run_fake_pagerduty, signature_header
from tests.webclient import serving

ALERTMANAGER = shutil.which("prometheus-alertmanager")
ROUTING_KEY = "K" * 32
OLD_SECRET, NEW_SECRET = "old-webhook-secret", "new-webhook-secret"
TOKEN = "bridge-bearer-token"
AM_CONFIG = 'route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n'


@dataclass
class Pair:
    urls: list[str]
    programs: list[Program]


@contextlib.contextmanager
def alertmanager_pair(workdir: Path) -> Iterator[Pair]:
    """Two prometheus-alertmanager processes clustered on loopback (silences gossip between them)."""
    if ALERTMANAGER is None:
        pytest.skip("Debian's prometheus-alertmanager is not installed (CI installs it)")
    (workdir / "am.yml").write_text(AM_CONFIG)
    web, cluster = [free_port(), free_port()], [free_port(), free_port()]
    with contextlib.ExitStack() as stack:
        programs = [
            stack.enter_context(running(f"alertmanager{n}", [
                ALERTMANAGER, f"--config.file={workdir / 'am.yml'}", f"--storage.path={workdir / f'am{n}'}",
                f"--web.listen-address=127.0.0.1:{web[n]}", f"--cluster.listen-address=127.0.0.1:{cluster[n]}",
                f"--cluster.peer=127.0.0.1:{cluster[1 - n]}", "--cluster.gossip-interval=50ms",
                "--cluster.pushpull-interval=1s",
            ], workdir))
            for n in (0, 1)
        ]
        urls = [f"http://127.0.0.1:{port}" for port in web]
        for url, program in zip(urls, programs, strict=True):
            def ready(u: str = url, p: Program = program) -> bytes | None:
                p.assert_running()
                return http_get(f"{u}/-/ready")

            wait_until(f"{program.name} ready", ready, timeout=20, interval=0.1)
        yield Pair(urls, programs)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Harness:
    fake: FakePagerDuty
    bridge: Bridge
    client: aiohttp.ClientSession
    am: list[str]  # the real pair
    http: aiohttp.ClientSession
    webhooks: int = 0
    fired: dict[str, dict[str, Any]] = field(default_factory=dict)

    # --- Alertmanager side ------------------------------------------------------------------------------

    async def fire(self, certificate: str, *, starts_at: float | None = None, **extra: str) -> dict[str, Any]:
        """Prometheus sends the alert to both peers; Alertmanager's webhook brings it to the bridge."""
        labels = {"alertname": "CertificateExpired", "class": "certificate_expired", "certificate": certificate,
                  "environment": "production", **extra}
        starts = rfc3339(starts_at if starts_at is not None else time.time() - 60)
        posted = [{"labels": labels, "startsAt": starts, "annotations": {"summary": f"{certificate} expired"}}]
        for url in self.am:
            async with self.http.post(f"{url}/api/v2/alerts", json=posted) as resp:
                assert resp.status == 200, await resp.text()
        alert = await self.am_alert(certificate)
        assert alert is not None
        webhook = {
            "version": "4", "groupKey": '{}:{alertname="CertificateExpired"}', "truncatedAlerts": 0,
            "status": "firing", "receiver": "certpager", "groupLabels": {}, "commonLabels": labels,
            "commonAnnotations": {}, "externalURL": self.am[0],
            "alerts": [{"status": "firing", "labels": alert["labels"], "annotations": alert["annotations"],
                        "startsAt": alert["startsAt"], "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                        "fingerprint": alert["fingerprint"]}],
        }
        await self.alertmanager_webhook(webhook)
        self.fired[certificate] = webhook
        return webhook

    async def alertmanager_webhook(self, webhook: dict[str, Any]) -> dict[str, Any]:
        async with self.client.post("/api/v1/alerts/alertmanager", json=webhook,
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())

    async def resolve_in_alertmanager(self, certificate: str) -> None:
        """The alert ends in both peers (no webhook sent: as when it is silenced)."""
        alert = await self.am_alert(certificate)
        assert alert is not None
        posted = [{"labels": alert["labels"], "startsAt": alert["startsAt"], "endsAt": rfc3339(time.time() - 1)}]
        for url in self.am:
            async with self.http.post(f"{url}/api/v2/alerts", json=posted) as resp:
                assert resp.status == 200

    async def am_alert(self, certificate: str, url: str | None = None) -> dict[str, Any] | None:
        async with self.http.get(f"{url or self.am[0]}/api/v2/alerts",
                                 params={"filter": f'certificate="{certificate}"'}) as resp:
            alerts = await resp.json()
        return alerts[0] if alerts else None

    async def silences(self, certificate: str, url: str | None = None) -> list[dict[str, Any]]:
        """Silences (any state) whose matchers name ``certificate``."""
        async with self.http.get(f"{url or self.am[0]}/api/v2/silences") as resp:
            silences = await resp.json()
        return [s for s in silences if any(m["name"] == "certificate" and m["value"] == certificate
                                           for m in s["matchers"])]

    async def person_silence(self, certificate: str, who: str = "alice") -> str:
        body = {"matchers": [{"name": "certificate", "value": certificate, "isRegex": False, "isEqual": True}],
                "startsAt": rfc3339(time.time()), "endsAt": rfc3339(time.time() + 3600), "createdBy": who,
                "comment": "looking into it"}
        async with self.http.post(f"{self.am[1]}/api/v2/silences", json=body) as resp:
            assert resp.status == 200
            return str((await resp.json())["silenceID"])

    async def expire_silence(self, silence_id: str) -> None:
        async with self.http.delete(f"{self.am[1]}/api/v2/silence/{silence_id}") as resp:
            assert resp.status == 200

    # --- PagerDuty side --------------------------------------------------------------------------------

    def incident(self, certificate: str) -> Any:
        key = self.key(certificate)
        return next(i for i in reversed(self.fake.incidents) if key in i.alert_keys)

    def key(self, certificate: str) -> str:
        return incident_key("certificate_expired", certificate, "production")

    async def send(
        self, payload: dict[str, Any], *, secrets: tuple[str, ...] = (NEW_SECRET,), webhook_id: str | None = None,
        signature: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """POST a Webhooks v3 delivery as PagerDuty does (signed with every active secret)."""
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "X-Webhook-Id": webhook_id or str(uuid.uuid4()),
                   "User-Agent": "PagerDuty-Webhook/V3.0"}
        if signature is not None or secrets:
            headers["X-PagerDuty-Signature"] = signature if signature is not None else signature_header(body, *secrets)
        async with self.client.post("/api/v1/pagerduty/webhook", data=body, headers=headers) as resp:
            return resp.status, dict(await resp.json())

    async def audit(self, certificate: str) -> list[dict[str, Any]]:
        async with self.client.get(f"/api/v1/incidents/{self.key(certificate)}/audit",
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
            return list((await resp.json())["audit"])


def config(
    fake_url: str, am: list[str], db: Path, statuspage: str | None = None, grouping: dict[str, Any] | None = None,
    **ack_sync: Any,
) -> dict[str, Any]:
    sp = {"statuspage": {
        "api_token": "sp-token", "page_id": "page01", "api_url": statuspage, "min_severity": "error",
        "component_map": {"Gateway API": "cmp1"}, "requests_per_second": 100,
    }} if statuspage else {}
    return {
        "integrations": {"pagerduty": {
            "routing_key": ROUTING_KEY, "events_url": fake_url, "api_url": fake_url, "api_token": "fake-rest-token",
            "from_email": "certpager@example.com", "webhook_secrets": [OLD_SECRET, NEW_SECRET],
        }, **sp},
        "server": {"auth": {"bearer_token": TOKEN}},
        "store": {"path": str(db)},
        "outbox": {"retry_initial": "50ms", "retry_max": "300ms", "sweep_interval": "100ms"},
        "ack_sync": {"alertmanagers": am, "poll_interval": "200ms", "vanished_after": "600ms", **ack_sync},
        **({"grouping": grouping} if grouping else {}),
    }


@contextlib.asynccontextmanager
async def harness(
    tmp_path: Path, pair: Pair, statuspage: str | None = None, grouping: dict[str, Any] | None = None,
    **ack_sync: Any,
) -> AsyncIterator[Harness]:
    """The bridge with a dead Alertmanager first in its list (every write fails over), then the pair."""
    dead = f"http://127.0.0.1:{free_port()}"
    async with run_fake_pagerduty() as fake, aiohttp.ClientSession() as http:
        holder = ConfigHolder(loaded_config(
            config(fake.url, [dead, *pair.urls], tmp_path / "bridge.db", statuspage, grouping, **ack_sync)))
        registry = CollectorRegistry()
        sinks: dict[str, Sink] = {"pagerduty": PagerDutySink(
            httpx.AsyncClient(timeout=5), url=fake.url, routing_key_for=lambda route: ROUTING_KEY)}
        if statuspage is not None:
            sinks["statuspage"] = make_statuspage_sink(holder, registry)  # type: ignore[assignment]
        bridge = Bridge(holder, store=SqliteStore(tmp_path / "bridge.db"), sinks=sinks, registry=registry,
                        http=httpx.AsyncClient(timeout=2))
        async with serving(bridge.app) as client:
            yield Harness(fake, bridge, client, pair.urls, http)
        for sink in sinks.values():
            await sink.aclose()


async def eventually(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Await ``check()`` (sync or async) until truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


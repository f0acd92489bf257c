"""Crash test of ack sync: `certpager bridge` as a subprocess, SIGKILLed after PagerDuty's acknowledged webhook
was answered 202 and while its silence is being written (Alertmanager created it, the answer never came
back), restarted on the same SQLite file: the silence exists once, the ack is not lost.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bridge.keys import incident_key
from tests.bridge.ackharness import NEW_SECRET, ROUTING_KEY, TOKEN, alertmanager_pair, eventually, rfc3339
from tests.bridge.test_crash import bridge_process, free_port
from tests.fakes.pagerduty import run_fake_pagerduty, signature_header

CERT = "crash.example.com"


class StallingProxy:
    """Forwards to an Alertmanager; while ``stall`` is set, a silence POST reaches it but its answer never returns."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.stall = True
        self.stalled = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with aiohttp.ClientSession() as session, session.request(
            request.method, self.target + request.path_qs, data=body or None,
            headers={"Content-Type": "application/json"},
        ) as resp:
            answer, status = await resp.read(), resp.status
        if self.stall and request.method == "POST" and request.path == "/api/v2/silences":
            self.stalled.set()
            await asyncio.sleep(3600)  # the bridge is killed while it waits
        return web.Response(body=answer, status=status, content_type="application/json")


def write_config(tmp_path: Path, fake_url: str, am_url: str, port: int) -> Path:
    path = tmp_path / "bridge.yml"
    path.write_text(json.dumps({
        "integrations": {"pagerduty": {
            "routing_key": ROUTING_KEY, "events_url": fake_url, "api_url": fake_url, "api_token": "fake-rest-token",
            "from_email": "certpager@example.com", "webhook_secrets": [NEW_SECRET],
        }},
        "server": {"listen_address": f"127.0.0.1:{port}", "auth": {"bearer_token": TOKEN}},
        "store": {"path": str(tmp_path / "bridge.db")},
        "outbox": {"retry_initial": "50ms", "retry_max": "300ms", "sweep_interval": "100ms"},
        "ack_sync": {"alertmanagers": [am_url], "poll_interval": "200ms", "timeout": "60s"},
    }))
    return path


async def test_sigkill_between_pagerduty_ack_and_its_silence_loses_nothing(tmp_path_factory, tmp_path):
    with alertmanager_pair(tmp_path_factory.mktemp("am-crash")) as pair:
        am = pair.urls[0]
        proxy = StallingProxy(am)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        proxy.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            await _scenario(tmp_path, proxy, am)
        finally:
            await runner.cleanup()


async def _scenario(tmp_path: Path, proxy: StallingProxy, am: str) -> None:
    async with run_fake_pagerduty() as fake, aiohttp.ClientSession() as http:
        port = free_port()
        config = write_config(tmp_path, fake.url, proxy.url, port)
        log = tmp_path / "bridge.log"
        base = f"http://127.0.0.1:{port}"
        labels = {"alertname": "CertificateExpired", "class": "certificate_expired", "certificate": CERT}
        async with http.post(f"{am}/api/v2/alerts", json=[{"labels": labels,
                                                            "startsAt": rfc3339(time.time() - 60)}]) as resp:
            assert resp.status == 200
        async with http.get(f"{am}/api/v2/alerts") as resp:
            [alert] = [a for a in await resp.json() if a["labels"].get("certificate") == CERT]
        webhook = {"version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "certpager",
                   "externalURL": am, "alerts": [{
                       "status": "firing", "labels": alert["labels"], "annotations": {},
                       "startsAt": alert["startsAt"], "endsAt": "0001-01-01T00:00:00Z",
                       "fingerprint": alert["fingerprint"]}]}
        async with bridge_process(config, port, log) as proc:
            async with http.post(f"{base}/api/v1/alerts/alertmanager", json=webhook,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
            await eventually("the trigger in PagerDuty", lambda: fake.incidents, timeout=30)
            incident = fake.incidents[0]
            incident.status = "acknowledged"
            body = json.dumps(fake.webhook("incident.acknowledged", incident, agent="Erin")).encode()
            async with http.post(f"{base}/api/v1/pagerduty/webhook", data=body, headers={
                "X-PagerDuty-Signature": signature_header(body, NEW_SECRET), "X-Webhook-Id": "wh-crash",
                "Content-Type": "application/json",
            }) as resp:
                assert resp.status == 202
            # Generous: on a loaded CI machine the subprocess is slow, and this bounds a hang, not a speed.
            await asyncio.wait_for(proxy.stalled.wait(), 45)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        proxy.stall = False
        async with bridge_process(config, port, log):
            await eventually("the silence adopted", lambda: _audited(http, base, "silence created"), timeout=30)
            await asyncio.sleep(0.5)  # polls run: nothing else may be written
            silences = await _certpager_silences(http, am)
            assert len(silences) == 1, silences
            assert silences[0]["status"]["state"] == "active"
            assert silences[0]["comment"].startswith("ACK! acknowledged in PagerDuty by Erin")
        assert "fake-rest-token" not in log.read_text() and NEW_SECRET not in log.read_text()


async def _audited(http: aiohttp.ClientSession, base: str, action: str) -> bool:
    key = incident_key("certificate_expired", CERT, "")
    async with http.get(f"{base}/api/v1/incidents/{key}/audit",
                        headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        return resp.status == 200 and any(a["action"] == action for a in (await resp.json())["audit"])


async def _certpager_silences(http: aiohttp.ClientSession, am: str) -> list[dict]:
    async with http.get(f"{am}/api/v2/silences") as resp:
        return [s for s in await resp.json() if s["createdBy"] == "certpager"
                and any(m["value"] == CERT for m in s["matchers"])]


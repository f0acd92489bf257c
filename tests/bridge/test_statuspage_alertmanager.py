"""A real Alertmanager (Debian's prometheus-alertmanager) sends to the bridge, the bridge to the fake Statuspage.

Alerts are posted to Alertmanager's API (no Prometheus needed): Alertmanager groups them, sends the webhook
with its bearer token, and sends the resolve once an alert's endsAt passed. What the status page shows is
read from the fake: the bridge's incidents, their updates and the components' status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bridge.app import Bridge, ConfigHolder
from bridge.config import load
from bridge.metrics import StatuspageMetrics
from bridge.sinks.dryrun import DryRunSink
from bridge.sinks.statuspage import HttpTransport, StatuspageSink
from bridge.store.sqlite import SqliteStore
from tests.e2e.harness import free_port, running
from tests.fakes.statuspage import run_fake_statuspage
from tests.webclient import listening

ALERTMANAGER = shutil.which("prometheus-alertmanager")
TOKEN = "statuspage-token-am"
GATEWAY, WEB = "gw0000000001", "web000000001"
pytestmark = pytest.mark.skipif(ALERTMANAGER is None, reason="prometheus-alertmanager is not installed (CI has it)")


def alertmanager_config(tmp_path: Path, bridge_port: int) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(
        "route:\n  receiver: bridge\n  group_by: [class, certificate, environment]\n"
        "  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n"
        "receivers:\n  - name: bridge\n    webhook_configs:\n"
        f"      - url: http://127.0.0.1:{bridge_port}/api/v1/alerts/alertmanager\n        send_resolved: true\n"
        f"        http_config:\n          authorization:\n            credentials_file: {tmp_path / 'bridge.token'}\n"
    )
    return path


def bridge_config(tmp_path: Path, url: str) -> Path:
    (tmp_path / "bridge.token").write_text("am-to-bridge-token\n")  # shared with Alertmanager
    path = tmp_path / "bridge.yml"
    path.write_text(
        f"integrations:\n  statuspage:\n    api_token: {TOKEN}\n    page_id: page01\n    api_url: {url}\n"
        f'    component_map: {{"Gateway API": {GATEWAY}, "Web": {WEB}}}\n    min_severity: error\n'
        "    requests_per_second: 50\n"
        "server:\n  auth:\n    bearer_token_file: bridge.token\n"
        "outbox:\n  retry_initial: 50ms\n  retry_max: 200ms\n  sweep_interval: 100ms\n"
    )
    return path


def rfc3339(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat().replace("+00:00", "Z")


def post_alerts(am_url: str, alerts: list[dict]) -> None:
    request = urllib.request.Request(f"{am_url}/api/v2/alerts", data=json.dumps(alerts).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def am_alert(certificate: str, service: str, severity: str, *, ends: float) -> dict:
    labels = {"alertname": "CertificateExpired", "class": "certificate_expired", "certificate": certificate,
              "environment": "production", "service": service, "severity": severity}
    return {"labels": labels, "annotations": {"summary": f"{certificate} expired"},
            "startsAt": rfc3339(START), "endsAt": rfc3339(ends)}


START = time.time() - 60


async def until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout} s"
        await asyncio.sleep(0.05)


async def test_alertmanager_to_bridge_to_statuspage(tmp_path):
    async with run_fake_statuspage(token=TOKEN, components={GATEWAY: "Gateway API", WEB: "Web"},
                                   rate_limit=10_000) as fake:
        path = bridge_config(tmp_path, fake.url)
        holder = ConfigHolder(load(path, env={}))
        registry = CollectorRegistry()
        statuspage = StatuspageSink(
            HttpTransport(httpx.AsyncClient(timeout=5), url=fake.url, token=holder.statuspage_token),
            settings=holder.statuspage_settings, token=holder.statuspage_token, requests_per_second=50,
            metrics=StatuspageMetrics(registry),
        )
        bridge = Bridge(holder, store=SqliteStore(tmp_path / "b.db"), registry=registry,
                        sinks={"pagerduty": DryRunSink(), "statuspage": statuspage})
        async with listening(bridge.app) as bridge_port:
            am_port = free_port()
            argv = [str(ALERTMANAGER), f"--config.file={alertmanager_config(tmp_path, bridge_port)}",
                    f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address="]
            with running("alertmanager", argv, tmp_path) as am:
                am_url = f"http://127.0.0.1:{am_port}"
                for _ in range(200):
                    am.assert_running()
                    try:
                        with urllib.request.urlopen(f"{am_url}/-/ready", timeout=1):
                            break
                    except OSError:
                        await asyncio.sleep(0.05)
                later = time.time() + 3600
                post_alerts(am_url, [
                    am_alert("a.example.com", "Gateway API,Web", "critical", ends=later),
                    am_alert("b.example.com", "Web", "error", ends=later),
                    am_alert("c.example.com", "Gateway API", "warning", ends=later),  # below min_severity
                ])
                await until(lambda: len(fake.own_incidents()) == 2, "two incidents opened")
                await until(lambda: fake.statuses() == {GATEWAY: "major_outage", WEB: "major_outage"}, "statuses")
                post_alerts(am_url, [am_alert("a.example.com", "Gateway API,Web", "critical", ends=time.time())])
                await until(lambda: fake.statuses() == {GATEWAY: "operational", WEB: "partial_outage"},
                            "a resolved, b still holds Web")
                post_alerts(am_url, [am_alert("b.example.com", "Web", "error", ends=time.time())])
                await until(lambda: all(i.status == "resolved" for i in fake.own_incidents()), "all resolved")
                assert fake.statuses() == {GATEWAY: "operational", WEB: "operational"}
                assert len(fake.incidents) == 2
                assert registry.get_sample_value("certpager_bridge_statuspage_skipped_total",
                                                 {"reason": "below_severity"}) >= 1
        await statuspage.aclose()

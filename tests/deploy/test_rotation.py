"""The credential rotations of docs/runbooks-rotation.md, done mid-burst, exactly as the runbook says, against
real programs: Alertmanager (Debian) sends to `certpager bridge` (a subprocess, as deployed), which delivers to
the fake PagerDuty (tests/fakes/pagerduty.py, a subprocess writing every accepted event to a file).

Each test fires a burst of distinct certificate alerts into Alertmanager, rotates one credential in the middle,
and checks from PagerDuty's side that every alert paged exactly once, and from the bridge's side that the old
credential stopped working (or stopped being used) once the reload answered. The webhook signing secret is
rotated under a stream of Webhooks v3 deliveries signed the way PagerDuty signs them during its own rotation.
(The Statuspage token's rotation is tested in tests/bridge/test_statuspage_e2e.py.)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.k8s import ROOT
from tests.e2e.harness import WEBHOOK_PATH, Program, free_port, http_get, render_alertmanager, running, wait_until
from tests.fakes.pagerduty import signature_header

ALERTMANAGER = shutil.which("prometheus-alertmanager")
OLD_KEY, NEW_KEY = "O" * 32, "N" * 32
OLD_TOKEN, NEW_TOKEN = "old-token-0123456789", "new-token-9876543210"
BURST = 16  # alerts per burst, one every INTERVAL seconds; the rotation happens after half of them
INTERVAL = 0.15

pytestmark = pytest.mark.skipif(ALERTMANAGER is None, reason="needs prometheus-alertmanager (.ci/debian-packages)")


@dataclass
class Stack:
    workdir: Path
    bridge: Program
    bridge_url: str
    alertmanager_url: str
    pagerduty_events: Path
    am_token: Path
    bridge_token: Path
    routing_key: Path
    token_in_force: str = OLD_TOKEN

    def events(self) -> list[dict[str, Any]]:
        """Every event the fake PagerDuty accepted, in arrival order."""
        if not self.pagerduty_events.exists():
            return []
        return [json.loads(line) for line in self.pagerduty_events.read_text().splitlines() if line]

    def reload_bridge(self) -> None:
        """The runbook's reload: POST /-/reload, with the credential in force until it answers (the old token
        when the token itself rotates), answers once the new config and secrets are in force."""
        headers = {"Authorization": f"Bearer {self.token_in_force}"}
        request = urllib.request.Request(f"{self.bridge_url}/-/reload", method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.read()
        self.token_in_force = self.bridge_token.read_text().split()[0]  # any line is in force: the first

    def post_webhook(self, token: str) -> int:
        """POST an (empty-bodied, so invalid) webhook: 401 when the token is refused, 400 once it is accepted."""
        request = urllib.request.Request(
            f"{self.bridge_url}{WEBHOOK_PATH}", data=b"{}", method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def fire(self, certificate: str) -> None:
        now = datetime.now(UTC)
        alert = {
            "labels": {"alertname": "CertificateExpired", "class": "certificate_expired", "severity": "critical",
                       "certificate": certificate, "environment": "production"},
            "annotations": {"summary": f"{certificate} expired"},
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat(),
        }
        request = urllib.request.Request(
            f"{self.alertmanager_url}/api/v2/alerts", data=json.dumps([alert]).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    def refused_notifications(self) -> int:
        """Alertmanager's notifications the bridge refused with 401 (from Alertmanager's own log)."""
        log = (self.workdir / "alertmanager.log").read_text(errors="replace")
        return sum(1 for line in log.splitlines() if "Notify for alerts failed" in line and "status code 401" in line)


@contextlib.contextmanager
def fake_pagerduty(workdir: Path) -> Iterator[tuple[str, Path]]:
    events = workdir / "pagerduty-events.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.pagerduty", "--port", "0", "--state-file", str(events)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on "), line
        yield line.split()[-1], events
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with contextlib.ExitStack() as cleanup:
        pagerduty_url, events = cleanup.enter_context(fake_pagerduty(tmp_path))
        routing_key, bridge_token, am_token = tmp_path / "routing-key-production", tmp_path / "bridge-token", \
            tmp_path / "am-token"
        routing_key.write_text(OLD_KEY + "\n")
        bridge_token.write_text(OLD_TOKEN + "\n")
        am_token.write_text(OLD_TOKEN + "\n")
        (tmp_path / "bridge.yml").write_text(
            "integrations:\n  pagerduty:\n"
            f"    routing_key_files: {{production: {routing_key}}}\n    events_url: {pagerduty_url}\n"
            f"server:\n  auth: {{bearer_token_file: {bridge_token}}}\n"
            f"store: {{path: {tmp_path / 'bridge.db'}}}\n"
            # One delivery at a time: at most one event can be on the wire with the old key when a reload answers.
            "outbox: {max_in_flight: 1, retry_initial: 100ms, retry_max: 1s, sweep_interval: 200ms}\n"
        )
        bridge_port, am_port = free_port(), free_port()
        bridge = cleanup.enter_context(running("bridge", [
            sys.executable, "-m", "certpager", "bridge", f"--config.file={tmp_path / 'bridge.yml'}",
            f"--web.listen-address=127.0.0.1:{bridge_port}",
        ], tmp_path))
        render_alertmanager(ROOT / "deploy/alertmanager/alertmanager.yml", tmp_path / "alertmanager.yml",
                            url=f"http://127.0.0.1:{bridge_port}{WEBHOOK_PATH}", token_file=am_token)
        alertmanager = cleanup.enter_context(running("alertmanager", [
            str(ALERTMANAGER), f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
        ], tmp_path))
        st = Stack(tmp_path, bridge, f"http://127.0.0.1:{bridge_port}", f"http://127.0.0.1:{am_port}", events,
                   am_token, bridge_token, routing_key)

        def ready(url: str) -> bool:
            bridge.assert_running()
            alertmanager.assert_running()
            return http_get(url) is not None

        wait_until("bridge ready", lambda: ready(f"{st.bridge_url}/-/ready"), timeout=30)
        wait_until("alertmanager ready", lambda: ready(f"{st.alertmanager_url}/-/ready"), timeout=30)
        yield st


def burst(stack: Stack, name: str, rotate: Any) -> list[str]:
    """Fire BURST alerts; call ``rotate`` (in another thread, as an operator would) after half of them."""
    certificates = [f"{name}-{i}.example.com" for i in range(BURST)]
    rotation: threading.Thread | None = None
    errors: list[BaseException] = []

    def run_rotation() -> None:
        try:
            rotate()
        except BaseException as exc:
            errors.append(exc)

    for i, certificate in enumerate(certificates):
        if i == BURST // 2:
            rotation = threading.Thread(target=run_rotation)
            rotation.start()
        stack.fire(certificate)
        time.sleep(INTERVAL)
    assert rotation is not None
    rotation.join(timeout=30)
    assert not errors, errors
    return certificates


def paged_once_each(stack: Stack, certificates: list[str]) -> list[dict[str, Any]]:
    """Wait until PagerDuty saw one trigger per certificate; nothing lost, nothing paged twice."""
    def all_there() -> bool:
        stack.bridge.assert_running()
        triggered = {e["dedup_key"] for e in stack.events() if e["body"]["event_action"] == "trigger"}
        return len(triggered) >= len(certificates)

    wait_until("every alert paged", all_there, timeout=60)
    time.sleep(2.5)  # one more Alertmanager group_interval: a duplicate would show up now
    events = stack.events()
    triggers = [e for e in events if e["body"]["event_action"] == "trigger"]
    assert len(events) == len(triggers) == len(certificates), [e["dedup_key"] for e in events]
    assert len({e["dedup_key"] for e in triggers}) == len(certificates), "one incident per certificate"
    assert all(e["outcome"] == "opened" for e in triggers), "no second page for one problem"
    return events


def test_rotate_pagerduty_routing_key_mid_burst(stack):
    marks: dict[str, int] = {}

    def rotate() -> None:
        # Runbook: write the new integration key into the secret file, then reload the bridge.
        stack.routing_key.write_text(NEW_KEY + "\n")
        stack.reload_bridge()
        marks["reloaded"] = len(stack.events())

    certificates = burst(stack, "rk", rotate)
    events = paged_once_each(stack, certificates)
    keys = [e["body"]["routing_key"] for e in events]
    after = keys[marks["reloaded"]:]
    # At most the one delivery that was already on the wire when the reload answered carries the old key.
    assert OLD_KEY not in after[1:], keys
    assert OLD_KEY in keys and NEW_KEY in keys, f"the rotation was not mid-burst: {keys}"


def test_rotate_bridge_bearer_token_mid_burst(stack):
    statuses: dict[str, int] = {}

    def rotate() -> None:
        # Runbook: Alertmanager's credentials file and the bridge's token change independently (two pods, two
        # Secret mounts that sync at different times): here Alertmanager sees the new token a second before the
        # bridge does, so its notifications in between are refused (401) and resent on its next flush.
        stack.am_token.write_text(NEW_TOKEN + "\n")
        time.sleep(1.0)
        stack.bridge_token.write_text(NEW_TOKEN + "\n")
        stack.reload_bridge()
        statuses["old"] = stack.post_webhook(OLD_TOKEN)
        statuses["new"] = stack.post_webhook(NEW_TOKEN)

    certificates = burst(stack, "tok", rotate)
    paged_once_each(stack, certificates)
    assert statuses == {"old": 401, "new": 400}, "after the reload only the new token is accepted"
    assert stack.refused_notifications() >= 1, "the window was exercised: Alertmanager saw 401s, and resent"


def test_rotate_bridge_bearer_token_with_an_overlap_refuses_nothing(stack):
    """The overlap procedure: the bridge accepts both tokens (two lines) while Alertmanager switches."""
    statuses: dict[str, int] = {}
    old, new = NEW_TOKEN, NEW_TOKEN + "-next"  # the test above left NEW_TOKEN in force on both sides
    stack.am_token.write_text(old + "\n")
    stack.bridge_token.write_text(old + "\n")
    stack.reload_bridge()
    refused_before = stack.refused_notifications()

    def rotate() -> None:
        stack.bridge_token.write_text(f"{old}\n{new}\n")  # 1. the bridge accepts both
        stack.reload_bridge()
        stack.am_token.write_text(new + "\n")  # 2. Alertmanager sends the new one
        time.sleep(1.0)
        stack.bridge_token.write_text(new + "\n")  # 3. the old one is dropped
        stack.reload_bridge()
        statuses["old"] = stack.post_webhook(old)
        statuses["new"] = stack.post_webhook(new)

    certificates = burst(stack, "overlap", rotate)
    paged_once_each(stack, certificates)
    assert statuses == {"old": 401, "new": 400}, "after the overlap only the new token is accepted"
    assert stack.refused_notifications() == refused_before, "no notification was refused during the rotation"


# --- PagerDuty Webhooks v3 signing secret ------------------------------------------------------------------

OLD_SECRET, NEW_SECRET = "old-webhook-signing-secret", "new-webhook-signing-secret"
WEBHOOKS = 40  # deliveries in the stream, one every WEBHOOK_INTERVAL seconds
WEBHOOK_INTERVAL = 0.03


def _acknowledged(n: int) -> bytes:
    """A Webhooks v3 incident.acknowledged delivery as PagerDuty sends it (one incident per delivery)."""
    return json.dumps({"event": {
        "id": f"01ROTATION{n:06d}", "event_type": "incident.acknowledged", "resource_type": "incident",
        "occurred_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "agent": {"id": "PUSER01", "type": "user_reference", "summary": "Alice Oncall"},
        "client": None,
        "data": {"id": f"Q{n:08d}", "type": "incident", "status": "acknowledged", "title": f"rotation {n}",
                 "incident_key": f"cert-rotation-{n}-production-expired"},
    }}).encode()


def _deliver(bridge_url: str, n: int, secrets: tuple[str, ...]) -> int:
    body = _acknowledged(n)
    request = urllib.request.Request(
        f"{bridge_url}/api/v1/pagerduty/webhook", data=body, method="POST",
        headers={"Content-Type": "application/json", "X-Webhook-Id": f"rotation-{n}",
                 "X-PagerDuty-Signature": signature_header(body, *secrets)},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_rotate_pagerduty_webhook_secret_mid_stream(tmp_path):
    """docs/runbooks-rotation.md: add the new secret as a second line and reload, rotate in PagerDuty (which signs
    with both, then the new one alone), remove the old line and reload. PagerDuty drops a delivery answered 4xx, so
    every delivery of the stream must be accepted; afterwards a delivery signed with the old secret alone is not."""
    secrets = tmp_path / "pagerduty-webhook-secrets"
    secrets.write_text(OLD_SECRET + "\n")
    (tmp_path / "bridge.yml").write_text(
        f"integrations:\n  pagerduty:\n    webhook_secret_file: {secrets}\n"
        f"store: {{path: {tmp_path / 'bridge.db'}}}\n"
    )
    port = free_port()
    with running("bridge", [sys.executable, "-m", "certpager", "bridge", f"--config.file={tmp_path / 'bridge.yml'}",
                            f"--web.listen-address=127.0.0.1:{port}"], tmp_path) as bridge:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            bridge.assert_running()
            return http_get(f"{url}/-/ready") is not None

        wait_until("bridge ready", ready, timeout=30)
        signing: dict[str, tuple[str, ...]] = {"now": (OLD_SECRET,)}  # what PagerDuty signs with
        answers: list[int] = []

        def stream() -> None:
            for n in range(WEBHOOKS):
                answers.append(_deliver(url, n, signing["now"]))
                time.sleep(WEBHOOK_INTERVAL)

        sender = threading.Thread(target=stream)
        sender.start()

        def after(count: int) -> None:
            wait_until(f"{count} deliveries", lambda: len(answers) >= count, timeout=30, interval=0.01)

        def reload() -> None:
            request = urllib.request.Request(f"{url}/-/reload", method="POST")
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200

        after(8)
        secrets.write_text(f"{OLD_SECRET}\n{NEW_SECRET}\n")  # 1. the new secret as a second line ...
        reload()  # ... and reload
        after(16)
        signing["now"] = (OLD_SECRET, NEW_SECRET)  # 2. rotated in PagerDuty: it signs with both for a while ...
        after(24)
        signing["now"] = (NEW_SECRET,)  # ... then with the new one alone
        after(28)
        secrets.write_text(f"{NEW_SECRET}\n")  # 3. the old line removed ...
        reload()  # ... and reload
        sender.join(timeout=60)
        assert answers == [202] * WEBHOOKS, answers
        assert _deliver(url, WEBHOOKS, (OLD_SECRET,)) == 403, "the old secret alone no longer verifies"
        assert _deliver(url, WEBHOOKS + 1, (NEW_SECRET,)) == 202
        metrics = (http_get(f"{url}/metrics") or b"").decode()
        assert f'certpager_bridge_webhooks_total{{result="accepted",source="pagerduty"}} {WEBHOOKS + 1}.0' in metrics

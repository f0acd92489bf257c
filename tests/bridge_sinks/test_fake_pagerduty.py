"""The fake PagerDuty must reject what PagerDuty rejects and accept what it accepts, as PagerDuty answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bridge_sinks.conftest import ROUTING_KEY, STAGING_KEY, FakeClock
from tests.fakes.pagerduty import run_fake_pagerduty, sign, signature_header

REPO = Path(__file__).resolve().parents[2]


def alert(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "k1",
        "payload": {"summary": "s", "source": "certpager", "severity": "critical"},
    }
    for path, value in changes.items():
        target, *rest = path.split("__")
        if rest:
            if value is _DELETE:
                body[target].pop(rest[0])
            else:
                body[target][rest[0]] = value
        elif value is _DELETE:
            body.pop(target)
        else:
            body[target] = value
    return body


_DELETE = object()

REJECTED = [
    ("no routing_key", alert(routing_key=_DELETE), "'routing_key' is missing or blank"),
    ("short routing_key", alert(routing_key="x" * 31), "'routing_key' must be 32 characters"),
    ("long routing_key", alert(routing_key="x" * 33), "'routing_key' must be 32 characters"),
    ("no event_action", alert(event_action=_DELETE), "'event_action' must be one of trigger, acknowledge or resolve"),
    ("bad event_action", alert(event_action="open"), "'event_action' must be one of trigger, acknowledge or resolve"),
    ("dedup_key number", alert(dedup_key=42), "'dedup_key' must be a string"),
    ("dedup_key 256", alert(dedup_key="d" * 256), "'dedup_key' is too long (maximum is 255 characters)"),
    (
        "resolve without dedup_key",
        alert(event_action="resolve", dedup_key=_DELETE, payload=_DELETE),
        "'dedup_key' is required for acknowledge and resolve events",
    ),
    ("trigger without payload", alert(payload=_DELETE), "'payload' is missing or not an object"),
    ("no summary", alert(payload__summary=_DELETE), "'summary' is missing or blank"),
    ("blank summary", alert(payload__summary="  "), "'summary' is missing or blank"),
    ("summary 1025", alert(payload__summary="s" * 1025), "'summary' is too long (maximum is 1024 characters)"),
    ("no source", alert(payload__source=_DELETE), "'source' is missing or blank"),
    ("no severity", alert(payload__severity=_DELETE), "'severity' must be one of critical, error, warning or info"),
    ("bad severity", alert(payload__severity="high"), "'severity' must be one of critical, error, warning or info"),
    ("custom_details list", alert(payload__custom_details=[1]), "'custom_details' must be an object"),
    ("link without href", alert(links=[{"text": "x"}]), "'links[0].href' is missing or blank"),
    ("http image", alert(images=[{"src": "http://x/y.png"}]), "'images[0].src' must be an HTTPS URL"),
]

ACCEPTED = [
    ("minimal trigger", alert()),
    (
        "trigger, every field",
        alert(
            payload={
                "summary": "s" * 1024,
                "source": "certpager",
                "severity": "info",
                "timestamp": "2026-11-22T08:00:00Z",
                "component": "api.example.com",
                "group": "production",
                "class": "certificate_expired",
                "custom_details": {"a": 1},
            },
            links=[{"href": "https://x/", "text": "t"}],
            images=[{"src": "https://x/i.png"}],
            client="certpager",
            client_url="https://prometheus.example.com",
        ),
    ),
    ("dedup_key 255", alert(dedup_key="d" * 255)),
    ("trigger without dedup_key", alert(dedup_key=_DELETE)),
    ("acknowledge, keys only", {"routing_key": ROUTING_KEY, "event_action": "acknowledge", "dedup_key": "k1"}),
    ("resolve, keys only", {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "k1"}),
    ("resolve with a payload lacking severity", alert(event_action="resolve", payload__severity=_DELETE)),
    ("unknown top-level field", alert(extra="ignored")),
    ("every severity: error", alert(payload__severity="error")),
    ("every severity: warning", alert(payload__severity="warning")),
]


@pytest.mark.parametrize(("body", "error"), [(b, e) for _, b, e in REJECTED], ids=[n for n, _, _ in REJECTED])
async def test_rejects_what_pagerduty_rejects(fake_pd, http, body, error):
    response = await http.post(f"{fake_pd.url}/v2/enqueue", json=body)
    assert response.status_code == 400
    assert response.json() == {"status": "invalid event", "message": "Event object is invalid", "errors": [error]}
    assert fake_pd.accepted == []


@pytest.mark.parametrize("body", [b for _, b in ACCEPTED], ids=[n for n, _ in ACCEPTED])
async def test_accepts_what_pagerduty_accepts(fake_pd, http, body):
    response = await http.post(f"{fake_pd.url}/v2/enqueue", json=body)
    assert response.status_code == 202
    answer = response.json()
    assert answer["status"] == "success"
    assert answer["message"] == "Event processed"
    assert answer["dedup_key"] == body.get("dedup_key", answer["dedup_key"])
    assert len(answer["dedup_key"]) in ({len(body["dedup_key"])} if "dedup_key" in body else {32})
    assert [a.body for a in fake_pd.accepted] == [body]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"trigger"', b"\xff\xfe"])
async def test_unparseable_body_gets_the_documented_parse_error(fake_pd, http, raw):
    response = await http.post(f"{fake_pd.url}/v2/enqueue", content=raw)
    assert response.status_code == 400
    assert response.json() == {
        "status": "Unrecognized object",
        "message": "Event object format is unrecognized",
        "errors": ["JSON parse error"],
    }


async def test_body_over_512_kb_is_rejected_and_just_under_is_accepted(fake_pd, http):
    under = alert(payload__custom_details={"blob": ""})
    under["payload"]["custom_details"]["blob"] = "x" * (512 * 1024 - len(json.dumps(under).encode()))
    assert len(json.dumps(under).encode()) == 512 * 1024
    assert (await http.post(f"{fake_pd.url}/v2/enqueue", content=json.dumps(under))).status_code == 202
    over = json.dumps(under).replace('"blob": "', '"blob": "y', 1)
    response = await http.post(f"{fake_pd.url}/v2/enqueue", content=over)
    assert response.status_code == 400
    assert response.json()["errors"] == ["Event is too large (maximum is 512 KB)"]


async def test_incident_semantics_per_routing_key(fake_pd, http):
    async def send(action: str, key: str = "k1", routing_key: str = ROUTING_KEY) -> str:
        body = alert(event_action=action, dedup_key=key, routing_key=routing_key)
        response = await http.post(f"{fake_pd.url}/v2/enqueue", json=body)
        assert response.status_code == 202
        return str(fake_pd.accepted[-1].outcome)

    assert await send("resolve") == "dropped"  # nothing open: accepted and dropped
    assert await send("trigger") == "opened"
    assert await send("trigger") == "deduplicated"
    assert await send("acknowledge", routing_key=STAGING_KEY) == "dropped"  # another routing key: dropped
    assert await send("acknowledge") == "acknowledged"
    assert await send("trigger") == "deduplicated"  # into the acknowledged alert
    assert await send("resolve") == "resolved"
    assert await send("acknowledge") == "dropped"
    assert await send("trigger") == "opened"  # after resolve: a new alert
    assert [(i.status, i.triggers, i.log) for i in fake_pd.incidents] == [
        ("resolved", 3, ["trigger", "trigger", "acknowledge", "trigger", "resolve"]),
        ("triggered", 1, ["trigger"]),
    ]
    assert fake_pd.actions()[:3] == [("resolve", "k1"), ("trigger", "k1"), ("trigger", "k1")]


async def test_rate_limit_per_routing_key_sliding_window(http):
    clock = FakeClock()
    async with run_fake_pagerduty(rate_limit=3, clock=clock) as fake:
        url = f"{fake.url}/v2/enqueue"
        for _ in range(3):
            assert (await http.post(url, json=alert())).status_code == 202
            clock.advance(10)
        limited = await http.post(url, json=alert())
        assert limited.status_code == 429
        assert (await http.post(url, json=alert(routing_key=STAGING_KEY))).status_code == 202  # per key
        clock.advance(30)  # the first hit (60 s ago now) leaves the window
        assert (await http.post(url, json=alert())).status_code == 202
        assert (await http.post(url, json=alert())).status_code == 429
        assert len(fake.accepted) == 5


async def test_default_rate_limit_is_120_per_minute(fake_pd, http):
    url = f"{fake_pd.url}/v2/enqueue"
    codes = [(await http.post(url, json=alert(dedup_key=f"k{i}"))).status_code for i in range(121)]
    assert codes == [202] * 120 + [429]


async def test_fail_next_injects_faults_in_order_then_recovers(fake_pd, http):
    url = f"{fake_pd.url}/v2/enqueue"
    fake_pd.fail_next(1, 503)
    fake_pd.fail_next(1, 429, retry_after=7)
    fake_pd.fail_next(1, None, delay=0.05)  # slow, then a normal answer
    first = await http.post(url, json=alert())
    second = await http.post(url, json=alert())
    started = time.perf_counter()
    third = await http.post(url, json=alert())
    assert (first.status_code, second.status_code, third.status_code) == (503, 429, 202)
    assert second.headers["Retry-After"] == "7"
    assert time.perf_counter() - started >= 0.048  # the 50 ms delay, less uvloop's millisecond clock
    assert (await http.post(url, json=alert())).status_code == 202
    assert fake_pd.requests == 4
    assert [a.outcome for a in fake_pd.accepted] == ["opened", "deduplicated"]


async def test_serves_on_ipv6_loopback(http):
    async with run_fake_pagerduty(host="::1") as fake:
        assert fake.url.startswith("http://[::1]:")
        assert (await http.post(f"{fake.url}/v2/enqueue", json=alert())).status_code == 202


SERVICE_KEY = "S3RV1CEKEY0123456789abcdefABCDEF"  # a service integration key (a ruleset key begins with R)


async def test_change_events(fake_pd, http):
    url = f"{fake_pd.url}/v2/change/enqueue"
    ok = {
        "routing_key": SERVICE_KEY,
        "payload": {"summary": "renewed api.example.com", "source": "certpager", "timestamp": "2026-11-20T10:00:00Z",
                    "custom_details": {"build": 2}},
        "links": [{"href": "https://x"}],
    }
    answer = await http.post(url, json=ok)
    assert (answer.status_code, answer.json()) == (202, {"status": "success", "message": "Event processed"})
    bad = await http.post(url, json={"routing_key": SERVICE_KEY, "payload": {"summary": "s" * 1025}})
    assert bad.json()["errors"] == ["'summary' is too long (maximum is 1024 characters)"]
    for body, error in (
        ({"routing_key": SERVICE_KEY}, "'payload' is missing or not an object"),
        ({"routing_key": SERVICE_KEY, "payload": {"summary": "s", "custom_details": []}},
         "'custom_details' must be an object"),
        ({"routing_key": SERVICE_KEY, "payload": {"summary": "s"}, "links": [{"text": "no href"}]},
         "'links[0].href' is missing or blank"),
        ({"routing_key": ROUTING_KEY, "payload": {"summary": "s"}},  # a ruleset key (R...): documented refusal
         "change events cannot be sent to a ruleset integration key"),
    ):
        answer = await http.post(url, json=body)
        assert (answer.status_code, answer.json()["errors"]) == (400, [error])
    assert [(a.path, a.outcome) for a in fake_pd.accepted] == [("/v2/change/enqueue", "change")]
    assert fake_pd.changes() == [ok]
    assert fake_pd.incidents == []


def test_webhook_v3_signature_matches_openssl():
    # Expected value computed with `printf 'hello' | openssl dgst -sha256 -hmac secret`: an independent HMAC.
    expected = "v1=88aab3ede8d3adf94d26ab90d3bafd4a2083070c3bcce9c014ee04a443847c0b"
    assert sign(b"hello", "secret") == expected
    assert sign(b"hello", b"secret") == expected
    assert signature_header(b"hello", "secret", "other") == f"{expected},{sign(b'hello', 'other')}"
    assert sign(b"hello", "other") != expected


def test_standalone_mode_records_accepted_events_in_the_state_file(tmp_path):
    state = tmp_path / "accepted.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.pagerduty", "--port", "0", "--state-file", str(state)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()  # bounded: the process prints it at start or exits (EOF)
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        with httpx.Client(timeout=5) as client:
            assert client.post(f"{url}/v2/enqueue", json=alert()).status_code == 202
            assert client.post(f"{url}/v2/enqueue", json=alert(event_action="resolve")).status_code == 202
            assert client.post(f"{url}/v2/enqueue", json=alert(routing_key="short")).status_code == 400
            fault = client.post(f"{url}/_fake/fail_next", json={"n": 1, "status": 503})
            assert fault.json() == {"pending_faults": 1}
            assert client.post(f"{url}/v2/enqueue", json=alert()).status_code == 503
            assert client.get(f"{url}/_fake/state").json() == {
                "requests": 4,
                "accepted": [
                    {"path": "/v2/enqueue", "dedup_key": "k1", "outcome": "opened"},
                    {"path": "/v2/enqueue", "dedup_key": "k1", "outcome": "resolved"},
                ],
                "incidents": [{"dedup_key": "k1", "status": "resolved", "log": ["trigger", "resolve"]}],
            }
        lines = [json.loads(x) for x in state.read_text().splitlines()]
        assert [(x["body"]["event_action"], x["dedup_key"], x["outcome"]) for x in lines] == [
            ("trigger", "k1", "opened"),
            ("resolve", "k1", "resolved"),
        ]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()

"""The HTTP surface: auth, size limit, 4xx reasons, 503 on store failure, commit-before-2xx, metrics, reload."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time

from prometheus_client import CollectorRegistry

from bridge.app import ALERTMANAGER_PATH, Bridge, ConfigHolder
from bridge.config import load
from bridge.store.base import StoreError
from bridge.store.sqlite import SqliteStore
from tests.bridge.conftest import PAYLOADS, RecordingSink, alert, body

TOKEN = "bridge-token-123"


def write_config(tmp_path, extra: str = "") -> ConfigHolder:
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "password").write_text("pw")
    path = tmp_path / "bridge.yml"
    path.write_text(
        "server:\n  max_body_bytes: 4096\n  auth:\n    bearer_token_file: token\n"
        "    basic_auth: {username: am, password_file: password}\n" + extra
    )
    return ConfigHolder(load(path, env={}), loader=lambda: load(path, env={}))


class FailingStore(SqliteStore):
    """A real store whose ingest fails, as a full disk would make it."""

    async def ingest(self, *args, **kwargs):
        raise StoreError("store commit failed: database or disk is full")


async def make_client(serve_app, tmp_path, *, store=None, extra=""):
    holder = write_config(tmp_path, extra)
    sink = RecordingSink()
    registry = CollectorRegistry()
    store = store or SqliteStore(tmp_path / "b.db")
    app = Bridge(holder, store=store, sinks={"pagerduty": sink}, registry=registry).app
    client = await serve_app(app)
    return client, sink, registry, store


def bearer(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def metric(registry, result):
    return registry.get_sample_value(
        "certpager_bridge_webhooks_total", {"source": "alertmanager", "result": result})


async def test_accepts_commits_and_delivers(serve_app, tmp_path):
    client, sink, registry, _store = await make_client(serve_app, tmp_path)
    resp = await client.post(ALERTMANAGER_PATH, data=(PAYLOADS / "firing.json").read_bytes(), headers=bearer())
    assert resp.status == 200
    assert await resp.json() == {
        "status": "accepted", "receipt": 1, "alerts": 2, "new": 2, "duplicates": 0, "stale": 0, "events": 2}
    deadline = time.monotonic() + 3
    while len(sink.seen) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert sorted(a for _, a in sink.actions()) == ["trigger", "trigger"]
    again = await client.post(ALERTMANAGER_PATH, data=(PAYLOADS / "firing.json").read_bytes(), headers=bearer())
    assert (await again.json())["duplicates"] == 2
    assert metric(registry, "accepted") == 2
    assert registry.get_sample_value("certpager_bridge_incidents_total", {
        "class": "certificate_expired", "environment": "production", "severity": "critical"}) == 1


async def test_basic_auth(serve_app, tmp_path):
    client, *_ = await make_client(serve_app, tmp_path)
    good = base64.b64encode(b"am:pw").decode()
    bad = base64.b64encode(b"am:nope").decode()
    assert (await client.post(ALERTMANAGER_PATH, data=body(alert()), headers={"Authorization": f"Basic {good}"})
            ).status == 200
    resp = await client.post(ALERTMANAGER_PATH, data=body(alert()), headers={"Authorization": f"Basic {bad}"})
    assert resp.status == 401
    resp = await client.post(ALERTMANAGER_PATH, data=body(alert()), headers={"Authorization": "Basic !!!"})
    assert resp.status == 401
    for value in ("Basic é", "Basic " + base64.b64encode(b"\xff:\xfe").decode(), "Bearer é"):
        resp = await client.post(ALERTMANAGER_PATH, data=body(alert()), headers={"Authorization": value})
        assert resp.status == 401, value


async def test_unauthorized_gets_a_challenge(serve_app, tmp_path):
    client, sink, registry, _ = await make_client(serve_app, tmp_path)
    for headers in ({}, bearer("wrong"), {"Authorization": "Token x"}):
        resp = await client.post(ALERTMANAGER_PATH, data=body(alert()), headers=headers)
        assert resp.status == 401
        assert resp.headers.getall("WWW-Authenticate") == ['Bearer realm="certpager"', 'Basic realm="certpager"']
        assert await resp.json() == {"status": "error", "error": "unauthorized"}
    assert metric(registry, "unauthorized") == 3
    assert sink.seen == []


async def test_body_over_the_limit_is_413(serve_app, tmp_path):
    client, _, registry, _ = await make_client(serve_app, tmp_path)
    big = body(*[alert(certificate=f"c{i}.example.com") for i in range(20)])
    assert len(big) > 4096
    resp = await client.post(ALERTMANAGER_PATH, data=big, headers=bearer())
    assert (resp.status, await resp.json()) == (413, {"status": "error", "error": "body over 4096 bytes"})

    async def chunks():  # no Content-Length: the limit holds while reading
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    resp = await client.post(ALERTMANAGER_PATH, data=chunks(), headers=bearer())
    assert resp.status == 413
    assert metric(registry, "too_large") == 2


async def test_bad_payloads_get_specific_reasons(serve_app, tmp_path):
    client, _, registry, _ = await make_client(serve_app, tmp_path)
    cases = [
        ("garbage-not-json.txt", 400, "body is not JSON: Expecting value: line 1 column 1 (char 0)"),
        ("garbage-wrong-version.json", 422, "version: unsupported webhook version '3', expected '4'"),
        ("garbage-missing-alerts.json", 400, "alerts: required field is missing"),
    ]
    for name, status, reason in cases:
        resp = await client.post(ALERTMANAGER_PATH, data=(PAYLOADS / name).read_bytes(), headers=bearer())
        assert (resp.status, await resp.json()) == (status, {"status": "error", "error": reason}), name
    deep = b'{"version": "4", "alerts": [], "x": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    resp = await client.post(ALERTMANAGER_PATH, data=deep, headers=bearer())
    reason = "body is not JSON this bridge accepts: nested too deeply"
    assert (resp.status, (await resp.json())["error"]) == (400, reason)
    assert (metric(registry, "bad_request"), metric(registry, "unprocessable")) == (3, 1)


async def test_one_bad_alert_never_blocks_the_good_ones(serve_app, tmp_path):
    """A lone surrogate in a label or fingerprint, or a date out of range, is a 400 for that alert alone."""
    client, sink, registry, _ = await make_client(serve_app, tmp_path)
    good = alert(certificate="good.example.com")
    bad_label = alert(certificate="bad\ud800.example.com")
    bad_fingerprint = alert(certificate="fp.example.com", fingerprint="\udc00")
    late = alert(certificate="late.example.com", starts_at="9999-12-31T23:59:59-01:00")
    raw = body(bad_label, good, bad_fingerprint, late)
    resp = await client.post(ALERTMANAGER_PATH, data=raw, headers=bearer())
    answer = await resp.json()
    assert resp.status == 400
    assert answer["rejected"] == [
        {"index": 0, "error": "alerts[0].labels: a label is not valid Unicode (lone surrogate)"},
        {"index": 2, "error": "alerts[2].fingerprint: not valid Unicode (lone surrogate)"},
        {"index": 3, "error": "alerts[3].startsAt: timestamp out of range"},
    ]
    assert answer["error"].startswith("3 of 4 alerts rejected: alerts[0].labels")
    assert (answer["alerts"], answer["new"], answer["events"]) == (1, 1, 1)
    deadline = time.monotonic() + 3
    while not sink.seen:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert [i.payload["component"] for i in sink.seen] == ["good.example.com"]
    assert metric(registry, "partial") == 1
    rejected = "certpager_bridge_rejected_alerts_total"
    assert registry.get_sample_value(rejected, {"source": "alertmanager", "reason": "invalid_unicode"}) == 2
    assert registry.get_sample_value(rejected, {"source": "alertmanager", "reason": "invalid_timestamp"}) == 1
    # Recorded with the receipt: what was rejected and why.
    with sqlite3.connect(tmp_path / "b.db") as conn:
        (stored,) = conn.execute("SELECT rejected FROM receipts").fetchone()
    assert [r["index"] for r in json.loads(stored)] == [0, 2, 3]
    # Only bad alerts: still a 400 (nothing to store but the receipt), never a 5xx that is retried forever.
    resp = await client.post(ALERTMANAGER_PATH, data=body(bad_label), headers=bearer())
    assert (resp.status, (await resp.json())["alerts"]) == (400, 0)
    assert metric(registry, "bad_request") == 1


async def test_store_failure_is_503_so_alertmanager_retries(serve_app, tmp_path):
    client, _sink, registry, _ = await make_client(serve_app, tmp_path, store=FailingStore(tmp_path / "b.db"))
    resp = await client.post(ALERTMANAGER_PATH, data=body(alert()), headers=bearer())
    assert (resp.status, await resp.json()) == (503, {"status": "error", "error": "store unavailable, retry"})
    assert metric(registry, "store_error") == 1


async def test_truncated_alerts_are_counted(serve_app, tmp_path):
    client, _, registry, _ = await make_client(serve_app, tmp_path)
    resp = await client.post(ALERTMANAGER_PATH, data=(PAYLOADS / "truncated.json").read_bytes(), headers=bearer())
    assert resp.status == 200
    assert registry.get_sample_value("certpager_bridge_truncated_alerts_total") == 3


async def test_metrics_ready_and_outbox_gauges(serve_app, tmp_path):
    release = asyncio.Event()
    stuck = RecordingSink()

    async def gate(item):
        await release.wait()

    stuck.gate = gate
    holder = write_config(tmp_path)
    registry = CollectorRegistry()
    app = Bridge(holder, store=SqliteStore(tmp_path / "b.db"), sinks={"pagerduty": stuck}, registry=registry).app
    client = await serve_app(app)
    assert (await client.get("/-/ready")).status == 200
    assert (await client.post(ALERTMANAGER_PATH, data=body(alert()), headers=bearer())).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'certpager_bridge_outbox_depth{sink="pagerduty"} 1.0' in text
    assert 'certpager_bridge_dead_letters{sink="pagerduty"} 0.0' in text
    assert "certpager_bridge_outbox_oldest_age_seconds" in text
    assert 'certpager_bridge_build_info{version="0.1.0"} 1.0' in text
    release.set()


def test_slo_series_start_at_zero(tmp_path):
    """rules/certpager-bridge.rules.yml divides rates of these series: each exists at 0 before its first
    event, or rate() would miss the first 5xx or dead letter after a start."""
    registry = CollectorRegistry()
    Bridge(write_config(tmp_path), store=SqliteStore(tmp_path / "b.db"),
           sinks={"pagerduty": RecordingSink(), "statuspage": RecordingSink()}, registry=registry)
    for result in ("accepted", "partial", "store_error", "bad_request", "unauthorized"):
        assert metric(registry, result) == 0
    for sink in ("pagerduty", "statuspage"):
        for result in ("delivered", "retry", "throttled", "dead_letter"):
            assert registry.get_sample_value(
                "certpager_bridge_deliveries_total", {"sink": sink, "result": result}) == 0, (sink, result)
        assert registry.get_sample_value("certpager_bridge_delivery_latency_seconds_count", {"sink": sink}) == 0
        assert registry.get_sample_value(
            "certpager_bridge_delivery_latency_seconds_bucket", {"sink": sink, "le": "60.0"}) == 0


async def test_reload_rotates_the_token_and_keeps_old_config_on_error(serve_app, tmp_path):
    client, _, registry, _ = await make_client(serve_app, tmp_path)
    (tmp_path / "token").write_text("rotated-token")
    assert (await client.post("/-/reload", headers=bearer())).status == 200
    assert (await client.post(ALERTMANAGER_PATH, data=body(alert()), headers=bearer())).status == 401
    assert (await client.post(ALERTMANAGER_PATH, data=body(alert()), headers=bearer("rotated-token"))).status == 200
    (tmp_path / "bridge.yml").write_text("server: {listen_address: nonsense}\n")
    resp = await client.post("/-/reload", headers=bearer("rotated-token"))
    assert resp.status == 500
    assert "server.listen_address: expected a listen address" in await resp.text()
    assert "rotated-token" not in await resp.text()
    assert registry.get_sample_value("certpager_bridge_config_last_reload_successful") == 0
    assert (await client.post(ALERTMANAGER_PATH, data=body(alert()), headers=bearer("rotated-token"))).status == 200


async def test_no_auth_configured_is_open(serve_app, tmp_path):
    path = tmp_path / "bridge.yml"
    path.write_text("")
    app = Bridge(load(path, env={}), store=SqliteStore(tmp_path / "b.db"), sinks={"pagerduty": RecordingSink()}).app
    client = await serve_app(app)
    resp = await client.post(ALERTMANAGER_PATH, data=body(alert()))
    assert resp.status == 200
    assert json.loads(await resp.text())["events"] == 1


async def test_incident_counter_labels_are_bounded(serve_app, tmp_path):
    """5,000 classes must not make 5,000 series: known classes and environments, 32 others, then "other"."""
    client, _, registry, _ = await make_client(
        serve_app, tmp_path, extra="integrations:\n  pagerduty:\n    services: {staging: PXXXXXX}\n")
    alerts = [alert(cls=f"class_{i}", certificate=f"c{i}.example.com", environment=f"env{i}") for i in range(100)]
    alerts += [alert(cls="verify_failed", certificate="mine.example.com", environment="staging"),
               alert(cls="x" * 200, certificate="long.example.com", environment="production")]
    for i in range(0, len(alerts), 5):  # the test config takes 4 KiB bodies
        assert (await client.post(ALERTMANAGER_PATH, data=body(*alerts[i : i + 5]), headers=bearer())).status == 200
    series = next(m for m in registry.collect() if m.name == "certpager_bridge_incidents").samples
    counted = {(s.labels["class"], s.labels["environment"]): s.value for s in series if s.name.endswith("_total")}
    assert sum(counted.values()) == 102  # nothing lost, only folded
    classes = {c for c, _ in counted}
    assert "verify_failed" in classes and "other" in classes and "x" * 200 not in classes
    assert len(classes) <= 32 + 2
    environments = {e for _, e in counted}
    assert "staging" in environments and "other" in environments and len(environments) <= 32 + 2


async def test_reload_takes_the_webhook_credentials_unless_configured_otherwise(serve_app, tmp_path):
    client, _, registry, _ = await make_client(serve_app, tmp_path)
    (tmp_path / "bridge.yml").write_text("server: {listen_address: nonsense}\n")  # a reload would fail: 500
    for headers in ({}, bearer("wrong"), {"Authorization": "Basic é"}):
        resp = await client.post("/-/reload", headers=headers)
        assert (resp.status, await resp.text()) == (401, "unauthorized\n")
        assert resp.headers.getall("WWW-Authenticate") == ['Bearer realm="certpager"', 'Basic realm="certpager"']
    assert registry.get_sample_value("certpager_bridge_config_last_reload_successful") == 1  # nothing reloaded
    good = base64.b64encode(b"am:pw").decode()
    assert (await client.post("/-/reload", headers={"Authorization": f"Basic {good}"})).status == 500
    write_config(tmp_path, "  reload: open\n")
    assert (await client.post("/-/reload", headers=bearer())).status == 200  # now open
    assert (await client.post("/-/reload")).status == 200
    write_config(tmp_path, "  reload: disabled\n")
    assert (await client.post("/-/reload")).status == 200  # "open" until this reload applied
    resp = await client.post("/-/reload", headers=bearer())
    assert (resp.status, await resp.text()) == (403, "reload over HTTP is disabled (server.reload); send SIGHUP\n")

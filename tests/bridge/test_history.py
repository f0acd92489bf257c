"""``certpager history`` for a certificate through a 429 storm, a stale HA snapshot, a dead letter and a
rate-limit hold: webhook -> store -> outbox -> real PagerDutySink -> fake PagerDuty, read back line by line
from the store file while the bridge still runs (the CLI reads it without the bridge's lock)."""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bridge import history
from bridge.app import ALERTMANAGER_PATH, Bridge, ConfigHolder
from bridge.config import load
from bridge.keys import incident_key
from bridge.sinks.pagerduty import PagerDutySink
from bridge.store.sqlite import SqliteStore
from tests.bridge.conftest import T1, alert, body
from tests.fakes.pagerduty import run_fake_pagerduty

EXPIRED = incident_key("certificate_expired", "api.example.com", "production")
BASE = datetime(2026, 11, 20, 10, 0, tzinfo=UTC).timestamp()
T2 = "2026-11-22T10:00:00.000000Z"
HMS = r"10:00:\d\d"
SOURCE = "http://alertmanager.example:9093 via 127.0.0.1"


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def args(config, **kw):
    return argparse.Namespace(**{"config_file": str(config), "certificate": None, "key": None, "since": None,
                                 "until": None, **kw})


async def test_history_of_a_certificate_line_by_line(serve_app, tmp_path, capsys):
    (tmp_path / "pd.key").write_text("A" * 32)
    config = tmp_path / "bridge.yml"
    db = tmp_path / "b.db"
    async with run_fake_pagerduty() as fake:
        config.write_text(
            f"integrations:\n  pagerduty:\n    routing_key_file: pd.key\n    events_url: {fake.url}\n"
            f"    rate_limit_per_minute: 3\nstore:\n  path: {db}\n"
            "outbox:\n  retry_initial: 50ms\n  retry_max: 200ms\n  sweep_interval: 100ms\n"
        )
        holder = ConfigHolder(load(config, env={}), loader=lambda: load(config, env={}))
        sink = PagerDutySink(httpx.AsyncClient(timeout=5), url=fake.url, routing_key_for=holder.routing_key_for,
                             rate_limit_per_minute=3, late_resolved=holder.late_resolved)
        start = time.monotonic()
        clock = lambda: BASE + time.monotonic() - start  # noqa: E731 (real time, from a known instant)
        bridge = Bridge(holder, store=SqliteStore(db), sinks={"pagerduty": sink}, clock=clock,
                        registry=CollectorRegistry())
        client = await serve_app(bridge.app)

        async def post(*alerts):
            assert (await client.post(ALERTMANAGER_PATH, data=body(*alerts))).status == 200

        fake.fail_next(2, status=429, retry_after=1)  # the storm: PagerDuty refuses twice
        await post(alert())
        await until(lambda: fake.actions() == [("trigger", EXPIRED)])
        await post(alert("resolved"))
        await until(lambda: len(fake.actions()) == 2)
        await post(alert())  # the slower HA peer's snapshot of the occurrence just resolved
        fake.fail_next(1, status=400)
        await post(alert(starts_at=T1))  # a new occurrence, whose trigger PagerDuty refuses
        await until(lambda: bridge.store.dead_letters())
        await post(alert("resolved", starts_at=T1))
        await until(lambda: len(fake.actions()) == 3)
        await post(alert(starts_at=T2))  # a third: the routing key's 3 events a minute are used up
        await post(alert(certificate="other.example.com"))  # another certificate: not in its history
        for _ in range(500):
            if (await bridge.store.audit_trail(EXPIRED, limit=1))[0].action == "held":
                break
            await asyncio.sleep(0.02)
        assert await asyncio.to_thread(history.run, args(config, certificate="api.example.com")) == 0
        await sink.aclose()

    lines = capsys.readouterr().out.splitlines()
    expected = [
        rf"webhook received: firing from {SOURCE} \(receipt 1\)",
        r"trigger queued for PagerDuty",
        rf"trigger: attempt 1: PagerDuty said 429 rate limited; next try at {HMS}",
        rf"trigger: attempt 2: PagerDuty said 429 rate limited; next try at {HMS}",
        r"trigger: PagerDuty accepted it \(HTTP 202\): Event processed",
        rf"webhook received: resolved from {SOURCE} \(receipt 2\)",
        r"resolve queued for PagerDuty \(resolved in Alertmanager\)",
        r"resolve: PagerDuty accepted it \(HTTP 202\): Event processed",
        rf"webhook received: firing from {SOURCE} \(receipt 3\): stale snapshot of an occurrence resolved at {HMS}",
        rf"webhook received: firing from {SOURCE} \(receipt 4\)",
        r"trigger queued for PagerDuty",
        r"trigger: dead letter after attempt 1: PagerDuty said 400 injected by the test",
        rf"webhook received: resolved from {SOURCE} \(receipt 5\)",
        r"resolve queued for PagerDuty \(resolved in Alertmanager\)",
        r"resolve: PagerDuty accepted it \(HTTP 202\): Event processed",
        rf"webhook received: firing from {SOURCE} \(receipt 6\)",
        r"trigger queued for PagerDuty",
        r"trigger: held by PagerDuty's rate limit until 10:0\d:\d\d",
    ]
    assert len(lines) == len(expected), "\n".join(lines)
    stamps = []
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(rf"(2026-11-20 10:00:\d\dZ)  {EXPIRED}  {pattern}", line), line
        stamps.append(line[:20])
    assert stamps == sorted(stamps)


async def test_history_says_when_nothing_was_recorded_and_refuses_bad_times(tmp_path, capsys):
    config = tmp_path / "bridge.yml"
    config.write_text(f"store:\n  path: {tmp_path / 'b.db'}\n")
    store = SqliteStore(tmp_path / "b.db")
    await store.open()
    await store.close()
    assert await asyncio.to_thread(history.run, args(config, certificate="nothing.example.com")) == 1
    assert "nothing recorded for certificate nothing.example.com" in capsys.readouterr().out
    assert await asyncio.to_thread(history.run, args(config, key="k", since="yesterday")) == 2
    assert "'yesterday': expected a duration before now (30d, 12h, 90m) or an ISO 8601 time" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("value, seconds", [("30d", 30 * 86400), ("90m", 5400)])
def test_since_is_a_duration_before_now_or_a_time(value, seconds):
    assert history.parse_when(value, 1_000_000.0) == 1_000_000.0 - seconds
    assert history.parse_when("2026-11-20T10:00:00", 0) == BASE
    assert history.parse_when("2026-11-20T11:00:00+01:00", 0) == BASE

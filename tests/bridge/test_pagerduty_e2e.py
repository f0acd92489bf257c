"""Webhook -> store -> outbox -> real PagerDutySink -> fake PagerDuty, in one process: HA pairs, outages,
Retry-After, dead letters and rotation of the routing key, observed from PagerDuty's side."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import httpx
from prometheus_client import CollectorRegistry

from bridge.app import ALERTMANAGER_PATH, Bridge, ConfigHolder
from bridge.config import load
from bridge.keys import incident_key
from bridge.sinks.pagerduty import PagerDutySink
from bridge.store.sqlite import SqliteStore
from tests.bridge.conftest import alert, body
from tests.fakes.pagerduty import run_fake_pagerduty

KEY_A, KEY_B = "A" * 32, "B" * 32
EXPIRED = incident_key("certificate_expired", "api.example.com", "production")


async def start(serve_app, tmp_path, fake_url: str, pagerduty: str = "", retry: tuple[str, str] = ("50ms", "200ms")):
    (tmp_path / "pd.key").write_text(KEY_A)
    path = tmp_path / "bridge.yml"
    path.write_text(
        f"integrations:\n  pagerduty:\n    routing_key_file: pd.key\n    events_url: {fake_url}\n{pagerduty}"
        f"outbox:\n  retry_initial: {retry[0]}\n  retry_max: {retry[1]}\n  sweep_interval: 100ms\n"
    )
    holder = ConfigHolder(load(path, env={}), loader=lambda: load(path, env={}))
    sink = PagerDutySink(httpx.AsyncClient(timeout=5), url=fake_url, routing_key_for=holder.routing_key_for,
                         late_resolved=holder.late_resolved)
    registry = CollectorRegistry()
    app = Bridge(holder, store=SqliteStore(tmp_path / "b.db"), sinks={"pagerduty": sink}, registry=registry).app
    client = await serve_app(app)
    return client, registry, sink


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_ha_pair_with_a_stale_snapshot_pages_once_and_resolves_once(serve_app, tmp_path):
    async with run_fake_pagerduty() as fake:
        client, _, sink = await start(serve_app, tmp_path, fake.url)
        for data in (body(alert()), body(alert()), body(alert("resolved")), body(alert()), body(alert("resolved"))):
            assert (await client.post(ALERTMANAGER_PATH, data=data)).status == 200  # peer 1, peer 2, ...
        await until(lambda: len(fake.actions()) == 2)
        await asyncio.sleep(0.3)
        assert fake.actions() == [("trigger", EXPIRED), ("resolve", EXPIRED)]
        await sink.aclose()


def late(registry, recorded_as):
    return registry.get_sample_value(
        "certpager_bridge_late_resolved_total", {"sink": "pagerduty", "recorded_as": recorded_as})


async def test_a_problem_during_an_outage_is_recorded_as_a_change_afterwards(serve_app, tmp_path):
    """late_resolved: change_event (default): on the service's timeline, nobody paged for something fixed."""
    async with run_fake_pagerduty() as fake:
        fake.fail_next(6, status=503)
        client, registry, sink = await start(serve_app, tmp_path, fake.url)
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert()))).status == 200
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert("resolved")))).status == 200
        await until(lambda: len(fake.accepted) == 2)
        (change,) = fake.changes()
        assert change["payload"]["summary"] == (
            "RESOLVED before it paged: ERROR: Certificate Expired - api.example.com (production)")
        assert change["payload"]["custom_details"]["dedup_key"] == EXPIRED
        assert change["routing_key"] == KEY_A
        # The resolve still goes (it closes an alert a timed-out attempt may have opened); here nothing was open.
        assert fake.actions() == [("resolve", EXPIRED)]
        assert [a.outcome for a in fake.accepted] == ["change", "dropped"]
        assert fake.incidents == []  # nobody was paged
        assert fake.requests == 8  # six 503s, the change event, the resolve
        assert late(registry, "change_event") == 1
        assert registry.get_sample_value(
            "certpager_bridge_deliveries_total", {"sink": "pagerduty", "result": "retry"}) == 6
        await sink.aclose()


async def test_late_resolved_page_sends_trigger_then_resolve(serve_app, tmp_path):
    async with run_fake_pagerduty() as fake:
        fake.fail_next(6, status=503)
        client, registry, sink = await start(serve_app, tmp_path, fake.url, "    late_resolved: page\n")
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert()))).status == 200
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert("resolved")))).status == 200
        await until(lambda: len(fake.actions()) == 2)
        assert fake.actions() == [("trigger", EXPIRED), ("resolve", EXPIRED)]
        assert fake.changes() == [] and late(registry, "page") == 1
        await sink.aclose()


async def test_late_resolved_drop_sends_only_the_resolve(serve_app, tmp_path):
    async with run_fake_pagerduty() as fake:
        fake.fail_next(3, status=503)
        client, registry, sink = await start(serve_app, tmp_path, fake.url, "    late_resolved: drop\n")
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert()))).status == 200
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert("resolved")))).status == 200
        await until(lambda: len(fake.accepted) == 1)
        await asyncio.sleep(0.3)
        assert fake.actions() == [("resolve", EXPIRED)] and fake.changes() == []
        assert late(registry, "drop") == 1
        await sink.aclose()


async def test_a_problem_still_broken_after_the_outage_pages(serve_app, tmp_path):
    async with run_fake_pagerduty() as fake:
        fake.fail_next(3, status=503)
        client, registry, sink = await start(serve_app, tmp_path, fake.url)
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert()))).status == 200
        await until(lambda: len(fake.actions()) == 1)
        assert fake.actions() == [("trigger", EXPIRED)] and fake.changes() == []
        assert not late(registry, "change_event")
        await sink.aclose()


async def test_429_retry_after_then_delivered(serve_app, tmp_path):
    async with run_fake_pagerduty() as fake:
        fake.fail_next(1, status=429, retry_after=1)
        client, _, sink = await start(serve_app, tmp_path, fake.url)
        started = time.monotonic()
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert()))).status == 200
        await until(lambda: len(fake.actions()) == 1)
        assert time.monotonic() - started >= 1.0
        await sink.aclose()


async def test_a_400_is_a_dead_letter_and_the_key_moves_on(serve_app, tmp_path):
    async with run_fake_pagerduty() as fake:
        fake.fail_next(1, status=400)
        client, registry, sink = await start(serve_app, tmp_path, fake.url)
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert()))).status == 200
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert("resolved")))).status == 200
        await until(lambda: len(fake.actions()) == 1)
        assert fake.actions() == [("resolve", EXPIRED)]  # dropped by PagerDuty: nothing was open
        text = await (await client.get("/metrics")).text()
        assert 'certpager_bridge_dead_letters{sink="pagerduty"} 1.0' in text
        assert registry.get_sample_value(
            "certpager_bridge_deliveries_total", {"sink": "pagerduty", "result": "dead_letter"}) == 1
        await sink.aclose()


async def test_rotated_routing_key_applies_to_queued_events(serve_app, tmp_path):
    async with run_fake_pagerduty() as fake:
        # The trigger's first attempt answers 503 only after the rotation; its retry must use the new key.
        fake.fail_next(1, status=503, delay=0.3)
        client, _, sink = await start(serve_app, tmp_path, fake.url)
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert()))).status == 200
        (tmp_path / "pd.key").write_text(KEY_B)
        assert (await client.post("/-/reload")).status == 200
        await until(lambda: len(fake.accepted) == 1)
        assert fake.accepted[0].body["routing_key"] == KEY_B
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert("resolved")))).status == 200
        await until(lambda: len(fake.accepted) == 2)
        assert fake.accepted[1].body["routing_key"] == KEY_B
        await sink.aclose()


async def test_a_1_mb_certificate_label_still_pages(serve_app, tmp_path):
    async with run_fake_pagerduty() as fake:
        client, registry, sink = await start(serve_app, tmp_path, fake.url)
        huge = "c" * 1_000_000
        generator = "http://prometheus.example/graph?g0.expr=" + "x" * 1_000_000
        data = body({**alert(certificate=huge, cls="k" * 100_000), "generatorURL": generator})
        assert (await client.post(ALERTMANAGER_PATH, data=io.BytesIO(data))).status == 200
        await until(lambda: len(fake.actions()) == 1)
        (accepted,) = fake.accepted
        assert accepted.body["event_action"] == "trigger" and len(accepted.body["payload"]["component"]) == 1024
        assert not registry.get_sample_value(
            "certpager_bridge_deliveries_total", {"sink": "pagerduty", "result": "dead_letter"})
        await sink.aclose()


async def test_many_problems_resolved_during_an_outage_page_nobody(serve_app, tmp_path):
    # While PagerDuty fails, the sink is probed one event at a time: most triggers are never attempted.
    # Resolved a second or more later, before PagerDuty is back, none of them may page.
    async with run_fake_pagerduty() as fake:
        fake.fail_next(10_000, status=503)
        client, registry, sink = await start(serve_app, tmp_path, fake.url, retry=("1s", "2s"))  # a probe a second
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert(certificate="first.example.com")))).status == 200
        await until(lambda: fake.requests >= 1)  # its 503: the sink is now probed once a second
        certs = [f"c{i}.example.com" for i in range(5)]
        assert (await client.post(ALERTMANAGER_PATH, data=body(*[alert(certificate=c) for c in certs]))).status == 200
        await asyncio.sleep(1.3)
        certs.append("first.example.com")
        resolved = body(*[alert("resolved", certificate=c) for c in certs])
        assert (await client.post(ALERTMANAGER_PATH, data=resolved)).status == 200
        assert fake.requests < 5  # most triggers were never attempted
        fake.heal()
        await until(lambda: len(fake.accepted) == 12, timeout=10.0)
        assert len(fake.changes()) == 6 and sorted(a for a, _ in fake.actions()) == ["resolve"] * 6
        assert fake.incidents == [] and late(registry, "change_event") == 6
        await sink.aclose()


async def test_a_reload_that_adds_the_first_routing_key_takes_the_bridge_out_of_dry_run(serve_app, tmp_path, caplog):
    # Started without a routing key, the bridge logs the events it would send. Adding the key and reloading
    # (SIGHUP) used to leave it in dry run until a restart: the next pages went to the log only.
    from bridge.cli import make_sink, make_sinks

    async with run_fake_pagerduty() as fake:
        path = tmp_path / "bridge.yml"
        path.write_text(f"integrations:\n  pagerduty:\n    events_url: {fake.url}\n")
        holder = ConfigHolder(load(path, env={}), loader=lambda: load(path, env={}))
        registry = CollectorRegistry()
        store = SqliteStore(tmp_path / "b.db")
        sinks = make_sinks(holder, registry, store)

        built = []

        def enable_pagerduty():
            sinks["pagerduty"] = make_sink(holder)
            built.append(sinks["pagerduty"])
            return sinks["pagerduty"]

        bridge = Bridge(holder, store=store, sinks=sinks, registry=registry, pagerduty_sink=enable_pagerduty)
        client = await serve_app(bridge.app)
        caplog.set_level(logging.INFO)
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert(certificate="dry.example.com")))).status == 200
        await until(lambda: store.outbox_stats().depth.get("pagerduty", 0) == 0)  # logged by the dry run
        path.write_text(f"integrations:\n  pagerduty:\n    routing_key: {KEY_A}\n    events_url: {fake.url}\n")
        await bridge.reload()
        await bridge.reload()  # once: a second reload finds it live
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert()))).status == 200
        await until(lambda: fake.actions() == [("trigger", EXPIRED)])
        assert "PagerDuty delivery enabled: out of dry run" in caplog.text
        path.write_text(f"integrations:\n  pagerduty:\n    events_url: {fake.url}\n")
        caplog.clear()
        await bridge.reload()  # every key removed: said, and the events become dead letters
        assert "no PagerDuty routing key configured any more" in caplog.text
        path.write_text(f"integrations:\n  pagerduty:\n    routing_key: {KEY_B}\n    events_url: {fake.url}\n")
        await bridge.reload()  # a key again: the PagerDuty sink reads it, no second sink
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert("resolved")))).status == 200
        await until(lambda: fake.actions() == [("trigger", EXPIRED), ("resolve", EXPIRED)])
        assert len(built) == 1
        for sink in sinks.values():
            await sink.aclose()

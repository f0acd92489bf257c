"""Runbook automation: each action type against a local HTTP receiver (2xx, 4xx, 5xx, timeouts), the Slack and
Teams bodies against their documented shapes, outcomes in the audit trail, and the page never waiting."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from bridge.alertmanager import parse
from bridge.app import ALERTMANAGER_PATH, Bridge, ConfigHolder
from bridge.config import ActionConfig, ActionSecrets, load
from bridge.decisions import ActionRun, Policy, State, action_runs, decide
from bridge.events import Action, Severity
from bridge.sinks.actions import ActionMetrics, ActionsSink
from bridge.sinks.base import DeadLetter, Delivered, OutboxItem, RetryLater
from bridge.sinks.pagerduty import PagerDutySink
from bridge.store.base import Receipt
from bridge.store.ingest import ACTIONS_SINK
from bridge.store.sqlite import SqliteStore
from tests.bridge.conftest import alert, body
from tests.fakes.pagerduty import check_alert_event, run_fake_pagerduty

EXP = "certificate_expired"
POLICY = Policy(severity_mapping={EXP: Severity.CRITICAL},
                automation={EXP: (("renew", "tell"), ("tell",))})


@dataclass
class Receiver:
    """A local HTTP server recording each request and answering from a script: (status, delay) per request."""

    answers: list[tuple[int, float]] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.seen.append({"path": request.path, "method": request.method, "headers": dict(request.headers),
                          "body": raw})
        status, delay = self.answers.pop(0) if self.answers else (200, 0.0)
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, text="nope: bad renewal request" if 400 <= status < 500 else "ok",
                            headers={"Retry-After": "7"} if status == 429 else {})

    def json(self, n: int = -1) -> Any:
        return json.loads(self.seen[n]["body"])


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    fake = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield fake
    finally:
        await runner.cleanup()


def trigger_event():
    firing = alert(cls=EXP, certificate="api.example.com", issuer="R3", service="Gateway API")
    firing["annotations"]["runbook_url"] = "https://runbooks.example/expired"
    decision = decide(State(), parse(body(firing)), POLICY, now=1.0)
    return decision.events[0]


def make_sink(actions: dict[str, ActionConfig], secrets: dict[str, ActionSecrets]):
    registry = CollectorRegistry()
    sink = ActionsSink(httpx.AsyncClient(), actions=lambda: actions, secrets=lambda: secrets,
                       metrics=ActionMetrics(registry))
    return sink, registry


def runs(registry: CollectorRegistry, action: str, kind: str, result: str) -> float | None:
    return registry.get_sample_value("certpager_bridge_actions_total",
                                     {"action": action, "type": kind, "result": result})


def item(run: ActionRun, attempts: int = 0) -> OutboxItem:
    return OutboxItem(1, "actions", run.event.key, run.to_json(), attempts, 1.0)


def test_actions_run_in_order_when_an_incident_opens_and_on_resolve_only_when_asked():
    event = trigger_event()
    assert [(r.action, r.phase) for r in action_runs([event], POLICY)] == [("renew", "open"), ("tell", "open")]
    resolved = decide(State(), parse(body(alert("resolved", cls=EXP))), POLICY, now=2.0)  # nothing was open
    assert action_runs(resolved.events, POLICY) == []
    closing = dataclasses.replace(event, action=Action.RESOLVE)
    assert [(r.action, r.phase) for r in action_runs([closing], POLICY)] == [("tell", "resolve")]
    assert action_runs([dataclasses.replace(event, update=True)], POLICY) == []  # a joiner runs nothing


async def test_http_action_renders_its_body_and_sends_secret_headers(tmp_path):
    (tmp_path / "token").write_text("s3cret-token\n")
    async with receiver() as rx:
        path = tmp_path / "bridge.yml"
        path.write_text(
            "actions:\n  renew:\n    type: http\n    url: " + rx.url + "/renew\n"
            "    headers: {X-Source: certpager}\n    header_files: {Authorization: token}\n"
            "    body: {certificate: '{{ labels.certificate }}', issuer: '{{ issuer }}', key: '{{ key }}',"
            " services: ['{{ services }}'], dry_run: false}\n"
        )
        loaded = load(path, env={})
        sink, registry = make_sink(dict(loaded.config.actions), dict(loaded.secrets.actions))
        outcome = await sink.deliver(item(ActionRun("renew", "open", trigger_event())))
        await sink.aclose()
    assert isinstance(outcome, Delivered)
    assert rx.seen[0]["path"] == "/renew" and rx.seen[0]["headers"]["Authorization"] == "s3cret-token"
    assert rx.seen[0]["headers"]["X-Source"] == "certpager"
    sent = rx.json()
    assert sent["certificate"] == "api.example.com" and sent["issuer"] == "R3" and sent["dry_run"] is False
    assert sent["services"] == ["Gateway API"] and sent["key"].startswith("cert-api-example-com-production-expired")
    assert outcome.status == 200
    assert runs(registry, "renew", "http", "delivered") == 1


@pytest.mark.parametrize(("answer", "expected", "retry_after"), [
    ((400, 0.0), DeadLetter, None), ((404, 0.0), DeadLetter, None), ((500, 0.0), RetryLater, None),
    ((503, 0.0), RetryLater, None), ((429, 0.0), RetryLater, 7.0), ((200, 1.0), RetryLater, None),  # timeout
])
async def test_http_action_outcomes(answer, expected, retry_after):
    async with receiver() as rx:
        rx.answers.append(answer)
        action = ActionConfig(type="http", url=rx.url, timeout=0.3)
        sink, registry = make_sink({"renew": action}, {"renew": ActionSecrets(url=rx.url + "/renew")})
        outcome = await sink.deliver(item(ActionRun("renew", "open", trigger_event()), attempts=2))
        await sink.aclose()
    assert isinstance(outcome, expected)
    if isinstance(outcome, DeadLetter):
        assert "nope: bad renewal request" in outcome.error and outcome.status == answer[0]
    if isinstance(outcome, RetryLater):
        assert outcome.after == retry_after
    if answer[1]:
        assert outcome.error == "timeout after 0.3 s"
    assert runs(registry, "renew", "http", {DeadLetter: "dead_letter", RetryLater: "retry"}[expected]) == 1
    assert rx.url not in outcome.error  # what the audit trail and the dead letter keep: never the secret URL


async def test_notify_slack_body_has_the_documented_shape():
    async with receiver() as rx:
        action = ActionConfig(type="notify", url=rx.url, format="slack",
                              text="<!channel> {{ summary }} & {{ services }}: {{ runbook_url }}")
        sink, _ = make_sink({"tell": action}, {"tell": ActionSecrets(url=rx.url + "/slack")})
        assert isinstance(await sink.deliver(item(ActionRun("tell", "open", trigger_event()))), Delivered)
        await sink.aclose()
    sent = rx.json()
    # Slack incoming webhooks: a JSON object with "text" (also the notification fallback) and optional "blocks";
    # &, < and > are escaped as &amp; &lt; &gt; so an alert's text cannot ping a channel.
    assert set(sent) == {"text", "blocks"}
    assert sent["text"].startswith("&lt;!channel&gt; CRITICAL: Certificate Expired - api.example.com")
    assert "&amp; Gateway API: https://runbooks.example/expired" in sent["text"]
    assert sent["blocks"] == [{"type": "section", "text": {"type": "mrkdwn", "text": sent["text"]}}]
    assert rx.seen[0]["headers"]["Content-Type"] == "application/json"


async def test_notify_teams_body_is_a_message_with_one_adaptive_card():
    async with receiver() as rx:
        action = ActionConfig(type="notify", url=rx.url, format="teams", text="{{ certificate }} expired")
        sink, _ = make_sink({"tell": action}, {"tell": ActionSecrets(url=rx.url + "/teams")})
        assert isinstance(await sink.deliver(item(ActionRun("tell", "open", trigger_event()))), Delivered)
        await sink.aclose()
    sent = rx.json()
    assert sent["type"] == "message" and len(sent["attachments"]) == 1
    [attachment] = sent["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert card["version"] == "1.4"
    assert [b["type"] for b in card["body"]] == ["TextBlock", "TextBlock"]
    assert card["body"][1]["text"] == "api.example.com expired" and card["body"][1]["wrap"] is True


async def test_postmortem_written_to_a_directory_and_posted(tmp_path):
    event = trigger_event()
    action = ActionConfig(type="postmortem", directory=tmp_path / "pm")
    sink, _ = make_sink({"pm": action}, {"pm": ActionSecrets()})
    assert isinstance(await sink.deliver(item(ActionRun("pm", "open", event))), Delivered)
    assert isinstance(await sink.deliver(item(ActionRun("pm", "open", event))), Delivered)  # a retry replaces it
    [written] = list((tmp_path / "pm").iterdir())
    text = written.read_text()
    assert written.name == f"{event.key}.md" and text.startswith("# Postmortem: CRITICAL: Certificate Expired")
    assert "- Issuer: R3" in text and "- Runbook: https://runbooks.example/expired" in text
    (tmp_path / "blocked").write_text("a file where the directory should be")
    blocked = ActionConfig(type="postmortem", directory=tmp_path / "blocked")
    sink2, _ = make_sink({"pm": blocked}, {"pm": ActionSecrets()})
    assert isinstance(await sink2.deliver(item(ActionRun("pm", "open", event))), RetryLater)
    async with receiver() as rx:
        posted = ActionConfig(type="postmortem", url=rx.url, template="# {{ certificate }}\n\n{{ labels.issuer }}\n")
        sink3, _ = make_sink({"pm": posted}, {"pm": ActionSecrets(url=rx.url + "/docs")})
        assert isinstance(await sink3.deliver(item(ActionRun("pm", "open", event))), Delivered)
        await sink3.aclose()
    assert rx.seen[0]["body"] == b"# api.example.com\n\nR3\n"
    assert rx.seen[0]["headers"]["Content-Type"] == "text/markdown; charset=utf-8"
    for s in (sink, sink2):
        await s.aclose()


async def test_pagerduty_action_escalates_to_another_routing_key_at_its_severity():
    security = "S" * 32
    event = trigger_event()
    async with run_fake_pagerduty() as pd:
        action = ActionConfig(type="pagerduty", routing_key=security, severity=Severity.WARNING, events_url=pd.url)
        sink, _ = make_sink({"escalate": action}, {"escalate": ActionSecrets(routing_key=security)})
        assert isinstance(await sink.deliver(item(ActionRun("escalate", "open", event))), Delivered)
        assert isinstance(await sink.deliver(item(ActionRun("escalate", "open", event))), Delivered)  # retried
        assert isinstance(await sink.deliver(item(ActionRun("escalate", "resolve", event))), Delivered)
        bad = ActionConfig(type="pagerduty", routing_key="B" * 32, events_url=pd.url)
        sink2, _ = make_sink({"escalate": bad}, {"escalate": ActionSecrets(routing_key="short")})
        refused = await sink2.deliver(item(ActionRun("escalate", "open", event)))
        for s in (sink, sink2):
            await s.aclose()
    [incident] = pd.incidents
    assert incident.routing_key == security and incident.severity == "warning" and incident.status == "resolved"
    assert incident.dedup_key == f"{event.key}-escalate"
    assert check_alert_event(pd.accepted[0].body) == []
    assert isinstance(refused, DeadLetter) and refused.status == 400


async def test_an_action_no_longer_configured_is_a_dead_letter():
    sink, registry = make_sink({}, {})
    outcome = await sink.deliver(item(ActionRun("gone", "open", trigger_event())))
    assert isinstance(outcome, DeadLetter) and "no longer configured" in outcome.error
    assert runs(registry, "gone", "unknown", "dead_letter") == 1


async def test_ingest_queues_actions_on_their_own_sink_on_every_backend(backend):
    store = backend.new()
    await store.open()
    try:
        raw = body(alert(cls=EXP, certificate="api.example.com"))
        result = await store.ingest(Receipt("alertmanager", raw, 10.0), parse(raw), POLICY,
                                    sinks=["pagerduty", "actions"])
        rows = await backend.pending("actions")
        assert [r.payload["action"] for r in rows] == ["renew", "tell"]
        assert {r.ordering_key for r in rows} == {result.events[0].key}
        assert [r.sink for r in await backend.pending()][:1] == ["pagerduty"]  # the page is queued first
    finally:
        await store.close()


async def test_a_hanging_action_never_delays_the_page(serve_app, tmp_path):
    async with run_fake_pagerduty() as pd, receiver() as rx:
        rx.answers.extend([(200, 3.0)] * 3)  # the renewal service hangs past the action's timeout
        path = tmp_path / "bridge.yml"
        path.write_text(
            f"integrations:\n  pagerduty:\n    routing_key: {'P' * 32}\n    events_url: {pd.url}\n"
            f"actions:\n  renew: {{type: http, url: '{rx.url}/renew', timeout: 2s}}\n"
            "automation:\n  certificate_expired: {actions: [renew]}\n"
            "outbox:\n  retry_initial: 50ms\n  retry_max: 100ms\n  sweep_interval: 100ms\n"
        )
        holder = ConfigHolder(load(path, env={}))
        registry = CollectorRegistry()
        store = SqliteStore(tmp_path / "b.db")
        from bridge.cli import make_sinks

        sinks = make_sinks(holder, registry, store)
        assert set(sinks) == {"pagerduty", "actions"} and isinstance(sinks["pagerduty"], PagerDutySink)
        bridge = Bridge(holder, store=store, sinks=sinks, registry=registry)
        client = await serve_app(bridge.app)
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert(cls=EXP)))).status == 200
        deadline = asyncio.get_running_loop().time() + 1.5
        while not pd.incidents:
            assert asyncio.get_running_loop().time() < deadline, "the page waited for the action"
            await asyncio.sleep(0.02)
        assert all(i.status == "triggered" for i in pd.incidents)
        while not rx.seen:  # the action runs all the same, beside the page
            assert asyncio.get_running_loop().time() < deadline + 5, "the action never ran"
            await asyncio.sleep(0.02)
        assert rx.seen[0]["path"] == "/renew"
        for sink in sinks.values():
            await sink.aclose()


async def test_through_the_outbox_a_5xx_is_retried_and_a_4xx_is_a_dead_letter_in_the_audit_trail(serve_app,
                                                                                                 tmp_path):
    async with run_fake_pagerduty() as pd, receiver() as rx:
        rx.answers.extend([(503, 0.0), (200, 0.0), (400, 0.0)])  # renew: 503, then 200; then tell: 400
        path = tmp_path / "bridge.yml"
        path.write_text(
            f"integrations:\n  pagerduty:\n    routing_key: {'P' * 32}\n    events_url: {pd.url}\n"
            f"actions:\n  renew: {{type: http, url: '{rx.url}/renew'}}\n"
            f"  tell: {{type: notify, format: teams, url: '{rx.url}/tell'}}\n"
            "automation:\n  certificate_expired: {actions: [renew, tell]}\n"
            "outbox:\n  retry_initial: 50ms\n  retry_max: 100ms\n  sweep_interval: 100ms\n"
        )
        holder = ConfigHolder(load(path, env={}))
        registry = CollectorRegistry()
        store = SqliteStore(tmp_path / "b.db")
        from bridge.cli import make_sinks

        sinks = make_sinks(holder, registry, store)
        bridge = Bridge(holder, store=store, sinks=sinks, registry=registry)
        client = await serve_app(bridge.app)
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert(cls=EXP)))).status == 200
        deadline = asyncio.get_running_loop().time() + 10
        while len([e for e in await action_lines(store) if e.action != "held"]) < 3:
            assert asyncio.get_running_loop().time() < deadline, "the actions did not finish"
            await asyncio.sleep(0.05)
        # After the 503 the sink sends one trial at a time: claimed before the trial's time, renew is held
        # (how often depends on timing), and the line says why.
        lines = await action_lines(store)
        assert all(e.detail.startswith("renew: held while the action fails, behind one trial delivery, until ")
                   for e in lines if e.action == "held"), lines
        lines = [e for e in lines if e.action != "held"]
        # In order per incident: renew fails (503), is retried and succeeds, and only then does tell run (400).
        assert [(e.action, e.detail.split(" said ")[0].split(" (HTTP")[0]) for e in lines] == [
            ("retry", "renew: attempt 1: the action"), ("delivered", "renew: the action accepted it"),
            ("dead_letter", "tell: dead letter after attempt 1: the action")]
        assert "503" in lines[0].detail and "(HTTP 200)" in lines[1].detail and "400" in lines[2].detail
        assert {e.certificate for e in lines} == {"api.example.com"} and rx.url not in str(lines)
        assert [s["path"] for s in rx.seen] == ["/renew", "/renew", "/tell"]
        [dead] = store.dead_letters()
        assert dead.sink == "actions" and dead.status == 400 and "nope: bad renewal request" in dead.error
        assert registry.get_sample_value("certpager_bridge_actions_total",
                                         {"action": "tell", "type": "notify", "result": "dead_letter"}) == 1
        assert len(pd.incidents) == 1
        for sink in sinks.values():
            await sink.aclose()


async def test_a_reload_that_adds_the_first_action_runs_it_from_the_next_webhook(serve_app, tmp_path):
    # The actions' sink exists from the start only when actions: names some; a reload that adds the first one
    # starts it (cli.py wires the same factory), where it needed a restart before.
    from bridge.cli import make_actions_sink, make_sinks

    async with run_fake_pagerduty() as pd, receiver() as rx:
        path = tmp_path / "bridge.yml"
        base = f"integrations:\n  pagerduty:\n    routing_key: {'P' * 32}\n    events_url: {pd.url}\n"
        path.write_text(base)
        holder = ConfigHolder(load(path, env={}), loader=lambda: load(path, env={}))
        registry, store = CollectorRegistry(), SqliteStore(tmp_path / "b.db")
        sinks = make_sinks(holder, registry, store)
        assert ACTIONS_SINK not in sinks

        def enable_actions():
            sinks[ACTIONS_SINK] = make_actions_sink(holder, registry)
            return sinks[ACTIONS_SINK]

        bridge = Bridge(holder, store=store, sinks=sinks, registry=registry, actions_sink=enable_actions)
        client = await serve_app(bridge.app)
        path.write_text(base + f"actions:\n  renew: {{type: http, url: '{rx.url}/renew'}}\n"
                        "automation:\n  certificate_expired: {actions: [renew]}\n")
        await bridge.reload()
        await bridge.reload()  # once: a second reload finds it running
        assert (await client.post(ALERTMANAGER_PATH, data=body(alert(cls=EXP)))).status == 200
        deadline = asyncio.get_running_loop().time() + 10
        while not rx.seen:
            assert asyncio.get_running_loop().time() < deadline, "the action did not run"
            await asyncio.sleep(0.05)
        assert [s["path"] for s in rx.seen] == ["/renew"]
        assert [e.action for e in await action_lines(store)] == ["delivered"]
        text = await (await client.get("/metrics")).text()
        assert 'certpager_bridge_outbox_depth{sink="actions"}' in text
        assert len(pd.incidents) == 1  # the page went out as before
        for sink in sinks.values():
            await sink.aclose()


async def action_lines(store):
    """The runbook actions' outcomes, as the audit trail records them (side ``actions``), oldest first."""
    return [e for e in await store.audit_trail() if e.side == "actions"]

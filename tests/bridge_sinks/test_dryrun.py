"""DryRunSink: the exact body the real sink would send, logged and kept; always Delivered."""

from __future__ import annotations

import dataclasses
import json
import logging

from bridge.events import Action
from bridge.sinks.base import Delivered
from bridge.sinks.dryrun import DryRunSink
from bridge.sinks.pagerduty import build_body, build_change_body
from tests.bridge_sinks.conftest import followup, item, trigger


async def test_logs_and_keeps_the_exact_body(caplog):
    caplog.set_level(logging.INFO, logger="bridge.sinks.dryrun")
    sink = DryRunSink()
    assert sink.name == "pagerduty"
    assert await sink.deliver(item(trigger())) == Delivered(info="dry-run")
    assert await sink.deliver(item(followup(Action.RESOLVE))) == Delivered(info="dry-run")
    expected = build_body(trigger(), "<dry-run>")
    assert list(sink.sent) == [
        expected,
        {"routing_key": "<dry-run>", "event_action": "resolve", "dedup_key": "cert-api-example-com-expired"},
    ]
    records = [r for r in caplog.records if r.name == "bridge.sinks.dryrun"]
    assert [(r.levelno, r.getMessage()) for r in records] == [(logging.INFO, "dry-run: would send PagerDuty event")] * 2
    assert json.loads(records[0].kv["body"]) == expected
    assert records[0].kv["route"] == "production"
    await sink.aclose()


async def test_keeps_only_the_last_n_and_uses_the_given_logger(caplog):
    logger = logging.getLogger("demo")
    caplog.set_level(logging.INFO, logger="demo")
    sink = DryRunSink(logger, keep=2)
    for key in ("a", "b", "c"):
        await sink.deliver(item(trigger(key=key)))
    assert [body["dedup_key"] for body in sink.sent] == ["b", "c"]
    assert [r.name for r in caplog.records] == ["demo"] * 3


async def test_says_what_the_real_sink_would_reject_and_still_delivers(caplog):
    caplog.set_level(logging.INFO, logger="bridge.sinks.dryrun")
    sink = DryRunSink()
    empty = item(trigger(summary=""))
    assert await sink.deliver(empty) == Delivered(
        info="dry-run: event rejected locally, not sent: payload.summary is empty"
    )
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].kv == {
        "item": empty.id,
        "would_dead_letter": "event rejected locally, not sent: payload.summary is empty",
    }
    bad = item({"action": "explode"})
    outcome = await sink.deliver(bad)
    assert outcome == Delivered(
        info=f"dry-run: outbox item {bad.id} is not a valid IncidentEvent: ValueError: 'explode' is not a valid Action"
    )
    assert caplog.records[-1].levelno == logging.WARNING
    assert list(sink.sent) == []


async def test_a_late_resolved_trigger_is_shown_as_the_change_event_it_would_be(caplog):
    caplog.set_level(logging.INFO, logger="bridge.sinks.dryrun")
    late = dataclasses.replace(item(trigger()), superseded=True)
    sink = DryRunSink()
    assert await sink.deliver(late) == Delivered(info="dry-run", late="change_event")
    assert list(sink.sent) == [build_change_body(trigger(), "<dry-run>")]
    assert [r.getMessage() for r in caplog.records if r.name == "bridge.sinks.dryrun"] == [
        "dry-run: would send PagerDuty change event (late_resolved)"]
    dropping = DryRunSink(late_resolved=lambda: "drop")
    assert await dropping.deliver(late) == Delivered(info="dry-run", late="drop")
    assert list(dropping.sent) == []

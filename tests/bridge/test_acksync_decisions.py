"""The pure ack-sync decisions (bridge/acksync.py), the signature check and the ack-sync config."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging

import pytest

from bridge import acksync
from bridge.acksync import Ack, AlertView, IncidentView, SilenceView, Snapshot, SyncState
from bridge.app import ConfigHolder
from bridge.config import load
from bridge.events import Severity
from bridge.pagerduty_webhook import WebhookError, parse, signature_matches, verify
from bridge.poller import AlertmanagerPoller
from certpager.errors import ConfigError

SETTINGS = acksync.Settings(silence_max=3600.0, rest=True)


def incident(labels: dict[str, str], key: str = "k", firing: tuple[str, ...] = ("fp1",)) -> IncidentView:
    return IncidentView(key, "default", True, {"custom_details": {"labels": labels}, "key": key}, firing)


def test_silence_matchers_are_the_labels_that_make_the_key():
    # certificate comes from subject_cn: "certificate" must be absent, else another incident is silenced too.
    labels = {"alertname": "CertificateExpired", "subject_cn": "a.example", "instance": "10.0.0.1:443"}
    assert acksync.matchers_for(incident(labels)) == [
        {"name": "class", "value": "", "isRegex": False, "isEqual": True},
        {"name": "alertname", "value": "CertificateExpired", "isRegex": False, "isEqual": True},
        {"name": "certificate", "value": "", "isRegex": False, "isEqual": True},
        {"name": "subject_cn", "value": "a.example", "isRegex": False, "isEqual": True},
        {"name": "environment", "value": "", "isRegex": False, "isEqual": True},
    ]
    # No certificate-like label: the alert is its own subject, all its labels are matched.
    assert [m["name"] for m in acksync.matchers_for(incident({"alertname": "X", "job": "j"}))] == ["alertname", "job"]


def snapshot(*alerts: AlertView, silences: tuple[SilenceView, ...] = ()) -> Snapshot:
    return Snapshot({a.fingerprint: a for a in alerts}, {s.id: s for s in silences})


def test_the_bridges_own_silence_is_never_a_persons():
    state = SyncState({"k": incident({"certificate": "c"})}, {}, own_silences=frozenset({"ours"}))
    # Known by id even if someone edited createdBy, and by createdBy even before the id was recorded.
    for sid, created_by in (("ours", "somebody"), ("new", "certpager")):
        snap = snapshot(AlertView("fp1", "suppressed", (sid,)), silences=(SilenceView(sid, created_by, "", "active"),))
        assert acksync.on_poll(state, snap, now=0, vanished_after=60).outbox == []
    person = snapshot(AlertView("fp1", "suppressed", ("p",)), silences=(SilenceView("p", "alice", "", "active"),))
    changes = acksync.on_poll(state, person, now=0, vanished_after=60)
    assert [(r.sink, r.payload["action"]) for r in changes.outbox] == [("pagerduty", "acknowledge")]
    assert changes.acks[0].actor == "alice" and changes.acks[0].side == "alertmanager"


def test_members_of_a_group_are_left_alone_by_the_poller():
    # Paged under the group's key: a trigger or ack on the member's own key would be a second incident.
    member = IncidentView("k", "default", True, {"custom_details": {"labels": {"certificate": "c"}}}, ("fp1",),
                          group="certgroup-x")
    person = snapshot(AlertView("fp1", "suppressed", ("p",)), silences=(SilenceView("p", "alice", "", "active"),))
    state = SyncState({"k": member}, {"k": Ack("k", status="acknowledged", side="alertmanager")})
    for snap in (person, snapshot(AlertView("fp1", "active"))):
        assert acksync.on_poll(state, snap, now=0, vanished_after=60) == acksync.Changes()


def test_vanished_resolves_only_suppressed_alerts_and_only_after_the_grace():
    state = SyncState({"k": incident({"certificate": "c"})}, {"k": Ack("k", suppressed=False)})
    assert acksync.on_poll(state, snapshot(), now=100, vanished_after=60).close == []  # Alertmanager resolves it
    state = SyncState({"k": incident({"certificate": "c"})}, {"k": Ack("k", suppressed=True, silenced=True)})
    first = acksync.on_poll(state, snapshot(), now=100, vanished_after=60)
    assert first.close == [] and first.acks[0].vanished_since == 100
    state = SyncState(state.incidents, {"k": first.acks[0]})
    assert acksync.on_poll(state, snapshot(), now=130, vanished_after=60).close == []
    done = acksync.on_poll(state, snapshot(), now=161, vanished_after=60)
    assert done.close == ["k"]
    assert [(r.sink, r.payload.get("action") or r.payload["op"]) for r in done.outbox] == [
        ("pagerduty", "resolve"), ("alertmanager", "expire")]


def test_ack_silence_ends_at_the_ack_timeout_capped_by_silence_max():
    event = parse(b'{"event": {"id": "e", "event_type": "incident.acknowledged", "occurred_at": "t1", "agent":'
                  b' {"type": "user_reference", "summary": "A"}, "data": {"type": "incident", "id": "P"}}}', {})
    state = SyncState({"k": incident({"certificate": "c"})})
    for timeout, length in ((600.0, 600.0), (None, 3600.0), (7200.0, 3600.0)):
        out = acksync.on_pagerduty_event(state, event, ["k"], SETTINGS, now=0, ack_timeout=timeout)
        [create] = [r.payload for r in out.outbox]
        assert (create["startsAt"], create["endsAt"]) == (acksync.iso(0), acksync.iso(length))
        assert create["comment"] == "ACK! acknowledged in PagerDuty by A" and create["createdBy"] == "certpager"


def test_escalation_worsens_statuspage_only_for_incidents_already_on_the_page():
    event = parse(b'{"event": {"id": "e", "event_type": "incident.escalated", "occurred_at": "t1",'
                  b' "data": {"type": "incident", "id": "P"}}}', {})
    settings = acksync.Settings(silence_max=3600.0, rest=False, statuspage_min=acksync.Severity.ERROR)
    for severity, expected in (("warning", []), ("error", ["critical"]), ("critical", [])):
        view = IncidentView("k", "default", True, {"severity": severity, "key": "k"}, ("fp",))
        out = acksync.on_pagerduty_event(SyncState({"k": view}), event, ["k"], settings, now=0)
        assert [r.payload["severity"] for r in out.outbox if r.sink == "statuspage"] == expected, severity


def test_signature_check_accepts_any_secret_and_any_value():
    body = b'{"event": {}}'
    sig = "v1=" + hmac.new(b"two", body, hashlib.sha256).hexdigest()
    assert signature_matches(body, f"v1=deadbeef, {sig}", ["one", "two"])
    assert not signature_matches(body, sig, ["one"])
    assert not signature_matches(body + b" ", sig, ["two"])  # the raw body, byte for byte
    with pytest.raises(WebhookError, match="no webhook secret configured"):
        verify(body, {"x-pagerduty-signature": sig}, [])


def test_config_reads_several_webhook_secrets_from_one_file_and_names_bad_keys(tmp_path):
    (tmp_path / "secrets").write_text("first\n\nsecond\n")
    (tmp_path / "token").write_text("tok\n")
    path = tmp_path / "bridge.yml"
    path.write_text("integrations:\n  pagerduty:\n    webhook_secret_file: secrets\n    webhook_secrets: [inline]\n"
                    "    api_token_file: token\nack_sync:\n  alertmanagers: [http://am:9093/]\n")
    loaded = load(path)
    assert loaded.secrets.webhook_secrets == ("inline", "first", "second")
    assert loaded.secrets.api_token == "tok"
    assert loaded.config.ack_sync.alertmanagers == ["http://am:9093"]
    path.write_text("ack_sync:\n  alertmanagers: [am:9093]\n")
    with pytest.raises(ConfigError, match=r"ack_sync\.alertmanagers"):
        load(path)


def test_a_reload_says_which_ack_sync_changes_need_a_restart(tmp_path, caplog):
    path = tmp_path / "bridge.yml"
    path.write_text("ack_sync:\n  alertmanagers: [http://a:9093]\n")
    holder = ConfigHolder(load(path, env={}), loader=lambda: load(path, env={}))
    caplog.set_level(logging.WARNING)
    path.write_text("ack_sync:\n  alertmanagers: [http://b:9093]\n")  # applies at once
    holder.reload()
    assert holder.current.config.ack_sync.alertmanagers == ["http://b:9093"]
    path.write_text("ack_sync:\n  alertmanagers: []\n  poll_interval: 5s\n")
    holder.reload()
    restart = [r.kv["key"] for r in caplog.records if hasattr(r, "kv")]  # type: ignore[attr-defined]
    assert restart == ["ack_sync.alertmanagers (empty or not)", "ack_sync.poll_interval"]


def test_the_poller_survives_a_failing_poll():
    class Failing(AlertmanagerPoller):
        calls = 0

        async def poll(self) -> str:
            Failing.calls += 1
            if Failing.calls == 3:
                self.stop()
            raise RuntimeError("boom")

    results: list[str] = []

    class Counter:
        def __init__(self, result: str) -> None:
            results.append(result)

        def inc(self) -> None:
            pass

    poller = Failing(None, None, alertmanagers=list, interval=0.001,  # type: ignore[arg-type]
                     vanished_after=lambda: 0.0, counter=Counter)
    asyncio.run(poller.run())
    assert results == ["error", "error", "error"]


def pd_event(event_type: str, priority: str | None, minute: int):
    raw = json.dumps({"event": {
        "id": f"e{minute}", "event_type": event_type, "occurred_at": f"2026-11-20T10:{minute:02d}:00Z",
        "agent": {"type": "user_reference", "summary": "Alice"},
        "data": {"type": "incident", "id": "PINC", "incident_key": "k",
                 "priority": None if priority is None else {"id": priority, "summary": priority.replace("PP", "P")}},
    }}).encode()
    return parse(raw, {"x-webhook-id": f"w{minute}"})


def test_a_priority_raised_by_a_person_makes_statuspage_worse_without_raising_it_again():
    order = ["PP1", "PP2", "PP3"]
    settings = acksync.Settings(silence_max=3600.0, rest=True, statuspage_min=Severity.WARNING)
    trigger = {"custom_details": {"labels": {"certificate": "c"}}, "key": "k", "severity": "error"}
    state = SyncState({"k": IncidentView("k", "default", True, trigger, ("fp1",))},
                      {"k": Ack("k", pd_incident_id="PINC", priority="P3", priority_id="PP3")})

    def apply(state: SyncState, event_type: str, priority: str | None, minute: int,
              priorities: list[str] = order) -> tuple[SyncState, acksync.Changes]:
        changes = acksync.on_pagerduty_event(state, pd_event(event_type, priority, minute), ["k"], settings,
                                             now=float(minute), priorities=priorities)
        return SyncState(state.incidents, {a.key: a for a in changes.acks}), changes

    def sinks(changes: acksync.Changes) -> list[tuple[str, str]]:
        return [(r.sink, str(r.payload.get("severity") or r.payload.get("op"))) for r in changes.outbox]

    state, raised = apply(state, "incident.priority_updated", "PP2", 1)  # a person: P3 -> P2
    assert sinks(raised) == [("statuspage", "critical")]  # one status worse, and no REST raise
    assert raised.outbox[0].payload["note"] == "priority raised in PagerDuty"
    assert raised.audit[0].detail.startswith("priority P2, raised from P3")
    state, lowered = apply(state, "incident.priority_updated", "PP3", 2)
    assert sinks(lowered) == [] and lowered.acks[0].priority_id == "PP3"
    # The bridge's own raise after an escalation: Statuspage was made worse by the escalation already.
    state, escalated = apply(state, "incident.escalated", "PP3", 3)
    assert sinks(escalated) == [("pagerduty_rest", "raise_priority"), ("statuspage", "critical")]
    state, own = apply(state, "incident.priority_updated", "PP2", 4)
    assert sinks(own) == [] and "the bridge's own raise" in own.audit[0].detail
    # Without the account's priorities (no REST token) a change cannot be told a raise: recorded only.
    state, unknown = apply(state, "incident.priority_updated", "PP1", 5, priorities=[])
    assert sinks(unknown) == [] and unknown.acks[0].priority == "P1"
    # From no priority to one: not comparable with what the bridge knew, recorded only.
    state, cleared = apply(state, "incident.priority_updated", None, 6)
    _, first = apply(state, "incident.priority_updated", "PP3", 7)
    assert sinks(cleared) == sinks(first) == []

"""The pure decision layer: keys, severity, event content, dedup, stale snapshots and the ladder."""

from __future__ import annotations

import json

from bridge.alertmanager import parse
from bridge.decisions import Decision, Policy, State, decide, render_template
from bridge.events import Action, Link, Severity
from bridge.keys import KEY_MAX, incident_key, subject_of
from tests.bridge.conftest import PAYLOADS, T0, T1, alert, body

E30, E7, EXP = "certificate_expiring_30_days", "certificate_expiring_7_days", "certificate_expired"
POLICY = Policy(
    severity_mapping={EXP: Severity.CRITICAL, E7: Severity.ERROR, E30: Severity.WARNING},
    default_severity=Severity.INFO,
    dashboard="https://grafana.example/d/certs?var-certificate={{ labels.certificate }}"
    "&var-env={{ labels.environment }}",
)


class Bridge:
    """decide() with its state kept between notifications, as a store would."""

    def __init__(self, policy: Policy = POLICY) -> None:
        self.policy = policy
        self.occurrences: dict = {}
        self.incidents: dict = {}
        self.now = 1_000.0

    def send(self, *alerts, **kw) -> Decision:
        self.now += 1
        notification = parse(body(*alerts, **kw))
        decision = decide(State(dict(self.occurrences), dict(self.incidents)), notification, self.policy, now=self.now)
        for o in decision.occurrences:
            self.occurrences[(o.fingerprint, o.starts_at)] = o
        for i in decision.incidents:
            self.incidents[i.key] = i
        return decision


def actions(decision: Decision) -> list[tuple[str, str]]:
    return [(e.event_class, e.action.value) for e in decision.events]


def test_key_is_readable_stable_and_bounded():
    assert incident_key(EXP, "api.example.com", "production") == incident_key(EXP, "api.example.com", "production")
    assert incident_key(EXP, "api.example.com", "").startswith("cert-api-example-com-expired-")
    assert incident_key(EXP, "api.example.com", "production").startswith("cert-api-example-com-production-expired-")
    # Slugs collide; keys must not.
    assert incident_key(EXP, "api.example.com", "") != incident_key(EXP, "api-example.com", "")
    assert incident_key(EXP, "a", "b") != incident_key(E7, "a", "b") != incident_key(EXP, "a", "c")
    long_key = incident_key(EXP, "x" * 400 + ".example.com", "e" * 300)
    assert len(long_key) == KEY_MAX
    assert long_key != incident_key(EXP, "x" * 401 + ".example.com", "e" * 300)


def test_subject_fallbacks():
    s = subject_of({"alertname": "TLSProbeFailed", "target": "db:5432"}, "ffff")
    assert (s.event_class, s.certificate, s.environment, s.route) == ("TLSProbeFailed", "db:5432", "", "default")
    s = subject_of({"alertname": "X"}, "abcd")
    assert s.certificate == "alert-abcd"


def test_first_firing_builds_the_design_event():
    decision = decide(State(), parse((PAYLOADS / "firing.json").read_bytes()), POLICY, now=5.0)
    assert decision.new == 2 and decision.duplicates == 0
    event = decision.events[0]
    assert event.action is Action.TRIGGER
    assert event.key == incident_key(EXP, "api.example.com", "production")
    assert event.route == "production"
    assert event.summary == "CRITICAL: Certificate Expired - api.example.com (production)"
    assert (event.severity, event.source, event.component, event.group, event.event_class) == (
        Severity.CRITICAL, "certpager", "api.example.com", "production", EXP)
    assert event.timestamp == "2026-11-20T10:00:00.123456Z"
    details = dict(event.custom_details)
    assert details["certificate_name"] == "api.example.com"
    assert details["issuer"] == "R11"
    assert details["expired_date"] == "2026-11-20T08:00:00Z"
    assert details["environment"] == "production"
    assert details["affected_services"] == ["gateway", "checkout"]
    assert details["labels"]["target"] == "api.example.com:443"
    assert details["annotations"]["description"] == "expired 2h ago"
    assert event.links == (
        Link("https://grafana.example/d/certs?var-certificate=api.example.com&var-env=production", "Dashboard"),
        Link("https://runbooks.example/cert-expired", "Runbook"),
        Link("http://prometheus.example:9090/graph?g0.expr=tls_chain_earliest_expiry", "Alert source"),
    )
    assert (event.client, event.client_url) == ("certpager", "http://alertmanager.example:9093")
    assert json.loads(json.dumps(event.to_json()))["key"] == event.key
    second = decision.events[1]
    assert second.summary == "ERROR: Certificate Expiring in 7 Days - www.example.com (staging)"


def test_severity_mapping_then_label_then_default():
    policy = Policy(severity_mapping={EXP: Severity.CRITICAL}, default_severity=Severity.WARNING)
    assert policy.severity_for(EXP, {"severity": "info"}) is Severity.CRITICAL
    assert policy.severity_for("probe_failed", {"severity": "Error"}) is Severity.ERROR
    assert policy.severity_for("probe_failed", {"severity": "page"}) is Severity.WARNING
    assert policy.severity_for("probe_failed", {}) is Severity.WARNING


def test_templates_quote_values_and_runbook_template_is_a_fallback():
    assert render_template("https://x/?c={{ labels.c }}&a={{annotations.a}}&m={{ labels.missing }}",
                           {"c": "a b&c"}, {"a": "é"}) == "https://x/?c=a%20b%26c&a=%C3%A9&m="
    b = Bridge(Policy(runbook="https://runbooks.example/{{ labels.class }}"))
    a = alert()
    a["annotations"].pop("runbook_url", None)
    (event,) = b.send(a).events
    assert Link("https://runbooks.example/certificate_expired", "Runbook") in event.links


def test_same_transition_twice_yields_one_event():
    b = Bridge()
    assert actions(b.send(alert())) == [(EXP, "trigger")]
    again = b.send(alert())
    assert (again.events, again.duplicates, again.new) == ([], 1, 0)
    assert actions(b.send(alert("resolved"))) == [(EXP, "resolve")]
    assert b.send(alert("resolved")).events == []


def test_group_key_does_not_change_the_incident():
    b = Bridge()
    first = b.send(alert(), group_key="{}:{alertname=\"A\"}").events
    assert b.send(alert(), group_key="{}/{team=\"x\"}:{alertname=\"A\"}").events == []
    (resolve,) = b.send(alert("resolved"), group_key="other").events
    assert resolve.key == first[0].key


def test_ha_pair_duplicate_and_stale_snapshot_give_one_trigger_and_one_resolve():
    b = Bridge()
    events = []
    events += b.send(alert()).events  # peer 1 firing
    events += b.send(alert()).events  # peer 2, same notification
    events += b.send(alert("resolved")).events  # peer 1 resolved
    stale = b.send(alert())  # peer 2's snapshot from before the resolve
    assert (stale.stale, stale.events) == (1, [])
    events += b.send(alert("resolved")).events  # peer 2 resolved, late
    assert [e.action for e in events] == [Action.TRIGGER, Action.RESOLVE]
    assert events[1].note == "resolved in Alertmanager"


def test_new_starts_at_is_a_new_occurrence():
    b = Bridge()
    b.send(alert())
    b.send(alert("resolved"))
    assert actions(b.send(alert(starts_at=T1))) == [(EXP, "trigger")]


def test_later_occurrence_ends_earlier_ones_and_older_firing_is_stale():
    b = Bridge()
    assert actions(b.send(alert())) == [(EXP, "trigger")]
    assert b.send(alert(starts_at=T1)).events == []  # the T0 resolve was never seen; still one open incident
    assert b.occurrences[(alert()["fingerprint"], T0)].status == "resolved"
    assert b.send(alert(starts_at=T0)).stale == 1
    assert actions(b.send(alert("resolved", starts_at=T1))) == [(EXP, "resolve")]


def test_resolve_with_later_starts_at_ends_the_firing_occurrence():
    # What `certpager bridge test-alert --resolve` sends: the resolve carries a later startsAt.
    b = Bridge()
    b.send(alert())
    assert actions(b.send(alert("resolved", starts_at=T1))) == [(EXP, "resolve")]


def test_two_alerts_of_one_incident_resolve_it_when_both_resolved():
    b = Bridge()
    a1 = alert(target="a:443", fingerprint="1111111111111111")
    a2 = alert(target="b:443", fingerprint="2222222222222222")
    assert actions(b.send(a1)) == [(EXP, "trigger")]
    assert b.send(a2).events == []
    assert b.send({**a1, "status": "resolved"}).events == []
    assert actions(b.send({**a2, "status": "resolved"})) == [(EXP, "resolve")]


def test_escalation_ladder_up_and_down():
    b = Bridge()
    a30, a7, ax = alert(cls=E30), alert(cls=E7), alert(cls=EXP)
    assert actions(b.send(a30)) == [(E30, "trigger")]
    up = b.send(a30, a7)
    assert actions(up) == [(E7, "trigger"), (E30, "resolve")]
    assert up.events[1].note == f"superseded by {E7} ({incident_key(E7, 'api.example.com', 'production')})"
    assert actions(b.send(a30, a7, ax)) == [(EXP, "trigger"), (E7, "resolve")]
    down = b.send(a30, a7, {**ax, "status": "resolved"})
    assert actions(down) == [(E7, "trigger"), (EXP, "resolve")]
    assert down.events[0].note == f"re-opened: {EXP} resolved while this still fires"
    assert actions(b.send(a30, {**a7, "status": "resolved"})) == [(E30, "trigger"), (E7, "resolve")]
    assert actions(b.send({**a30, "status": "resolved"})) == [(E30, "resolve")]


def test_ladder_in_one_notification_opens_only_the_highest():
    b = Bridge()
    assert actions(b.send(alert(cls=E30), alert(cls=EXP))) == [(EXP, "trigger")]


def test_ladder_is_per_certificate_and_environment():
    b = Bridge()
    got = b.send(alert(cls=E30), alert(cls=EXP, environment="staging"), alert(cls=E7, certificate="b.example.com"))
    assert sorted(actions(got)) == sorted([(E30, "trigger"), (E7, "trigger"), (EXP, "trigger")])


def test_non_ladder_classes_are_independent():
    b = Bridge()
    assert sorted(actions(b.send(alert(cls="policy_violation"), alert(cls=EXP)))) == [
        (EXP, "trigger"), ("policy_violation", "trigger")]


def test_an_alert_joining_an_open_incident_with_more_services_is_an_update():
    bridge = Bridge()
    first = bridge.send(alert(cls=EXP, fingerprint="f1", service="Gateway API"))
    assert [(e.action, e.update) for e in first.events] == [(Action.TRIGGER, False)]
    # The same certificate on another target, for another service: the incident stays, its services grow.
    joined = bridge.send(alert(cls=EXP, fingerprint="f2", service="Web, Gateway API"))
    (event,) = joined.events
    assert (event.action, event.update) == (Action.TRIGGER, True)
    assert event.custom_details["affected_services"] == ["Gateway API", "Web"]
    assert event.note == "updated: affected services now Gateway API, Web"
    # Nothing new (a third target for a known service, or the first alert again): no event.
    assert bridge.send(alert(cls=EXP, fingerprint="f3", service="Web")).events == []
    # Partial resolve: the incident stays open, the services stay (they resolve together with the incident).
    assert bridge.send(alert("resolved", cls=EXP, fingerprint="f2", service="Web")).events == []
    resolved = bridge.send(alert("resolved", cls=EXP, fingerprint="f1"), alert("resolved", cls=EXP, fingerprint="f3"))
    assert [e.action for e in resolved.events] == [Action.RESOLVE]
    # Opened anew: the services start from this alert only.
    again = bridge.send(alert(cls=EXP, fingerprint="f4", starts_at=T1, service="Web"))
    assert again.events[0].custom_details["affected_services"] == ["Web"] and not again.events[0].update


def test_alerts_of_one_incident_in_one_notification_open_it_with_every_service():
    decision = Bridge().send(alert(cls=EXP, fingerprint="f1", service="Gateway API"),
                             alert(cls=EXP, fingerprint="f2", service="Web"))
    (event,) = decision.events
    assert event.custom_details["affected_services"] == ["Gateway API", "Web"] and not event.update


def test_the_service_label_is_the_statuspage_one():
    policy = Policy(service_label="customer_service")
    decision = Bridge(policy).send(alert(cls=EXP, customer_service="Checkout", service="internal-db"))
    assert decision.events[0].custom_details["affected_services"] == ["Checkout"]

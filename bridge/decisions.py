"""Pure decisions: (stored state, one Alertmanager notification) -> (state changes, incident events).

No I/O and no clock of its own, so a store runs :func:`decide` inside the transaction that records the
webhook (SQLite today, PostgreSQL later) and tests drive it with plain values. The rules:

- **Occurrence** = alert fingerprint + startsAt. Seeing the status an occurrence already has is a
  duplicate (HA peers, Alertmanager retries, repeat_interval): nothing new.
- **Stale snapshot**: a "firing" for an occurrence already seen resolved, or older than a known
  occurrence of the same fingerprint, does not page. A later startsAt is a new occurrence and ends the
  older ones of that fingerprint (their resolve may never come, e.g. while silenced).
- **Incidents** are reconciled per scope (one certificate in one environment): an incident should be
  open when one of its occurrences fires, except on the escalation ladder (30-day < 7-day < expired),
  where only the highest firing class is open; a superseded lower incident is resolved with a note and
  re-triggered when the higher one resolves while it still fires. Events are emitted only when the
  wanted open/closed state differs from what was last sent.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from bridge.alertmanager import Alert, Notification, Status
from bridge.config import TEMPLATE_PLACEHOLDER_RE, BridgeConfig
from bridge.events import Action, IncidentEvent, Link, Severity
from bridge.keys import LADDER, Subject, class_title, subject_of

_SEVERITIES = {s.value: s for s in Severity}
_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(IncidentEvent))


@dataclass(frozen=True, slots=True)
class Occurrence:
    """What the bridge last saw of one alert occurrence."""

    fingerprint: str
    starts_at: str  # normalised, sorts like time
    status: Status
    incident_key: str
    scope: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class Incident:
    """One incident key: whether it was last sent open, and the trigger to (re)send."""

    key: str
    scope: str
    event_class: str
    route: str
    open: bool
    trigger: Mapping[str, Any]  # IncidentEvent.to_json() built from its latest firing alert
    updated_at: float


@dataclass(frozen=True, slots=True)
class State:
    """The stored rows a decision needs (see :func:`lookup`)."""

    occurrences: Mapping[tuple[str, str], Occurrence] = field(default_factory=dict)
    incidents: Mapping[str, Incident] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Which rows to load: every occurrence of these fingerprints, firing ones and incidents of these scopes."""

    fingerprints: frozenset[str]
    scopes: frozenset[str]


@dataclass(slots=True)
class Decision:
    """Rows to upsert and events to queue, plus counts for the webhook's answer and metrics."""

    occurrences: list[Occurrence] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    events: list[IncidentEvent] = field(default_factory=list)
    new: int = 0
    duplicates: int = 0
    stale: int = 0


@dataclass(frozen=True, slots=True)
class Policy:
    """The config a decision depends on."""

    severity_mapping: Mapping[str, Severity] = field(default_factory=dict)
    default_severity: Severity = Severity.ERROR
    dashboard: str | None = None
    runbook: str | None = None
    ladder: tuple[str, ...] = LADDER
    service_label: str = "service"  # the label naming the affected services (integrations.statuspage)

    @classmethod
    def from_config(cls, config: BridgeConfig) -> Policy:
        pd = config.integrations.pagerduty
        statuspage = config.integrations.statuspage
        return cls(
            severity_mapping=dict(pd.severity_mapping),
            default_severity=pd.default_severity,
            dashboard=config.links.dashboard,
            runbook=config.links.runbook,
            service_label=statuspage.service_label if statuspage is not None else "service",
        )

    def severity_for(self, event_class: str, labels: Mapping[str, str]) -> Severity:
        """Class mapping, else the alert's ``severity`` label when PagerDuty knows it, else the default."""
        mapped = self.severity_mapping.get(event_class)
        if mapped is not None:
            return mapped
        return _SEVERITIES.get(labels.get("severity", "").lower(), self.default_severity)


def lookup(notification: Notification) -> Lookup:
    """The state :func:`decide` needs for ``notification``."""
    subjects = [subject_of(a.labels, a.fingerprint) for a in notification.alerts]
    return Lookup(
        fingerprints=frozenset(a.fingerprint for a in notification.alerts),
        scopes=frozenset(s.scope for s in subjects),
    )


def decide(state: State, notification: Notification, policy: Policy, *, now: float) -> Decision:
    """Apply one notification to ``state``; return the changed rows and the events to deliver."""
    occurrences = _Occurrences(state.occurrences)
    incidents = dict(state.incidents)
    decision = Decision()
    touched: set[str] = set()
    fresh: dict[str, IncidentEvent] = {}  # triggers built by this call, so they are not decoded again
    for alert in notification.alerts:
        subject = subject_of(alert.labels, alert.fingerprint)
        verdict = occurrences.classify(alert)
        if verdict != "new":
            decision.duplicates += verdict == "duplicate"
            decision.stale += verdict == "stale"
            continue
        decision.new += 1
        touched.add(subject.scope)
        occurrences.record(alert, subject, now)
        if alert.status == "firing":
            trigger = build_trigger(alert, subject, notification, policy)
            current = incidents.get(subject.key)
            if current is not None and (current.open or subject.key in fresh):
                trigger = _joined(current, trigger)
            fresh[subject.key] = trigger
            incidents[subject.key] = _with_trigger(current, trigger, subject, now)
    firing = occurrences.firing_by_scope()
    by_scope: dict[str, list[str]] = {}
    for key, incident in incidents.items():
        if incident.scope in touched:
            by_scope.setdefault(incident.scope, []).append(key)
    for scope in sorted(touched):
        _reconcile(by_scope.get(scope, []), firing.get(scope, set()), incidents, policy, decision, fresh, now)
    _join_updates(state, incidents, fresh, decision)
    decision.occurrences = [o for k, o in occurrences.rows.items() if state.occurrences.get(k) != o]
    decision.incidents = [i for k, i in incidents.items() if state.incidents.get(k) != i]
    return decision


class _Occurrences:
    """Occurrence rows indexed by fingerprint, so a large notification stays linear."""

    def __init__(self, rows: Mapping[tuple[str, str], Occurrence]) -> None:
        self.rows = dict(rows)
        self._starts: dict[str, set[str]] = {}
        for fingerprint, starts_at in rows:
            self._starts.setdefault(fingerprint, set()).add(starts_at)

    def classify(self, alert: Alert) -> str:
        """``new``, ``duplicate`` (status already seen) or ``stale`` (a firing the bridge knows is over)."""
        seen = self.rows.get((alert.fingerprint, alert.starts_at))
        if seen is not None and seen.status == alert.status:
            return "duplicate"
        if alert.status == "firing":
            if seen is not None:  # seen resolved: a stale snapshot from a slower HA peer
                return "stale"
            if any(starts > alert.starts_at for starts in self._starts.get(alert.fingerprint, ())):
                return "stale"  # a newer occurrence exists, so this one is over
        return "new"

    def record(self, alert: Alert, subject: Subject, now: float) -> None:
        """Store the transition; a later startsAt ends every earlier occurrence of the fingerprint."""
        starts = self._starts.setdefault(alert.fingerprint, set())
        for earlier in [s for s in starts if s < alert.starts_at]:
            old = self.rows[(alert.fingerprint, earlier)]
            if old.status == "firing":
                self.rows[(alert.fingerprint, earlier)] = dataclasses.replace(old, status="resolved", updated_at=now)
        starts.add(alert.starts_at)
        self.rows[(alert.fingerprint, alert.starts_at)] = Occurrence(
            alert.fingerprint, alert.starts_at, alert.status, subject.key, subject.scope, now
        )

    def firing_by_scope(self) -> dict[str, set[str]]:
        """scope -> incident keys with at least one firing occurrence."""
        result: dict[str, set[str]] = {}
        for row in self.rows.values():
            if row.status == "firing":
                result.setdefault(row.scope, set()).add(row.incident_key)
        return result


def _services(trigger: Mapping[str, Any] | IncidentEvent) -> list[str]:
    details = trigger.custom_details if isinstance(trigger, IncidentEvent) else trigger.get("custom_details", {})
    services = details.get("affected_services", []) if isinstance(details, Mapping) else []
    return [str(s) for s in services] if isinstance(services, list) else []


def _joined(current: Incident, trigger: IncidentEvent) -> IncidentEvent:
    """``trigger`` for an incident that stays open: its affected services are those of every alert so far.

    The union only grows while the incident is open (the alerts of one certificate problem are fixed
    together); it starts anew when the incident opens again.
    """
    services = list(dict.fromkeys([*_services(current.trigger), *_services(trigger)]))
    if services == _services(trigger):
        return trigger
    return dataclasses.replace(trigger, custom_details={**trigger.custom_details, "affected_services": services})


def _join_updates(
    state: State, incidents: Mapping[str, Incident], fresh: Mapping[str, IncidentEvent], decision: Decision
) -> None:
    """An alert joined an incident that was and stays open with more services or another severity: an update.

    PagerDuty takes it as a trigger on the open alert (deduplicated there, details refreshed); Statuspage
    posts an incident update. The same services and severity again produce nothing.
    """
    sent = {event.key for event in decision.events}
    for key, trigger in fresh.items():
        before, after = state.incidents.get(key), incidents.get(key)
        if before is None or after is None or not before.open or not after.open or key in sent:
            continue
        grew = set(_services(trigger)) - set(_services(before.trigger))
        if grew or trigger.severity.value != before.trigger.get("severity"):
            note = f"updated: affected services now {', '.join(_services(trigger))}" if grew else "updated: severity"
            decision.events.append(dataclasses.replace(trigger, update=True, note=note))


def _with_trigger(current: Incident | None, trigger: IncidentEvent, subject: Subject, now: float) -> Incident:
    return Incident(
        key=subject.key,
        scope=subject.scope,
        event_class=subject.event_class,
        route=subject.route,
        open=current.open if current else False,
        trigger=event_json(trigger),
        updated_at=now,
    )


def _reconcile(
    keys: list[str],
    firing: set[str],
    incidents: dict[str, Incident],
    policy: Policy,
    decision: Decision,
    fresh: Mapping[str, IncidentEvent],
    now: float,
) -> None:
    in_scope = [incidents[k] for k in keys]
    rank = {name: n for n, name in enumerate(policy.ladder)}
    laddered = [i for i in in_scope if i.key in firing and i.event_class in rank]
    live = max(laddered, key=lambda i: rank[i.event_class], default=None)
    wanted = {i.key for i in in_scope if i.key in firing and i.event_class not in rank}
    if live is not None:
        wanted.add(live.key)
    for incident in _triggers_first(in_scope, wanted):
        if (incident.key in wanted) == incident.open:
            continue
        opening = incident.key in wanted
        note = _note(incident, opening, live, incident.key in firing, in_scope, rank)
        decision.events.append(_event(incident, opening, note, fresh.get(incident.key)))
        incidents[incident.key] = Incident(
            incident.key, incident.scope, incident.event_class, incident.route, opening, incident.trigger, now
        )


def _triggers_first(in_scope: Iterable[Incident], wanted: set[str]) -> list[Incident]:
    # The higher incident opens before the lower one closes, so a responder never sees a gap.
    return sorted(in_scope, key=lambda i: (i.key not in wanted, i.key))


def _note(
    incident: Incident,
    opening: bool,
    live: Incident | None,
    still_firing: bool,
    in_scope: Iterable[Incident],
    rank: Mapping[str, int],
) -> str:
    if opening:
        mine = rank.get(incident.event_class)
        closing = [i for i in in_scope if i.open and mine is not None and rank.get(i.event_class, -1) > mine]
        return f"re-opened: {closing[0].event_class} resolved while this still fires" if closing else ""
    if still_firing and live is not None:
        return f"superseded by {live.event_class} ({live.key})"
    return "resolved in Alertmanager"


def _event(incident: Incident, opening: bool, note: str, fresh: IncidentEvent | None) -> IncidentEvent:
    if opening:
        trigger = fresh or IncidentEvent.from_json(incident.trigger)
        return dataclasses.replace(trigger, note=note) if note else trigger
    stored = incident.trigger
    return IncidentEvent(
        action=Action.RESOLVE,
        key=incident.key,
        route=incident.route,
        summary=stored.get("summary", ""),
        severity=Severity(stored.get("severity", Severity.ERROR)),
        component=stored.get("component", ""),
        group=stored.get("group", ""),
        event_class=incident.event_class,
        note=note,
    )


def event_json(event: IncidentEvent) -> dict[str, Any]:
    """``event.to_json()`` without ``dataclasses.asdict``'s deep copies (it dominated ingest profiles)."""
    data = {name: getattr(event, name) for name in _EVENT_FIELDS}
    data["links"] = [{"href": link.href, "text": link.text} for link in event.links]
    data["custom_details"] = dict(event.custom_details)
    return data


def build_trigger(alert: Alert, subject: Subject, notification: Notification, policy: Policy) -> IncidentEvent:
    """The PagerDuty-shaped trigger for one firing alert."""
    severity = policy.severity_for(subject.event_class, alert.labels)
    summary = f"{severity.value.upper()}: {class_title(subject.event_class)} - {subject.certificate}"
    if subject.environment:
        summary += f" ({subject.environment})"
    return IncidentEvent(
        action=Action.TRIGGER,
        key=subject.key,
        route=subject.route,
        summary=summary,
        severity=severity,
        component=subject.certificate,
        group=subject.environment,
        event_class=subject.event_class,
        timestamp=alert.starts_at,
        custom_details=_details(alert, subject, policy.service_label),
        links=_links(alert, policy),
        client="certpager",
        client_url=notification.external_url or None,
    )


def _details(alert: Alert, subject: Subject, service_label: str = "service") -> dict[str, Any]:
    services = list(dict.fromkeys(s.strip() for s in alert.labels.get(service_label, "").split(",") if s.strip()))
    return {
        "certificate_name": subject.certificate,
        "issuer": alert.labels.get("issuer", ""),
        "expired_date": alert.annotations.get("expires_at", ""),
        "environment": subject.environment,
        "affected_services": services,
        "description": alert.annotations.get("description", ""),
        "fingerprint": alert.fingerprint,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
    }


def render_template(template: str, labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
    """Replace ``{{ labels.X }}`` / ``{{ annotations.X }}`` with URL-quoted values (missing: empty)."""

    def value(match: re.Match[str]) -> str:
        source = labels if match.group(1) == "labels" else annotations
        return quote(source.get(match.group(2), ""), safe="")

    return TEMPLATE_PLACEHOLDER_RE.sub(value, template)


def _links(alert: Alert, policy: Policy) -> tuple[Link, ...]:
    links: list[Link] = []
    if policy.dashboard:
        links.append(Link(render_template(policy.dashboard, alert.labels, alert.annotations), "Dashboard"))
    runbook = alert.annotations.get("runbook_url") or (
        render_template(policy.runbook, alert.labels, alert.annotations) if policy.runbook else ""
    )
    if runbook:
        links.append(Link(runbook, "Runbook"))
    if alert.generator_url:
        links.append(Link(alert.generator_url, "Alert source"))
    return tuple(links)

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
- **Groups** (``grouping: type: intelligent``): the per-certificate events of the correlated classes are
  not sent as they are; each opening member joins the open group of its *slot* (route + the values of
  ``grouping.fields``) whose first alert arrived at most ``time_window`` before it, or starts a new group
  with a new key. The group is ONE incident: it opens with its first member, is re-triggered (an update)
  when a member joins or leaves, and resolves when its last member resolves. The ladder runs first, per
  certificate, so a group never holds a certificate at two rungs. Group rows are stored state, read and
  written in the same transaction as the rest: whichever replica decides, the result is the same.
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
from bridge.keys import LADDER, Subject, class_title, group_key, subject_of

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
    group: str = ""  # key of the group this incident is a member of ("" when it is not)


@dataclass(frozen=True, slots=True)
class Group:
    """One group of correlated incidents, sent as ONE incident under its own key."""

    key: str
    slot: str  # route + the values of grouping.fields: which alerts may join
    route: str
    opened_at: float  # when its first member arrived: the window is measured from here
    open: bool
    values: Mapping[str, str]  # grouping.fields -> the members' common value
    members: Mapping[str, Mapping[str, Any]]  # member incident key -> what the group's incident shows of it
    updated_at: float
    version: int = 0  # bumped on every write; a write guarded by it refuses a concurrent change


@dataclass(frozen=True, slots=True)
class State:
    """The stored rows a decision needs (see :func:`lookup`)."""

    occurrences: Mapping[tuple[str, str], Occurrence] = field(default_factory=dict)
    incidents: Mapping[str, Incident] = field(default_factory=dict)
    groups: Mapping[str, Group] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lookup:
    """Which rows to load: every occurrence of these fingerprints, firing ones and incidents of these scopes,
    the open groups of these slots and the groups the loaded incidents are members of."""

    fingerprints: frozenset[str]
    scopes: frozenset[str]
    slots: frozenset[str] = frozenset()


@dataclass(slots=True)
class Decision:
    """Rows to upsert and events to queue, plus counts for the webhook's answer and metrics."""

    occurrences: list[Occurrence] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    events: list[IncidentEvent] = field(default_factory=list)
    new: int = 0
    duplicates: int = 0
    stale: int = 0
    verdicts: list[str] = field(default_factory=list)  # per alert, in order: new, duplicate or stale


@dataclass(frozen=True, slots=True)
class Policy:
    """The config a decision depends on."""

    severity_mapping: Mapping[str, Severity] = field(default_factory=dict)
    default_severity: Severity = Severity.ERROR
    dashboard: str | None = None
    runbook: str | None = None
    ladder: tuple[str, ...] = LADDER
    service_label: str = "service"  # the label naming the affected services (integrations.statuspage)
    correlation: frozenset[str] = frozenset()  # classes that are grouped (empty: grouping off)
    group_fields: tuple[str, ...] = ("environment", "issuer")
    group_window: float = 300.0  # seconds after a group's first alert during which others may join
    # class -> (actions run when its incident or group opens, actions run when it resolves)
    automation: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: BridgeConfig) -> Policy:
        pd = config.integrations.pagerduty
        statuspage = config.integrations.statuspage
        grouping = config.grouping
        return cls(
            severity_mapping=dict(pd.severity_mapping),
            default_severity=pd.default_severity,
            dashboard=config.links.dashboard,
            runbook=config.links.runbook,
            service_label=statuspage.service_label if statuspage is not None else "service",
            correlation=frozenset(grouping.correlation) if grouping.type == "intelligent" else frozenset(),
            group_fields=tuple(grouping.fields),
            group_window=float(grouping.time_window),
            automation={
                event_class: (tuple(a.actions), tuple(a.on_resolve)) for event_class, a in config.automation.items()
            },
        )

    def slot_of(self, labels: Mapping[str, str], route: str) -> tuple[str, dict[str, str]]:
        """The group slot of an alert (route + its ``group_fields`` values) and those values."""
        values = {name: labels.get(name, "") for name in self.group_fields}
        return "\x1f".join([route, *(f"{k}={v}" for k, v in values.items())]), values

    def severity_for(self, event_class: str, labels: Mapping[str, str]) -> Severity:
        """Class mapping, else the alert's ``severity`` label when PagerDuty knows it, else the default."""
        mapped = self.severity_mapping.get(event_class)
        if mapped is not None:
            return mapped
        return _SEVERITIES.get(labels.get("severity", "").lower(), self.default_severity)


@dataclass(frozen=True, slots=True)
class ActionRun:
    """One runbook action to run for one incident event (queued to the ``actions`` sink)."""

    action: str  # a name of the config's ``actions:``
    phase: str  # "open" | "resolve"
    event: IncidentEvent

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "phase": self.phase, "event": event_json(self.event)}


def action_runs(events: Iterable[IncidentEvent], policy: Policy) -> list[ActionRun]:
    """The runbook actions ``events`` start, in the configured order: an incident (or group) that opens runs
    its class's ``actions``, one that resolves its ``on_resolve``; updates run nothing."""
    runs: list[ActionRun] = []
    for event in events:
        on_open, on_resolve = policy.automation.get(event.event_class, ((), ()))
        if event.action == Action.TRIGGER and not event.update:
            runs.extend(ActionRun(name, "open", event) for name in on_open)
        elif event.action == Action.RESOLVE:
            runs.extend(ActionRun(name, "resolve", event) for name in on_resolve)
    return runs


def lookup(notification: Notification, policy: Policy | None = None) -> Lookup:
    """The state :func:`decide` needs for ``notification``."""
    subjects = [subject_of(a.labels, a.fingerprint) for a in notification.alerts]
    slots: frozenset[str] = frozenset()
    if policy is not None and policy.correlation:
        slots = frozenset(
            policy.slot_of(a.labels, s.route)[0] for a, s in zip(notification.alerts, subjects, strict=True)
        )
    return Lookup(
        fingerprints=frozenset(a.fingerprint for a in notification.alerts),
        scopes=frozenset(s.scope for s in subjects),
        slots=slots,
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
        decision.verdicts.append(verdict)
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
    if policy.correlation:
        _group(state, incidents, policy, decision, now)
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
        group=current.group if current else "",
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
        incidents[incident.key] = dataclasses.replace(incident, open=opening, updated_at=now)


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


# --- groups ------------------------------------------------------------------------------------------

MEMBERS_SHOWN = 20  # members a group's custom_details lists; the others are counted
_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2, Severity.CRITICAL: 3}


def _group(
    state: State, incidents: dict[str, Incident], policy: Policy, decision: Decision, now: float
) -> None:
    """Turn the per-certificate events of correlated classes into events of their groups (module docstring)."""
    groups = dict(state.groups)
    placed: dict[int, str] = {}  # index of a member event -> the group whose event takes its place
    for index, event in enumerate(decision.events):
        if event.event_class not in policy.correlation:
            continue
        incident = incidents[event.key]
        current = groups.get(incident.group)
        member_of = current if current is not None and event.key in current.members else None
        if event.action == Action.RESOLVE or (event.update and member_of is None):
            if member_of is None:  # opened before grouping was configured: it goes on as it was opened
                continue
            if event.action == Action.RESOLVE:
                groups[member_of.key] = _without(member_of, event.key, now)
                incidents[event.key] = dataclasses.replace(incident, group="")
                placed[index] = member_of.key
                continue
        labels = event.custom_details.get("labels", {})
        if member_of is None:
            member_of = _group_for(groups, policy, labels if isinstance(labels, Mapping) else {}, event.route, now)
        groups[member_of.key] = _with_member(member_of, event, now)
        incidents[event.key] = dataclasses.replace(incidents[event.key], group=member_of.key)
        placed[index] = member_of.key
    sent = _settle_groups(state, groups, placed.values(), now)
    events: list[IncidentEvent] = []
    done: set[str] = set()
    for index, event in enumerate(decision.events):
        key = placed.get(index)
        if key is None:
            events.append(event)
        elif key not in done:
            done.add(key)
            if sent.get(key) is not None:
                events.append(sent[key])  # type: ignore[arg-type]
    decision.events = events
    decision.groups = [g for k, g in groups.items() if state.groups.get(k) != g]


def _group_for(
    groups: dict[str, Group], policy: Policy, labels: Mapping[str, str], route: str, now: float
) -> Group:
    """The open group of the alert's slot whose window still runs (the newest one), else a new group."""
    slot, values = policy.slot_of(labels, route)
    joinable = [
        g for g in groups.values()
        if g.slot == slot and g.open and g.members and now - g.opened_at <= policy.group_window
    ]
    if joinable:
        return max(joinable, key=lambda g: (g.opened_at, g.key))
    key = group_key(route, values, now)
    return Group(key, slot, route, now, True, values, {}, now)


def _member(event: IncidentEvent, now: float) -> dict[str, Any]:
    return {
        "incident_key": event.key,
        "certificate": event.component,
        "class": event.event_class,
        "severity": event.severity.value,
        "environment": event.group,
        "services": _services(event),
        "timestamp": event.timestamp,
        "joined_at": now,
        "links": [{"href": link.href, "text": link.text} for link in event.links],
    }


def _with_member(group: Group, event: IncidentEvent, now: float) -> Group:
    members = dict(group.members)
    before = members.get(event.key)
    member = _member(event, now)
    if before is not None:
        member["joined_at"] = before.get("joined_at", now)
    members[event.key] = member
    return dataclasses.replace(group, members=members, updated_at=now)


def _without(group: Group, key: str, now: float) -> Group:
    return dataclasses.replace(group, members={k: m for k, m in group.members.items() if k != key}, updated_at=now)


def _settle_groups(
    state: State, groups: dict[str, Group], touched: Iterable[str], now: float
) -> dict[str, IncidentEvent | None]:
    """Open, update or close each touched group; the event each sends (None: nothing changed)."""
    sent: dict[str, IncidentEvent | None] = {}
    for key in dict.fromkeys(touched):
        group, before = groups[key], state.groups.get(key)
        was_open = before is not None and before.open
        version = before.version + 1 if before is not None else 1
        if not group.members:
            groups[key] = dataclasses.replace(group, open=False, version=version, updated_at=now)
            sent[key] = _group_resolve(groups[key], before) if was_open and before is not None else None
            continue
        groups[key] = group = dataclasses.replace(group, open=True, version=version)
        if was_open and before is not None and _shown(before) == _shown(group):
            sent[key] = None
        elif was_open and before is not None:
            sent[key] = dataclasses.replace(group_trigger(group), update=True, note=_change_note(before, group))
        else:
            sent[key] = group_trigger(group)
    return sent


def _shown(group: Group) -> tuple[Any, ...]:
    """What the group's incident shows of its members: an update is sent only when this changes."""
    return tuple(sorted((k, m.get("severity"), tuple(m.get("services", ()))) for k, m in group.members.items()))


def _change_note(before: Group, after: Group) -> str:
    joined = [m["certificate"] for k, m in after.members.items() if k not in before.members]
    left = [m["certificate"] for k, m in before.members.items() if k not in after.members]
    parts = []
    if joined:
        parts.append(f"joined: {', '.join(joined[:MEMBERS_SHOWN])}")
    if left:
        parts.append(f"resolved: {', '.join(left[:MEMBERS_SHOWN])}")
    return "updated: " + ("; ".join(parts) if parts else "member details")


def group_summary(group: Group) -> str:
    """``12 certificates: renewal failed — issuer Let's Encrypt, production``."""
    members = list(group.members.values())
    count = len({(m.get("certificate"), m.get("environment")) for m in members})
    classes = dict.fromkeys(_class_words(str(m.get("class", ""))) for m in members)
    where = [v if name == "environment" else f"{name} {v}" for name, v in group.values.items() if v]
    text = f"{count} certificate{'s' if count != 1 else ''}: {', '.join(classes)}"
    return f"{text} — {', '.join(where)}" if where else text


def _class_words(event_class: str) -> str:
    title = class_title(event_class)
    return (title[len("Certificate "):] if title.startswith("Certificate ") else title).lower()


def group_trigger(group: Group) -> IncidentEvent:
    members = list(group.members.values())
    severity = max((_SEVERITIES.get(str(m.get("severity")), Severity.ERROR) for m in members),
                   key=_SEVERITY_RANK.__getitem__)
    certificates = list(dict.fromkeys(str(m.get("certificate", "")) for m in members))
    services = list(dict.fromkeys(str(s) for m in members for s in m.get("services", ())))
    stamps = sorted(str(m["timestamp"]) for m in members if m.get("timestamp"))
    links: list[Mapping[str, Any]] = next((m["links"] for m in members if m.get("links")), [])
    details: dict[str, Any] = {
        "group_key": group.key,
        "certificates": len(certificates),
        "grouped_by": dict(group.values),
        "issuer": group.values.get("issuer", ""),
        "environment": group.values.get("environment", str(members[0].get("environment", ""))),
        "classes": list(dict.fromkeys(str(m.get("class", "")) for m in members)),
        "affected_services": services,
        "members": [
            {"certificate": m.get("certificate"), "class": m.get("class"), "severity": m.get("severity"),
             "incident_key": m.get("incident_key")}
            for m in members[:MEMBERS_SHOWN]
        ],
        "members_not_shown": max(len(members) - MEMBERS_SHOWN, 0),
    }
    return IncidentEvent(
        action=Action.TRIGGER,
        key=group.key,
        route=group.route,
        summary=group_summary(group),
        severity=severity,
        component=certificates[0] if len(certificates) == 1 else f"{len(certificates)} certificates",
        group=str(members[0].get("environment", "")),
        event_class=str(members[0].get("class", "")),
        timestamp=stamps[0] if stamps else None,
        custom_details=details,
        links=tuple(Link(str(link.get("href", "")), str(link.get("text", ""))) for link in links),
    )


def _group_resolve(group: Group, before: Group) -> IncidentEvent:
    last = group_trigger(before)
    return IncidentEvent(
        action=Action.RESOLVE,
        key=group.key,
        route=group.route,
        summary=last.summary,
        severity=last.severity,
        component=last.component,
        group=last.group,
        event_class=last.event_class,
        note="resolved: its last member resolved",
    )

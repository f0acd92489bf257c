"""Pure ack-sync decisions: (stored state, one input) -> (state changes, audit entries, outbox rows).

Like :mod:`bridge.decisions` there is no I/O and no clock here: a store runs these inside the transaction
that records their result, so a crash leaves either all of it or none. Three inputs:

- a **PagerDuty Webhooks v3 event**, already mapped to the bridge's incident keys
  (:func:`on_pagerduty_event`): acknowledged -> a silence; unacknowledged -> silence expired; resolved by a
  person while firing -> the incident closed until a new occurrence, silence expired; escalated -> the
  PagerDuty priority raised (REST) and Statuspage one status worse; priority_updated above the priority last
  known -> Statuspage one status worse, no REST raise. An event older than the last one applied
  to the incident (``occurred_at``) is out of order and changes nothing.
- an **Alertmanager snapshot** (:func:`on_poll`): a person's silence over a firing alert -> PagerDuty
  acknowledge; that silence gone while the alert fires -> trigger again on the same dedup key; a suppressed
  alert gone from Alertmanager for ``vanished_after`` -> resolve (Alertmanager sends no resolved
  notification for silenced or inhibited alerts). The bridge's own silences are never a person's.
- a **snooze** (:func:`on_snooze`): PagerDuty REST snooze and a silence until then.

A **group** (``certgroup-`` key, :mod:`bridge.decisions`) is one PagerDuty incident made of its members'
alerts (:meth:`SyncState.group_view`): its silences are one per firing member, all under the group's key;
the poller acknowledges it only when people's silences cover every firing member; a person's resolve or
its vanished alerts close every member and the group. A member's own key is never paged by ack sync.

Sinks: ``alertmanager`` (silence writes), ``pagerduty`` (Events v2, via :class:`IncidentEvent`),
``pagerduty_rest`` (priority, snooze). Each has its own outbox order, retries and dead letters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bridge.audit import AuditEntry
from bridge.decisions import Group, group_trigger
from bridge.events import Action, IncidentEvent, Severity
from bridge.keys import CERTIFICATE_LABELS, CLASS_LABELS
from bridge.pagerduty_webhook import WebhookEvent, agent_of

CREATED_BY = "certpager"
ACK_PREFIX = "ACK!"
SILENCE_SINK = "alertmanager"
EVENTS_SINK = "pagerduty"
REST_SINK = "pagerduty_rest"
STATUSPAGE_SINK = "statuspage"
SEVERITY_ORDER = (Severity.INFO, Severity.WARNING, Severity.ERROR, Severity.CRITICAL)


@dataclass(frozen=True, slots=True)
class Ack:
    """The ack-sync state of one incident key (one row of ``ack_state``)."""

    key: str
    status: str = "triggered"  # triggered | acknowledged | resolved (as last known from either side)
    side: str = ""  # who set it: pagerduty | alertmanager | api | bridge
    actor: str = ""
    pd_incident_id: str = ""
    html_url: str = ""
    priority: str = ""  # name of the PagerDuty priority last known
    priority_id: str = ""  # its id
    raise_pending: bool = False  # the bridge queued a one-step raise (escalation): the next raise is its own
    silenced: bool = False  # the bridge holds (or has queued) a silence for this key
    last_event_at: str = ""  # occurred_at of the last PagerDuty event applied
    suppressed: bool = False  # the last poll saw its alerts suppressed (silenced or inhibited)
    vanished_since: float | None = None  # first poll that no longer saw any of its alerts
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class IncidentView:
    """What ack sync needs of one bridge incident."""

    key: str
    route: str
    open: bool
    trigger: Mapping[str, Any]
    firing: tuple[str, ...] = ()  # fingerprints of its firing occurrences
    group: str = ""  # the group key when grouping made it a member of one PagerDuty incident


@dataclass(frozen=True, slots=True)
class SyncState:
    incidents: Mapping[str, IncidentView] = field(default_factory=dict)
    acks: Mapping[str, Ack] = field(default_factory=dict)
    own_silences: frozenset[str] = frozenset()  # every silence id the bridge created
    groups: Mapping[str, Group] = field(default_factory=dict)  # the groups of these incidents, or these keys

    def group_view(self, group: Group) -> tuple[IncidentView, list[IncidentView]]:
        """The group's PagerDuty incident seen as one incident (its trigger, every member's firing alerts),
        and its member incidents that are open and firing."""
        members = [self.incidents[k] for k in sorted(group.members) if k in self.incidents]
        firing = [m for m in members if m.open and m.firing]
        trigger = group_trigger(group).to_json() if group.members else {}
        view = IncidentView(group.key, group.route, group.open, trigger,
                            tuple(fp for m in firing for fp in m.firing), group.key)
        return view, firing


@dataclass(frozen=True, slots=True)
class OutboxRow:
    sink: str
    ordering_key: str
    payload: Mapping[str, Any]


@dataclass(slots=True)
class Changes:
    acks: list[Ack] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    close: list[str] = field(default_factory=list)  # keys: firing occurrences resolved, incident closed
    groups: list[Group] = field(default_factory=list)  # groups closed (their members' ``grp`` cleared)
    outbox: list[OutboxRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Settings:
    silence_max: float  # seconds
    rest: bool  # a PagerDuty REST API token is configured
    link: str = ""  # fallback link in a silence comment
    statuspage_min: Severity | None = None  # Statuspage is configured: its min_severity


@dataclass(frozen=True, slots=True)
class AlertView:
    """One alert as Alertmanager's ``GET /api/v2/alerts`` shows it."""

    fingerprint: str
    state: str  # active | suppressed | unprocessed
    silenced_by: tuple[str, ...] = ()
    inhibited_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SilenceView:
    id: str
    created_by: str
    comment: str
    state: str  # active | pending | expired


@dataclass(frozen=True, slots=True)
class Snapshot:
    alerts: Mapping[str, AlertView]
    silences: Mapping[str, SilenceView]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- silences --------------------------------------------------------------------------------------------


def matchers_for(incident: IncidentView) -> list[dict[str, Any]]:
    """Equality matchers on the labels that make the incident key, so the silence covers exactly its alerts.

    The key comes from the first present of each fallback list (class/alertname, certificate/subject_cn/...):
    the label used is matched on its value and the ones before it must be absent (``name=""``), else an
    alert of another incident that shares, say, its ``subject_cn`` would be silenced too. An alert without
    a certificate-like label is its own subject: all its labels are matched.
    """
    details = incident.trigger.get("custom_details") or {}
    labels: Mapping[str, str] = details.get("labels") or {}
    if not any(labels.get(name) for name in CERTIFICATE_LABELS):
        return [_eq(name, value) for name, value in sorted(labels.items())]
    out: list[dict[str, Any]] = []
    for names in (CLASS_LABELS, CERTIFICATE_LABELS):
        for name in names:
            out.append(_eq(name, labels.get(name, "")))
            if labels.get(name):
                break
    out.append(_eq("environment", labels.get("environment", "")))
    return out


def _eq(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value, "isRegex": False, "isEqual": True}


def _silence(
    key: str, subjects: Iterable[IncidentView], ack: Ack, *, now: float, until: float, comment: str, out: Changes
) -> Ack:
    """The silences of ``key``: one per subject (an incident is its own subject; a group's are its firing
    members). Alertmanager ANDs the matchers of one silence and has no OR across label sets, so a silence per
    member is the only way each matches just that member's alerts. All are recorded under ``key``, and one
    expire of ``key`` ends them all."""
    if ack.silenced:  # one bridge silence set per incident: the new one replaces it
        out.outbox.append(OutboxRow(SILENCE_SINK, key, {"op": "expire", "key": key}))
    for subject in subjects:
        out.outbox.append(OutboxRow(SILENCE_SINK, key, {
            "op": "create", "key": key, "matchers": matchers_for(subject), "startsAt": iso(now),
            "endsAt": iso(until), "createdBy": CREATED_BY, "comment": comment,
        }))
    return dataclasses.replace(ack, silenced=True)


def _unsilence(ack: Ack, out: Changes) -> Ack:
    if ack.silenced:
        out.outbox.append(OutboxRow(SILENCE_SINK, ack.key, {"op": "expire", "key": ack.key}))
    return dataclasses.replace(ack, silenced=False)


# --- PagerDuty -> Alertmanager -------------------------------------------------------------------------


def one_step_up(priorities: Sequence[str], current: str) -> str | None:
    """The priority one step more severe than ``current`` in ``priorities`` (ids, most severe first, as
    ``GET /priorities`` lists them); none yet is one step below the least severe. None: already the top."""
    index = priorities.index(current) if current in priorities else len(priorities)
    return priorities[index - 1] if index > 0 else None


def on_pagerduty_event(
    state: SyncState, event: WebhookEvent, keys: Iterable[str], settings: Settings, *, now: float,
    ack_timeout: float | None = None, priorities: Sequence[str] = (),
) -> Changes:
    """Apply one PagerDuty incident event to each bridge incident it maps to (see module docstring).

    ``priorities``: the account's priority ids, most severe first (read for ``incident.priority_updated``
    when a REST API token is configured), to tell a raise from a lowering."""
    out = Changes()
    actor, person = agent_of(event.raw)
    data = event.raw.get("data") if isinstance(event.raw.get("data"), dict) else {}
    assert isinstance(data, dict)
    html_url = str(data.get("html_url") or "")
    for key in keys:
        incident = state.incidents.get(key)
        ack = state.acks.get(key) or Ack(key)
        if ack.last_event_at and event.occurred_at and event.occurred_at < ack.last_event_at:
            out.audit.append(AuditEntry(now, key, "pagerduty", actor, event.event_type,
                                        f"out of order (occurred {event.occurred_at}, last applied "
                                        f"{ack.last_event_at}): ignored"))
            continue
        ack = dataclasses.replace(
            ack, pd_incident_id=event.incident_id or ack.pd_incident_id, html_url=html_url or ack.html_url,
            last_event_at=event.occurred_at or ack.last_event_at, updated_at=now,
        )
        group = state.groups.get(key) if incident is None else None
        if group is not None:  # a group's incident: its silences cover its firing members
            view, members = state.group_view(group)
            ack = _apply(event, view, members, ack, actor, person, data, settings, now, ack_timeout, priorities, out)
            if key in out.close:
                out.close.remove(key)
                out.close.extend(m.key for m in members)
                out.groups.append(closed_group(group, now))
            out.acks.append(ack)
            continue
        if incident is None:
            out.audit.append(AuditEntry(now, key, "pagerduty", actor, event.event_type, "not a certpager incident"))
            continue
        ack = _apply(
            event, incident, [incident], ack, actor, person, data, settings, now, ack_timeout, priorities, out
        )
        out.acks.append(ack)
    return out


def closed_group(group: Group, now: float) -> Group:
    """The group closed with every member out of it: a member's next occurrence opens or joins a new group
    (a new PagerDuty incident), never the resolved one."""
    return dataclasses.replace(group, open=False, members={}, updated_at=now, version=group.version + 1)


def _apply(
    event: WebhookEvent, incident: IncidentView, subjects: Sequence[IncidentView], ack: Ack, actor: str,
    person: bool, data: Mapping[str, Any], settings: Settings, now: float, ack_timeout: float | None,
    priorities: Sequence[str], out: Changes,
) -> Ack:
    kind, key = event.event_type, incident.key

    def audit(detail: str) -> None:
        out.audit.append(AuditEntry(now, key, "pagerduty", actor, kind, detail))

    if kind == "incident.acknowledged":
        if ack.status == "acknowledged" and ack.side in ("alertmanager", "api"):
            audit(f"already acknowledged from {ack.side} by {ack.actor}: no silence of ours")
            return dataclasses.replace(ack, status="acknowledged")
        if not incident.open or not incident.firing:
            audit("the alert no longer fires: no silence")
            return dataclasses.replace(ack, status="acknowledged", side="pagerduty", actor=actor)
        limit = settings.silence_max if ack_timeout is None else min(ack_timeout, settings.silence_max)
        link = ack.html_url or settings.link
        comment = f"{ACK_PREFIX} acknowledged in PagerDuty by {actor}" + (f": {link}" if link else "")
        ack = _silence(key, subjects, ack, now=now, until=now + limit, comment=comment, out=out)
        audit(f"silence until {iso(now + limit)}" if len(subjects) == 1 and subjects[0] is incident else
              f"{len(subjects)} silences (one per firing member) until {iso(now + limit)}")
        return dataclasses.replace(ack, status="acknowledged", side="pagerduty", actor=actor)
    if kind == "incident.unacknowledged":
        audit("silence expired" if ack.silenced else "no silence to expire")
        return dataclasses.replace(_unsilence(ack, out), status="triggered", side="pagerduty", actor=actor)
    if kind == "incident.resolved":
        ack = dataclasses.replace(_unsilence(ack, out), status="resolved", side="pagerduty", actor=actor)
        if person and incident.open and incident.firing:
            out.close.append(key)
            audit("resolved by a person while firing: closed until a new occurrence")
        else:
            audit("resolved")
        return ack
    if kind in ("incident.triggered", "incident.reopened"):
        audit("recorded")
        return dataclasses.replace(ack, status="triggered", side="pagerduty", actor=actor)
    priority = data.get("priority") if isinstance(data.get("priority"), dict) else None
    priority_id = str(priority.get("id", "")) if priority else ""
    name = str(priority.get("summary", "")) if priority else ""
    if kind == "incident.escalated":
        raising = settings.rest and bool(ack.pd_incident_id)
        if raising:
            out.outbox.append(OutboxRow(REST_SINK, key, {
                "op": "raise_priority", "key": key, "incident_id": ack.pd_incident_id, "priority_id": priority_id,
            }))
            audit("priority to be raised one step (PagerDuty REST)")
        else:
            audit("no REST API token: priority left as it is")
        _statuspage_worse(incident, settings, out, audit)
        return dataclasses.replace(ack, priority=name, priority_id=priority_id, raise_pending=raising)
    if kind == "incident.priority_updated":
        return _priority_updated(incident, ack, priority_id, name, priorities, settings, out, audit)
    audit("recorded")
    return ack


def _priority_updated(
    incident: IncidentView, ack: Ack, priority_id: str, name: str, priorities: Sequence[str], settings: Settings,
    out: Changes, audit: Callable[[str], None],
) -> Ack:
    """A priority set in PagerDuty. Raised above the one last known: Statuspage one status worse, as an
    escalation does, but no REST raise (a person just chose this priority). The bridge's own raise (after
    an escalation that already made Statuspage worse) and a lowering are recorded only."""
    after = dataclasses.replace(ack, priority=name, priority_id=priority_id, raise_pending=False)
    known = ack.priority_id in priorities and priority_id in priorities
    if ack.raise_pending and priority_id and priority_id == one_step_up(priorities, ack.priority_id):
        audit(f"priority {name}: the bridge's own raise after the escalation")
    elif known and priorities.index(priority_id) < priorities.index(ack.priority_id):
        audit(f"priority {name}, raised from {ack.priority or ack.priority_id}")
        _statuspage_worse(incident, settings, out, audit, note="priority raised in PagerDuty")
    else:
        audit(f"priority {name or 'none'}")
    return after


def _statuspage_worse(
    incident: IncidentView, settings: Settings, out: Changes, audit: Callable[[str], None],
    note: str = "escalated in PagerDuty",
) -> None:
    """Re-send the incident's trigger to Statuspage one severity worse: its components one status worse.

    Only an incident already on the page (at or above Statuspage's ``min_severity``): an escalation in
    PagerDuty must not open a customer-facing incident by itself.
    """
    if settings.statuspage_min is None or not incident.open:
        return
    severity = Severity(incident.trigger.get("severity", Severity.ERROR))
    rank = SEVERITY_ORDER.index(severity)
    if rank < SEVERITY_ORDER.index(settings.statuspage_min) or rank == len(SEVERITY_ORDER) - 1:
        return
    worse = SEVERITY_ORDER[rank + 1]
    out.outbox.append(OutboxRow(STATUSPAGE_SINK, incident.key, {
        **incident.trigger, "severity": worse.value, "note": note,
    }))
    audit(f"Statuspage components one status worse (as {worse.value})")


def on_snooze(
    state: SyncState, key: str, *, duration: float, actor: str, now: float, settings: Settings
) -> Changes | str:
    """A snooze asked for through the bridge's API; a string says why it cannot be done.

    A group's key snoozes the group's PagerDuty incident and silences each firing member; so does the key of
    one of its members, as that member is paged only through its group (PagerDuty snoozes whole incidents).
    """
    incident = state.incidents.get(key)
    group = state.groups.get(incident.group if incident is not None and incident.group else key)
    if group is not None:
        key = group.key
        _, subjects = state.group_view(group)
        if not group.open or not subjects:
            return f"group {key!r} is not firing"
    elif incident is None:
        return f"no incident {key!r}"
    elif not incident.open or not incident.firing:
        return f"incident {key!r} is not firing"
    else:
        subjects = [incident]
    out = Changes()
    ack = state.acks.get(key) or Ack(key)
    out.outbox.append(OutboxRow(REST_SINK, key, {
        "op": "snooze", "key": key, "incident_id": ack.pd_incident_id, "duration": int(duration),
    }))
    comment = f"{ACK_PREFIX} snoozed by {actor} for {int(duration)}s via certpager"
    if ack.html_url:
        comment += f": {ack.html_url}"
    ack = _silence(key, subjects, ack, now=now, until=now + duration, comment=comment, out=out)
    out.acks.append(dataclasses.replace(ack, status="acknowledged", side="api", actor=actor, updated_at=now))
    out.audit.append(AuditEntry(now, key, "api", actor, "snooze", f"until {iso(now + duration)}"))
    return out


# --- Alertmanager -> PagerDuty -------------------------------------------------------------------------


def on_poll(state: SyncState, snapshot: Snapshot, *, now: float, vanished_after: float) -> Changes:
    """Compare open incidents and groups with what Alertmanager shows now (see module docstring).

    A member of a group is paged under the group's key, so it is judged with its group, never alone (acting
    on its own key would open a second PagerDuty incident for an alert already paged).
    """
    out = Changes()
    for key in sorted(state.incidents):
        incident = state.incidents[key]
        if not incident.open or not incident.firing or incident.group:
            continue
        present = [snapshot.alerts[fp] for fp in incident.firing if fp in snapshot.alerts]
        _poll_one(state, snapshot, incident, [present], now, vanished_after, out)
    for key in sorted(state.groups):
        group = state.groups[key]
        view, members = state.group_view(group)
        if not group.open or not members:
            continue
        per_member = [[snapshot.alerts[fp] for fp in m.firing if fp in snapshot.alerts] for m in members]
        if _poll_one(state, snapshot, view, per_member, now, vanished_after, out):
            out.close.remove(key)
            out.close.extend(m.key for m in members)
            out.groups.append(closed_group(group, now))
    return out


def _person_silences(state: SyncState, snapshot: Snapshot, present: Iterable[AlertView]) -> list[SilenceView]:
    found: dict[str, SilenceView] = {}
    for alert in present:
        for sid in alert.silenced_by:
            silence = snapshot.silences.get(sid)
            # Ours by id (recorded when created) and by createdBy: never taken for a person's.
            if sid in state.own_silences or silence is None or silence.created_by == CREATED_BY:
                continue
            found[sid] = silence
    return [found[s] for s in sorted(found)]


def _poll_one(
    state: SyncState, snapshot: Snapshot, incident: IncidentView, per_subject: list[list[AlertView]],
    now: float, vanished_after: float, out: Changes,
) -> bool:
    """Judge one incident (a group: one list of present alerts per firing member); True when it is closed."""
    before = state.acks.get(incident.key) or Ack(incident.key)
    ack = _poll_ack(state, snapshot, incident, before, per_subject, now, vanished_after, out)
    if ack != before:
        out.acks.append(dataclasses.replace(ack, updated_at=now))
    return incident.key in out.close


def _poll_ack(
    state: SyncState, snapshot: Snapshot, incident: IncidentView, ack: Ack, per_subject: list[list[AlertView]],
    now: float, vanished_after: float, out: Changes,
) -> Ack:
    key = incident.key
    present = [a for alerts in per_subject for a in alerts]
    if not present:
        if not ack.suppressed:
            return ack  # it was not suppressed: its resolved notification comes from Alertmanager
        since = ack.vanished_since if ack.vanished_since is not None else now
        if now - since < vanished_after:
            return dataclasses.replace(ack, vanished_since=since)
        out.close.append(key)
        out.outbox.append(OutboxRow(EVENTS_SINK, key, _resolve_event(incident, "gone from Alertmanager")))
        out.audit.append(AuditEntry(now, key, "alertmanager", "poller", "resolve",
                                    "suppressed alerts gone from Alertmanager without a resolved notification"))
        return dataclasses.replace(_unsilence(ack, out), status="resolved", side="alertmanager", actor="poller",
                                   suppressed=False, vanished_since=None)
    ack = dataclasses.replace(ack, suppressed=any(a.state == "suppressed" for a in present), vanished_since=None)
    people = _person_silences(state, snapshot, present)
    # A group is acknowledged only when people's silences cover every firing member seen in Alertmanager:
    # one member silenced is that member's business, not an acknowledgement of the whole group.
    covered = bool(people) and all(_person_silences(state, snapshot, alerts) for alerts in per_subject if alerts)
    if covered and ack.status != "acknowledged":
        who = people[0].created_by or "unknown"
        out.outbox.append(OutboxRow(EVENTS_SINK, key, _ack_event(incident)))
        out.audit.append(AuditEntry(now, key, "alertmanager", who, "acknowledge",
                                    f"silence {people[0].id}: {people[0].comment}"
                                    + (f" (+{len(people) - 1} more)" if len(people) > 1 else "")))
        return dataclasses.replace(ack, status="acknowledged", side="alertmanager", actor=who)
    if not covered and ack.status == "acknowledged" and ack.side == "alertmanager" and any(
        a.state == "active" for a in present
    ):
        out.outbox.append(OutboxRow(EVENTS_SINK, key, dict(incident.trigger)))
        out.audit.append(AuditEntry(now, key, "alertmanager", ack.actor, "trigger",
                                    "the silence ended while the alert fires"))
        return dataclasses.replace(ack, status="triggered", side="alertmanager")
    return ack


def _ack_event(incident: IncidentView) -> dict[str, Any]:
    return IncidentEvent(Action.ACKNOWLEDGE, incident.key, incident.route,
                         note="silenced in Alertmanager").to_json()


def _resolve_event(incident: IncidentView, note: str) -> dict[str, Any]:
    trigger = incident.trigger
    return IncidentEvent(
        Action.RESOLVE, incident.key, incident.route, summary=str(trigger.get("summary", "")),
        severity=Severity(trigger.get("severity", Severity.ERROR)), event_class=str(trigger.get("event_class", "")),
        note=note,
    ).to_json()

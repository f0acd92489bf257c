"""The audit trail: every decision the bridge made about an incident, in order, as stored lines.

One table (``audit``) for every writer: the ingest script (webhook received, duplicate, stale snapshot,
event queued), the outbox worker (each delivery attempt and its answer, rate-limit holds, dead letters)
and acknowledgement sync (ack, resolve, snooze, from which side and by whom). A line is
:class:`AuditEntry`; ``certpager history`` prints them in words, ``certpager report`` computes MTTA,
MTTR and the on-call burden from them (docs/analytics.md lists the actions).

The subject columns (certificate, environment, class, issuer) are filled where the writer knows them, so
a certificate's history finds every incident key it ever had; lines written with the key alone (ack sync)
join the history through that key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.alertmanager import Alert, Notification
from bridge.decisions import Decision, Group, State
from bridge.events import IncidentEvent
from bridge.keys import subject_of
from bridge.sinks.base import OutboxItem

# Actions (the ``action`` column). Sides: alertmanager, bridge, a sink's name, pagerduty, api.
RECEIVED, DUPLICATE, STALE = "received", "duplicate", "stale"
TRIGGER, RESOLVE, UPDATE = "trigger", "resolve", "update"  # queued by the bridge (side "bridge")
DELIVERED, RETRY, HELD, DEAD_LETTER = "delivered", "retry", "held", "dead_letter"
ACKNOWLEDGE = "acknowledge"
# Grouping (issue 19): one line per member certificate (side "bridge"), keyed by the member's incident key.
GROUP_OPENED, GROUP_JOINED, GROUP_LEFT, GROUP_RESOLVED = "group_opened", "group_joined", "group_left", "group_resolved"
GROUP_ACTIONS = frozenset({GROUP_OPENED, GROUP_JOINED, GROUP_LEFT, GROUP_RESOLVED})
# What ack sync may write for the same facts (PagerDuty Webhooks v3 event types).
ACK_ACTIONS = frozenset({ACKNOWLEDGE, "incident.acknowledged"})
RESOLVE_ACTIONS = frozenset({RESOLVE, "incident.resolved"})
SINK_TITLES: Mapping[str, str] = {"pagerduty": "PagerDuty", "statuspage": "Statuspage", "actions": "the action"}
ACTIONS_SIDE = "actions"  # runbook actions' deliveries (the outbox's actions sink): delivered = run


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit trail."""

    at: float  # unix seconds
    key: str  # incident key
    side: str  # alertmanager | bridge | pagerduty | statuspage | api | ...
    actor: str  # who: the Alertmanager's address, a person, "certpager"
    action: str
    detail: str = ""
    certificate: str = ""
    environment: str = ""
    event_class: str = ""
    issuer: str = ""


def clock_time(at: float, reference: float | None = None) -> str:
    """``03:12:04`` when on the same UTC day as ``reference``, else ``2026-03-29 03:12:04`` (UTC)."""
    moment = datetime.fromtimestamp(at, UTC)
    if reference is not None and datetime.fromtimestamp(reference, UTC).date() == moment.date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def sink_title(sink: str) -> str:
    return SINK_TITLES.get(sink, sink)


def ingest_entries(
    receipt_id: int, peer: str, now: float, notification: Notification, state: State, decision: Decision,
    sinks: Sequence[str],
) -> list[AuditEntry]:
    """The lines one webhook adds: each alert's verdict, then each event queued."""
    source = notification.external_url or "an Alertmanager without externalURL"
    via = f" via {peer}" if peer else ""
    seen_starts: dict[str, set[str]] = {}
    for fingerprint, starts_at in state.occurrences:
        seen_starts.setdefault(fingerprint, set()).add(starts_at)
    entries: list[AuditEntry] = []
    for alert, verdict in zip(notification.alerts, decision.verdicts, strict=True):
        subject = subject_of(alert.labels, alert.fingerprint)
        detail = f"{alert.status} from {source}{via} (receipt {receipt_id})"
        if verdict != "new":
            detail += ": " + _why(alert, verdict, state, seen_starts.get(alert.fingerprint, set()), now)
        entries.append(AuditEntry(
            now, subject.key, "alertmanager", peer or source, RECEIVED if verdict == "new" else verdict, detail,
            subject.certificate, subject.environment, subject.event_class, alert.labels.get("issuer", ""),
        ))
    targets = ", ".join(sink_title(s) for s in sinks if s != ACTIONS_SIDE) or "no sink"
    for event in decision.events:
        action = UPDATE if event.update else event.action.value
        detail = f"queued for {targets}" + (f" ({event.note})" if event.note else "")
        entries.append(AuditEntry(now, event.key, "bridge", "certpager", action, detail, *event_subject(event)))
    return entries


def group_entries(state: State, decision: Decision, now: float) -> list[AuditEntry]:
    """The grouping lines one decision adds: each member certificate that opened or joined a group, left it
    (resolved, others remain), or resolved it as its last member."""
    entries: list[AuditEntry] = []
    for after in decision.groups:
        before = state.groups.get(after.key)
        had = before.members if before is not None and before.open else {}
        count = _certificates(after)
        for key, member in after.members.items():
            if key in had:
                continue
            action, words = (GROUP_JOINED, "joined") if had else (GROUP_OPENED, "opened")
            entries.append(_member_entry(now, key, member, after, action, f"{words} group {after.key} ({count})"))
        for key, member in had.items():
            if key in after.members:
                continue
            if after.members:
                detail = f"left group {after.key} (resolved; {count} remain)"
                entries.append(_member_entry(now, key, member, after, GROUP_LEFT, detail))
            else:
                detail = f"group {after.key} resolved (last member)"
                entries.append(_member_entry(now, key, member, after, GROUP_RESOLVED, detail))
    return entries


def _certificates(group: Group) -> str:
    count = len({(m.get("certificate"), m.get("environment")) for m in group.members.values()})
    return f"{count} certificate{'s' if count != 1 else ''}"


def _member_entry(
    now: float, key: str, member: Mapping[str, Any], group: Group, action: str, detail: str
) -> AuditEntry:
    return AuditEntry(now, key, "bridge", "certpager", action, detail, str(member.get("certificate", "")),
                      str(member.get("environment", "")), str(member.get("class", "")),
                      group.values.get("issuer", ""))


def _why(alert: Alert, verdict: str, state: State, starts: set[str], now: float) -> str:
    seen = state.occurrences.get((alert.fingerprint, alert.starts_at))
    if verdict == DUPLICATE:
        if seen is None:
            return f"duplicate: {alert.status} twice in this webhook"
        return f"duplicate: {alert.status} already recorded at {clock_time(seen.updated_at, now)}"
    if seen is not None and seen.status == "resolved":
        return f"stale snapshot of an occurrence resolved at {clock_time(seen.updated_at, now)}"
    newer = max((s for s in starts if s > alert.starts_at), default="")
    return f"stale snapshot: a newer occurrence of this alert started at {newer or 'a later time'}"


def event_subject(event: IncidentEvent | Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(certificate, environment, class, issuer) of an incident event or its JSON."""
    if isinstance(event, IncidentEvent):
        data: Mapping[str, Any] = {"component": event.component, "group": event.group,
                                   "event_class": event.event_class, "custom_details": event.custom_details}
    else:
        nested = event.get("event")  # a runbook action's item carries the event it runs for
        data = nested if isinstance(nested, Mapping) else event
    details = data.get("custom_details")
    issuer = details.get("issuer", "") if isinstance(details, Mapping) else ""
    return (str(data.get("component", "")), str(data.get("group", "")), str(data.get("event_class", "")),
            str(issuer))


def delivery_entry(item: OutboxItem, at: float, action: str, detail: str) -> AuditEntry:
    """A line about one outbox item's delivery (side: the sink), saying which event it was."""
    kind = UPDATE if item.payload.get("update") else str(item.payload.get("action", "event"))
    return AuditEntry(at, item.ordering_key, item.sink, "certpager", action, f"{kind}: {detail}",
                      *event_subject(item.payload))


def from_pipeline(entry: AuditEntry) -> bool:
    """Whether the ingest or the outbox wrote ``entry`` (not ack sync: a person's or a poller's action)."""
    if entry.action in (RECEIVED, DUPLICATE, STALE, DELIVERED, RETRY, HELD, DEAD_LETTER):
        return True
    return entry.side == "bridge" and entry.action in (TRIGGER, RESOLVE, UPDATE)

"""Incident lifecycles read from the audit trail, and working hours: what ``certpager report`` and the
lifecycle metrics share, so both answer the same question the same way.

An **episode** of an incident key starts at a queued trigger (a page: side ``bridge``, action ``trigger``)
and ends at its first resolve, whichever side resolved it (the bridge queuing a resolve because
Alertmanager resolved it, or a person resolving it in PagerDuty). Its acknowledgement is the first ack
line in between (PagerDuty's ``incident.acknowledged``, an Alertmanager silence, the snooze API).
Time to acknowledge and time to resolve are measured from the trigger.

**Off hours**: a page outside the configured working hours on the working days, in the configured time
zone (zoneinfo: daylight saving changes are the zone's own rules, so 09:00 is 09:00 local before and
after them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bridge import audit
from bridge.audit import AuditEntry
from bridge.workhours import WorkingHours

__all__ = ["Episode", "WorkingHours", "episode_of", "episodes"]

@dataclass(slots=True)
class Episode:
    """One incident from its page to its resolve."""

    key: str
    certificate: str
    environment: str
    event_class: str
    issuer: str
    triggered_at: float
    acknowledged_at: float | None = None
    acknowledged_by: str = ""  # "pagerduty: Jane Doe"
    resolved_at: float | None = None
    resolved_by: str = ""  # "alertmanager", "pagerduty: Jane Doe"

    @property
    def time_to_acknowledge(self) -> float | None:
        return None if self.acknowledged_at is None else self.acknowledged_at - self.triggered_at

    @property
    def time_to_resolve(self) -> float | None:
        return None if self.resolved_at is None else self.resolved_at - self.triggered_at


def is_page(entry: AuditEntry) -> bool:
    return entry.side == "bridge" and entry.action == audit.TRIGGER


def is_ack(entry: AuditEntry) -> bool:
    return entry.action in audit.ACK_ACTIONS


def is_resolve(entry: AuditEntry) -> bool:
    if entry.side == "bridge":
        return entry.action == audit.RESOLVE
    return entry.action in audit.RESOLVE_ACTIONS


def episodes(entries: Iterable[AuditEntry]) -> list[Episode]:
    """Every episode the lines (oldest first) show, in trigger order; lines of an unknown episode are ignored."""
    done: list[Episode] = []
    open_: dict[str, Episode] = {}
    for entry in entries:
        current = open_.get(entry.key)
        if is_page(entry):
            if current is None:
                episode = Episode(entry.key, entry.certificate, entry.environment, entry.event_class, entry.issuer,
                                  entry.at)
                open_[entry.key] = episode
                done.append(episode)
            continue
        if current is None:
            continue
        if is_ack(entry) and current.acknowledged_at is None:
            current.acknowledged_at, current.acknowledged_by = entry.at, _who(entry)
        elif is_resolve(entry):
            current.resolved_at, current.resolved_by = entry.at, _who(entry)
            del open_[entry.key]
    return done


def _who(entry: AuditEntry) -> str:
    if entry.side == "bridge":
        return "alertmanager"  # the bridge resolves when Alertmanager says the alert resolved
    return f"{entry.side}: {entry.actor}" if entry.actor else entry.side


def episode_of(entries: Sequence[AuditEntry], key: str) -> Episode | None:
    """The latest episode of ``key`` in ``entries`` (for the metrics, after an ack or resolve was written)."""
    found = [e for e in episodes(entries) if e.key == key]
    return found[-1] if found else None

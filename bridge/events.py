"""The neutral incident event: what the decision layer asks the sinks to make true.

Decisions (mapping, ladder, grouping, sync) turn Alertmanager alerts into ``IncidentEvent``s; the
outbox stores them as JSON (``to_json``/``from_json``) per sink; each sink translates them into its own
API (PagerDuty Events v2, Statuspage, ...). Sinks never see Alertmanager payloads, and this model holds
no secrets: the sink resolves ``route`` (an environment name or ``default``) to its routing key at
delivery time, so a rotated key applies to events already queued.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


class Action(enum.StrEnum):
    TRIGGER = "trigger"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Link:
    href: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """One state change of one incident, keyed by a stable ``key`` (the PagerDuty dedup_key)."""

    action: Action
    key: str  # stable incident key, <=255 chars: from class + certificate + environment
    route: str  # which routing key / page: an environment name, or "default"
    summary: str = ""  # required for trigger
    severity: Severity = Severity.ERROR
    source: str = "certpager"
    component: str = ""  # the certificate
    group: str = ""  # the environment
    event_class: str = ""  # the alert class
    timestamp: str | None = None  # RFC 3339 of when the problem started
    custom_details: Mapping[str, Any] = field(default_factory=dict)
    links: tuple[Link, ...] = ()
    client: str = "certpager"
    client_url: str | None = None
    note: str = ""  # why this event exists when it is not obvious (superseded, stale, ...)
    update: bool = False  # a trigger for an incident already open (an alert joined it): no new incident

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["links"] = [asdict(link) for link in self.links]
        data["custom_details"] = dict(self.custom_details)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IncidentEvent:
        fields = dict(data)
        fields["action"] = Action(fields["action"])
        fields["severity"] = Severity(fields["severity"])
        fields["links"] = tuple(Link(**link) for link in fields.get("links", ()))
        return cls(**fields)

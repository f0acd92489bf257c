"""What an alert is about, and the stable incident key derived from it.

An incident is keyed by (class, certificate, environment), never by Alertmanager's groupKey, so editing
a route or ``group_by`` does not orphan open incidents. The key reads like
``cert-api-example-com-production-expired-1f0c2a9e``: a slug for people, then 8 hex of SHA-256 over the
exact (class, certificate, environment). The hash is always there because slugging is lossy
(``api.example.com`` and ``api-example.com`` slug alike) and two certificates sharing one key would
mean one of them never pages. Keys are at most 255 characters (PagerDuty's dedup_key limit).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

KEY_MAX = 255
HASH_CHARS = 8
PART_MAX = 63  # environment and class slugs are cut here so the certificate keeps most of the room
DEFAULT_ROUTE = "default"
# The escalation ladder, lowest first: a higher class supersedes the lower ones for one certificate.
LADDER: tuple[str, ...] = ("certificate_expiring_30_days", "certificate_expiring_7_days", "certificate_expired")
CLASS_SHORT: Mapping[str, str] = {
    "certificate_expired": "expired",
    "certificate_expiring_7_days": "expiring-7d",
    "certificate_expiring_30_days": "expiring-30d",
    "policy_violation": "policy",
    "renewal_failed": "renewal-failed",
    "deployment_failed": "deployment-failed",
    "probe_failed": "probe-failed",
    "verify_failed": "verify-failed",
}
CLASS_TITLE: Mapping[str, str] = {
    "certificate_expired": "Certificate Expired",
    "certificate_expiring_7_days": "Certificate Expiring in 7 Days",
    "certificate_expiring_30_days": "Certificate Expiring in 30 Days",
    "policy_violation": "Certificate Policy Violation",
    "renewal_failed": "Certificate Renewal Failed",
    "deployment_failed": "Certificate Deployment Failed",
    "probe_failed": "TLS Probe Failed",
    "verify_failed": "Certificate Verification Failed",
}
# Label fallbacks, first present wins.
CLASS_LABELS = ("class", "alertname")
CERTIFICATE_LABELS = ("certificate", "subject_cn", "target", "instance")
_NON_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Subject:
    """What one alert is about."""

    event_class: str
    certificate: str
    environment: str  # "" when the alert has no environment label
    key: str = ""  # the incident key; filled in by subject_of

    @property
    def scope(self) -> str:
        """The ladder's scope: one certificate in one environment."""
        return f"{self.environment}\x1f{self.certificate}"

    @property
    def route(self) -> str:
        """Which routing key / page the incident goes to."""
        return self.environment or DEFAULT_ROUTE


def _first(labels: Mapping[str, str], names: tuple[str, ...]) -> str:
    return next((labels[n] for n in names if labels.get(n)), "")


def subject_of(labels: Mapping[str, str], fingerprint: str) -> Subject:
    """The subject of an alert; with no certificate-like label the alert is its own subject."""
    event_class = _first(labels, CLASS_LABELS) or "unknown"
    certificate = _first(labels, CERTIFICATE_LABELS) or f"alert-{fingerprint}"
    environment = labels.get("environment", "")
    return Subject(event_class, certificate, environment, incident_key(event_class, certificate, environment))


def slug(text: str) -> str:
    """Lower-case letters and digits joined by single dashes."""
    return _NON_SLUG.sub("-", text.lower()).strip("-")


@functools.lru_cache(maxsize=65536)  # pure and hot: every alert of every webhook asks
def incident_key(event_class: str, certificate: str, environment: str) -> str:
    """The stable incident key (PagerDuty dedup_key) for a subject."""
    digest = hashlib.sha256(f"{event_class}\x00{certificate}\x00{environment}".encode()).hexdigest()[:HASH_CHARS]
    short = CLASS_SHORT.get(event_class) or slug(event_class)[:PART_MAX] or "alert"
    tail = "-".join(p for p in (slug(environment)[:PART_MAX].strip("-"), short, digest) if p)
    room = KEY_MAX - len("cert-") - len(tail) - 1
    cert = slug(certificate)[: max(room, 0)].strip("-") or "unnamed"
    return f"cert-{cert}-{tail}"[:KEY_MAX]


def class_title(event_class: str) -> str:
    """``certificate_expired`` -> ``Certificate Expired`` (known classes have curated titles)."""
    return CLASS_TITLE.get(event_class) or event_class.replace("_", " ").title()


def group_key(route: str, values: Mapping[str, str], opened_at: float) -> str:
    """The key of one group (its PagerDuty dedup_key and Statuspage incident): the slot's values for people,
    then 8 hex of SHA-256 over the slot and the time its first member arrived, so a group opened after the
    previous one of the same slot closed is a new incident."""
    exact = "\x00".join([route, *(f"{k}={v}" for k, v in values.items()), repr(opened_at)])
    digest = hashlib.sha256(exact.encode()).hexdigest()[:HASH_CHARS]
    words = slug("-".join(v for v in dict.fromkeys((route, *values.values())) if v))[: KEY_MAX - 32].strip("-")
    words = words or "group"
    return f"certgroup-{words}-{digest}"[:KEY_MAX]

"""PagerDuty Webhooks v3: the signature check and the parsing of one delivery into a :class:`WebhookEvent`.

A delivery carries ``X-PagerDuty-Signature: v1=<hex>[,v1=<hex>...]``, one HMAC-SHA256 of the raw body per
secret the subscription has while its secret rotates; it is genuine when any value matches any secret
configured here (constant-time compares). It carries ``X-Webhook-Id``, repeated on every retry of the same
webhook, which the store deduplicates on. Bad input is a :class:`WebhookError` with the status to answer:

    401  no X-PagerDuty-Signature, or no secret configured to check it against
    403  a signature that matches no configured secret
    400  a genuine body that is not a v3 event (not JSON, no ``event.id`` / ``event.event_type``)

PagerDuty drops a webhook answered 4xx (other than 429) and never retries it, which is right for these.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SIGNATURE_HEADER = "x-pagerduty-signature"
WEBHOOK_ID_HEADER = "x-webhook-id"
# The incident events ack sync acts on; any other type is answered 2xx, counted and dropped.
HANDLED = frozenset({
    "incident.triggered", "incident.acknowledged", "incident.unacknowledged", "incident.resolved",
    "incident.reopened", "incident.escalated", "incident.priority_updated",
})


class WebhookError(ValueError):
    """The delivery cannot be accepted; ``status`` is the HTTP answer, ``str()`` the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """The parts of one v3 event ack sync needs; ``raw`` is the whole ``event`` object, as stored."""

    webhook_id: str
    event_id: str
    event_type: str
    occurred_at: str
    incident_id: str
    raw: Mapping[str, Any]

    @property
    def handled(self) -> bool:
        return self.event_type in HANDLED


def signature_matches(body: bytes, header: str, secrets: Sequence[str]) -> bool:
    """Whether any ``v1=`` value of ``header`` is the HMAC-SHA256 of ``body`` under any of ``secrets``."""
    offered = [part.strip()[3:] for part in header.split(",") if part.strip().startswith("v1=")]
    expected = [hmac.new(secret.encode(), body, hashlib.sha256).hexdigest() for secret in secrets]
    found = False
    for value in offered:
        for digest in expected:  # no early exit: the time taken does not tell which secret matched
            found |= hmac.compare_digest(value.lower().encode(), digest.encode())
    return found


def verify(body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> None:
    """Raise :class:`WebhookError` unless the delivery is signed with one of ``secrets``."""
    header = headers.get(SIGNATURE_HEADER, "")
    if not secrets:
        raise WebhookError(401, "no webhook secret configured (integrations.pagerduty.webhook_secret_file)")
    if not header.strip():
        raise WebhookError(401, "missing X-PagerDuty-Signature")
    if not signature_matches(body, header, secrets):
        raise WebhookError(403, "X-PagerDuty-Signature matches no configured secret")


def parse(body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
    """Parse a verified delivery (raises WebhookError 400)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookError(400, f"body is not JSON: {exc}") from None
    event = data.get("event") if isinstance(data, dict) else None
    if not isinstance(event, dict):
        raise WebhookError(400, "event: expected an object (a PagerDuty Webhooks v3 payload)")
    event_id, event_type = event.get("id"), event.get("event_type")
    if not isinstance(event_id, str) or not event_id:
        raise WebhookError(400, "event.id: expected a non-empty string")
    if not isinstance(event_type, str) or not event_type:
        raise WebhookError(400, "event.event_type: expected a non-empty string")
    occurred_at = event.get("occurred_at")
    data_obj = event.get("data")
    incident_id = _incident_id(data_obj) if isinstance(data_obj, dict) else ""
    return WebhookEvent(
        webhook_id=headers.get(WEBHOOK_ID_HEADER, "").strip() or event_id,
        event_id=event_id,
        event_type=event_type,
        occurred_at=occurred_at if isinstance(occurred_at, str) else "",
        incident_id=incident_id,
        raw=event,
    )


def _incident_id(data: Mapping[str, Any]) -> str:
    # Incident events carry the incident itself; notes and responders carry a reference to it.
    if data.get("type") == "incident" and isinstance(data.get("id"), str):
        return str(data["id"])
    ref = data.get("incident")
    return str(ref["id"]) if isinstance(ref, dict) and isinstance(ref.get("id"), str) else ""


def agent_of(event: Mapping[str, Any]) -> tuple[str, bool]:
    """Who did it (the agent's summary) and whether that is a person (a user, not an integration)."""
    agent = event.get("agent")
    if not isinstance(agent, dict):
        return "PagerDuty", False
    name = str(agent.get("summary") or agent.get("id") or "unknown")
    return name, agent.get("type") == "user_reference"

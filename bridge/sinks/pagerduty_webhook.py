"""The sink that applies stored PagerDuty webhooks: the second half of "accept, then work from the store".

The webhook handler only verifies, stores and answers (PagerDuty wants a 2xx within 5 s); each stored event
is an outbox item of this sink, ordered per PagerDuty incident. Delivering one maps the PagerDuty incident to
the bridge's incident keys (``incident_key`` from the payload, else the REST look-up of the incident's
alerts when an API token is configured), then runs :func:`bridge.acksync.on_pagerduty_event` in one store
transaction that also marks the webhook applied, so a crash before the item is deleted re-runs it
harmlessly. What it queues (silences, REST writes) goes to those sinks' own queues.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from bridge import acksync
from bridge.audit import AuditEntry
from bridge.pagerduty_rest import PagerDutyRest
from bridge.pagerduty_webhook import WebhookError, WebhookEvent, parse
from bridge.sinks.base import DeadLetter, Delivered, DeliveryOutcome, OutboxItem, RetryLater
from bridge.store.base import Store

log = logging.getLogger(__name__)


class PagerDutyWebhookSink:
    name = "pagerduty_webhook"

    def __init__(
        self, store: Store, rest: PagerDutyRest, *, settings: Callable[[], acksync.Settings],
        queued: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time,
        recorded: Callable[[Sequence[AuditEntry]], None] = lambda lines: None,
    ) -> None:
        self._store = store
        self._rest = rest
        self._settings = settings
        self._queued = queued
        self._recorded = recorded  # the audit lines written (lifecycle metrics)
        self._clock = clock

    async def deliver(self, item: OutboxItem) -> DeliveryOutcome:
        event = _event(item)
        if isinstance(event, DeadLetter):
            return event
        keys = await self._keys(event)
        if isinstance(keys, RetryLater | DeadLetter):
            return keys
        timeout = await self._ack_timeout(event)
        priorities = await self._priorities(event)
        if isinstance(priorities, RetryLater | DeadLetter):
            return priorities
        settings = self._settings()
        now = self._clock()
        changes = await self._store.sync(
            keys, lambda state: acksync.on_pagerduty_event(
                state, event, keys, settings, now=now, ack_timeout=timeout, priorities=priorities),
            now=now, webhook_id=event.webhook_id,
        )
        if isinstance(changes, acksync.Changes) and changes.outbox:
            self._queued()
        if isinstance(changes, acksync.Changes) and changes.audit:
            self._recorded(changes.audit)
        log.info("pagerduty webhook applied", extra={"kv": {
            "event": event.event_type, "incident": event.incident_id, "keys": ",".join(keys) or "-",
        }})
        return Delivered(info=event.event_type)

    async def _keys(self, event: WebhookEvent) -> list[str] | RetryLater | DeadLetter:
        data = event.raw.get("data")
        key = data.get("incident_key") if isinstance(data, dict) else None
        if isinstance(key, str) and key:
            return [key]
        if not event.incident_id or not self._rest.configured:
            log.warning("pagerduty incident without incident_key and no REST API token to look its alerts up",
                        extra={"kv": {"incident": event.incident_id, "event": event.event_type}})
            return []
        return await self._rest.incident_keys(event.incident_id)

    async def _ack_timeout(self, event: WebhookEvent) -> float | None:
        if event.event_type != "incident.acknowledged" or not self._rest.configured:
            return None
        data = event.raw.get("data")
        service: Any = data.get("service") if isinstance(data, dict) else None
        service_id = service.get("id") if isinstance(service, dict) else None
        return await self._rest.ack_timeout(str(service_id)) if service_id else None

    async def _priorities(self, event: WebhookEvent) -> list[str] | RetryLater | DeadLetter:
        """The account's priority ids, most severe first: only a priority change needs them (without a token
        a change cannot be told a raise and is recorded only)."""
        if event.event_type != "incident.priority_updated" or not self._rest.configured:
            return []
        found = await self._rest.priorities()
        if isinstance(found, RetryLater | DeadLetter):
            return found
        return [str(p.get("id")) for p in found]

    async def aclose(self) -> None:
        """Nothing of its own to close."""


def _event(item: OutboxItem) -> WebhookEvent | DeadLetter:
    try:
        raw = item.payload["event"]
        event = parse(json.dumps({"event": raw}).encode(), {"x-webhook-id": str(item.payload["webhook_id"])})
    except (KeyError, TypeError, WebhookError) as exc:
        return DeadLetter(error=f"stored PagerDuty webhook {item.id} is unreadable: {exc}")
    return event

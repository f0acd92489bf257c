"""The dry-run stand-in for the PagerDuty sink, used when no routing key is configured.

It builds the exact Events v2 body the real sink would send (same :func:`prepare`, routing key shown
as ``<dry-run>``), logs it at info level and keeps the last few in memory for tests and the demo. It
never touches the network and always answers ``Delivered``, so a newcomer sees alerts become PagerDuty
events offline; an event the real sink would dead-letter is logged as a warning with the reason.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from bridge.sinks.base import DeadLetter, Delivered, DeliveryOutcome, OutboxItem
from bridge.sinks.pagerduty import prepare, read_event

DRY_RUN_KEY = "<dry-run>"


class DryRunSink:
    """Logs the PagerDuty events it would send; ``.sent`` holds the last ``keep`` bodies, oldest first."""

    name = "pagerduty"

    def __init__(self, logger: logging.Logger | None = None, *, keep: int = 100) -> None:
        self._log = logger or logging.getLogger(__name__)
        self.sent: deque[dict[str, Any]] = deque(maxlen=keep)

    async def deliver(self, item: OutboxItem) -> DeliveryOutcome:
        """Log the body PagerDuty would receive for ``item``; always Delivered."""
        event = read_event(item)
        if isinstance(event, DeadLetter):
            return self._would_not_send(item, event)
        prepared = prepare(event, DRY_RUN_KEY)
        if isinstance(prepared, DeadLetter):
            return self._would_not_send(item, prepared)
        body, encoded = prepared
        self.sent.append(body)
        # The exact bytes the real sink would send, with the routing key replaced.
        kv = {"item": item.id, "route": event.route, "body": encoded.decode()}
        self._log.info("dry-run: would send PagerDuty event", extra={"kv": kv})
        return Delivered(info="dry-run")

    def _would_not_send(self, item: OutboxItem, reason: DeadLetter) -> Delivered:
        kv = {"item": item.id, "would_dead_letter": reason.error}
        self._log.warning("dry-run: the PagerDuty sink would not send this", extra={"kv": kv})
        return Delivered(info=f"dry-run: {reason.error}")

    async def aclose(self) -> None:
        """Nothing to close."""

"""The dry-run stand-in for the PagerDuty sink, used when no routing key is configured.

It builds the exact Events v2 body the real sink would send (same :func:`build_body`, routing key shown
as ``<dry-run>``), logs it at info level and keeps the last few in memory for tests and the demo. It
never touches the network and always answers ``Delivered``, so a newcomer sees alerts become PagerDuty
events offline.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from typing import Any

from bridge.sinks.base import DeadLetter, Delivered, DeliveryOutcome, OutboxItem
from bridge.sinks.pagerduty import build_body, check_body, read_event

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
            self._log.warning("dry-run: outbox item is not an event", extra={"kv": {"error": event.error}})
            return Delivered(info=f"dry-run: {event.error}")
        body = build_body(event, DRY_RUN_KEY)
        problems = check_body(body)
        self.sent.append(body)
        kv: dict[str, Any] = {"route": event.route, "body": json.dumps(body, ensure_ascii=False, sort_keys=True)}
        if problems:
            # The real sink would dead-letter this; say so, so the demo shows the same verdict.
            kv["would_reject"] = "; ".join(problems)
        self._log.info("dry-run: would send PagerDuty event", extra={"kv": kv})
        return Delivered(info="dry-run")

    async def aclose(self) -> None:
        """Nothing to close."""

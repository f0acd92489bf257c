"""Dry-run stand-ins: the PagerDuty sink without a routing key, the Statuspage transport without a token.

It builds the exact Events v2 body the real sink would send (same :func:`prepare`, routing key shown
as ``<dry-run>``), logs it at info level and keeps the last few in memory for tests and the demo. It
never touches the network and always answers ``Delivered``, so a newcomer sees alerts become PagerDuty
events offline; an event the real sink would dead-letter is logged as a warning with the reason.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from bridge.events import Action
from bridge.sinks.base import DeadLetter, Delivered, DeliveryOutcome, OutboxItem
from bridge.sinks.pagerduty import prepare, prepare_change, read_event
from bridge.sinks.statuspage import Answer

DRY_RUN_KEY = "<dry-run>"


class DryRunSink:
    """Logs the PagerDuty events it would send; ``.sent`` holds the last ``keep`` bodies, oldest first."""

    name = "pagerduty"

    def __init__(
        self, logger: logging.Logger | None = None, *, keep: int = 100,
        late_resolved: Callable[[], str] = lambda: "change_event",
    ) -> None:
        self._log = logger or logging.getLogger(__name__)
        self.sent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._late_resolved = late_resolved

    async def deliver(self, item: OutboxItem) -> DeliveryOutcome:
        """Log the body PagerDuty would receive for ``item``; always Delivered."""
        event = read_event(item)
        if isinstance(event, DeadLetter):
            return self._would_not_send(item, event)
        late = self._late_resolved() if event.action is Action.TRIGGER and item.superseded else ""
        if late == "drop":
            self._log.info("dry-run: would drop a late-resolved trigger", extra={"kv": {"item": item.id}})
            return Delivered(info="dry-run", late=late)
        change = late == "change_event"
        prepared = prepare_change(event, DRY_RUN_KEY) if change else prepare(event, DRY_RUN_KEY)
        if isinstance(prepared, DeadLetter):
            return self._would_not_send(item, prepared)
        body, encoded = prepared
        self.sent.append(body)
        # The exact bytes the real sink would send, with the routing key replaced.
        kv = {"item": item.id, "route": event.route, "body": encoded.decode()}
        what = "change event (late_resolved)" if change else "event"
        self._log.info(f"dry-run: would send PagerDuty {what}", extra={"kv": kv})
        return Delivered(info="dry-run", late=late)

    def _would_not_send(self, item: OutboxItem, reason: DeadLetter) -> Delivered:
        kv = {"item": item.id, "would_dead_letter": reason.error}
        self._log.warning("dry-run: the PagerDuty sink would not send this", extra={"kv": kv})
        return Delivered(info=f"dry-run: {reason.error}")

    async def aclose(self) -> None:
        """Nothing to close."""


class DryRunStatuspage:
    """A Statuspage transport that sends nothing: it logs each write it would make and answers like the API.

    Used by the real :class:`~bridge.sinks.statuspage.StatuspageSink` when no Statuspage token is configured,
    so the decisions (which incident, which update, which component status) are exactly the real sink's.
    It keeps the incidents it "opened" in memory so updates and resolves find them; ``.sent`` holds the
    last ``keep`` writes as ``(method, path, body)``.
    """

    def __init__(self, logger: logging.Logger | None = None, *, keep: int = 100) -> None:
        self._log = logger or logging.getLogger(__name__)
        self.sent: deque[tuple[str, str, dict[str, Any]]] = deque(maxlen=keep)
        self._incidents: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    async def send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Answer:
        """Answer from memory; a write is logged at info level with its exact JSON body."""
        if method == "GET":
            open_ = [i for i in self._incidents.values() if i["status"] != "resolved"]
            return Answer(200, open_ if path.split("?")[0].endswith("/unresolved") else [])
        spec = dict((body or {}).get("incident") or {})
        self.sent.append((method, path, dict(body or {})))
        kv = {"method": method, "path": path, "body": json.dumps(body, sort_keys=True)}
        self._log.info("dry-run: would send Statuspage request", extra={"kv": kv})
        if method == "POST":
            incident_id = f"dryrun{next(self._ids):06d}"
            self._incidents[incident_id] = {"id": incident_id, "status": "investigating", "metadata": {},
                                            "components": []}
        else:
            incident_id = path.rsplit("/", 1)[-1]
        incident = self._incidents.setdefault(incident_id, {"id": incident_id, "status": "investigating"})
        for name in ("status", "metadata", "name"):
            if name in spec:
                incident[name] = spec[name]
        ids = spec.get("component_ids") or list(spec.get("components") or {})
        incident["components"] = [{"id": c} for c in ids]
        return Answer(200, dict(incident))

    async def aclose(self) -> None:
        """Nothing to close."""

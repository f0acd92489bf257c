"""The PagerDuty REST sink: ack sync's writes to PagerDuty incidents (priority, snooze), from their own queue.

Items (ordered per incident key):

    {"op": "raise_priority", "key", "incident_id", "priority_id"}   one step more severe (incident.escalated)
    {"op": "snooze", "key", "incident_id", "duration"}               acknowledge if triggered, then snooze

Answers are classified by :mod:`bridge.pagerduty_rest` (429 and 5xx retried, other 4xx dead letters).
"""

from __future__ import annotations

import logging
from typing import Any

from bridge.acksync import one_step_up
from bridge.pagerduty_rest import PagerDutyRest
from bridge.sinks.base import DeadLetter, Delivered, DeliveryOutcome, OutboxItem, RetryLater

log = logging.getLogger(__name__)


class PagerDutyRestSink:
    name = "pagerduty_rest"

    def __init__(self, rest: PagerDutyRest) -> None:
        self._rest = rest

    async def deliver(self, item: OutboxItem) -> DeliveryOutcome:
        op = item.payload.get("op")
        if op == "raise_priority":
            return await self._raise(item.payload)
        if op == "snooze":
            return await self._snooze(item.payload)
        return DeadLetter(error=f"unknown PagerDuty REST op {op!r}")

    async def _raise(self, payload: Any) -> DeliveryOutcome:
        priorities = await self._rest.priorities()
        if isinstance(priorities, RetryLater | DeadLetter):
            return priorities
        ids = [str(p.get("id")) for p in priorities]
        if not ids:
            return Delivered(info="the account has no priorities")
        target = one_step_up(ids, str(payload.get("priority_id") or ""))
        if target is None:
            return Delivered(info="already the most severe priority")
        answer = await self._rest.update_incident(
            str(payload["incident_id"]), {"priority": {"id": target, "type": "priority_reference"}}
        )
        if isinstance(answer, RetryLater | DeadLetter):
            return answer
        log.info("pagerduty priority raised", extra={"kv": {"key": payload.get("key"), "priority": target}})
        return Delivered(status=200, info=target)

    async def _snooze(self, payload: Any) -> DeliveryOutcome:
        incident_id = str(payload.get("incident_id") or "")
        status = ""
        if not incident_id:
            found = await self._rest.open_incident(str(payload["key"]))
            if isinstance(found, RetryLater | DeadLetter):
                return found
            if found is None:
                return DeadLetter(error=f"no open PagerDuty incident with incident_key {payload['key']!r}")
            incident_id, status = str(found["id"]), str(found.get("status", ""))
        if status != "acknowledged":  # PagerDuty snoozes acknowledged incidents only
            answer = await self._rest.update_incident(incident_id, {"status": "acknowledged"})
            if isinstance(answer, RetryLater | DeadLetter):
                return answer
        snoozed = await self._rest.snooze(incident_id, int(payload["duration"]))
        if isinstance(snoozed, RetryLater | DeadLetter):
            return snoozed
        return Delivered(status=201, info=incident_id)

    async def aclose(self) -> None:
        """The client is shared with the webhook sink and closed by the bridge."""

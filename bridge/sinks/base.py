"""The contract between the outbox and the sinks.

The outbox worker hands a sink one :class:`OutboxItem` at a time per ordering key (the head of that
key's queue) and acts on the outcome: ``Delivered`` removes it, ``RetryLater`` keeps it at the head
and tries again no sooner than ``after`` seconds (a sink's own rate limiter answers this too, without
touching the network), ``DeadLetter`` moves it to the dead letters with the API's error and lets the
key's next item go. A sink never raises for an upstream problem; an exception is a bug and is treated
as ``RetryLater`` by the worker, with a traceback in the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    sink: str  # the sink's name, e.g. "pagerduty"
    ordering_key: str  # items with the same key are delivered one at a time, in id order
    payload: Mapping[str, Any]  # sink-specific JSON; for incident sinks an IncidentEvent.to_json()
    attempts: int  # deliveries tried before this one
    created_at: float  # unix seconds when the item was committed
    # This item could not go out when first due (a failed attempt, a rate-limit hold) and a later item of
    # its key was queued meanwhile: for a trigger, its incident was resolved before it could be delivered,
    # so sending it now would page for something already fixed (late_resolved).
    superseded: bool = False


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int = 0  # HTTP status, for metrics and logs
    info: str = ""
    late: str = ""  # a trigger resolved before it went out: how it was recorded (change_event, page, drop)


@dataclass(frozen=True, slots=True)
class RetryLater:
    after: float | None  # seconds; None: the worker's own exponential backoff with jitter
    error: str  # e.g. "429 rate limited", "503", "timeout", "rate limit (local)"
    status: int = 0
    local: bool = False  # True when the sink held it back itself (rate limit) without sending


@dataclass(frozen=True, slots=True)
class DeadLetter:
    error: str  # the API's own error text, kept for the operator
    status: int = 0


DeliveryOutcome = Delivered | RetryLater | DeadLetter


class Sink(Protocol):
    """Something the outbox delivers to (PagerDuty, Statuspage, Alertmanager silences, ...)."""

    name: str

    async def deliver(self, item: OutboxItem) -> DeliveryOutcome: ...

    async def aclose(self) -> None: ...

"""The store interface: what the inbound side, the outbox worker and the metrics need.

Every write is atomic. :meth:`Store.ingest` records the raw webhook, runs
:func:`bridge.decisions.decide` over the rows it needs and writes the state changes and the outbox
rows, all in ONE transaction, before the webhook is answered (the script is :mod:`bridge.store.ingest`,
shared by every backend). Outbox items are claimed head-of-key only (the lowest id of each ordering
key), under a lease, so a resolve never overtakes its trigger and an in-flight item is not handed out
twice; PostgreSQL does the same across replicas with ``FOR UPDATE SKIP LOCKED``. Periodic jobs run on
one elected replica (:meth:`Store.lead`).

    StoreError        the store could not do it (disk full, locked, closed): answer 503, retry later
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from bridge.acksync import Ack, Changes, SyncState
from bridge.alertmanager import Notification, Rejection
from bridge.audit import AuditEntry
from bridge.decisions import Policy
from bridge.events import IncidentEvent
from bridge.pagerduty_webhook import WebhookEvent
from bridge.sinks.base import OutboxItem
from certpager.errors import CertpagerError


class StoreError(CertpagerError):
    """The store failed; the operation did not happen (its transaction was rolled back)."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """One inbound webhook as received."""

    source: str  # "alertmanager" | "pagerduty"
    body: bytes
    received_at: float
    rejected: tuple[Rejection, ...] = ()  # alerts of the body not accepted, kept with the receipt
    peer: str = ""  # the sender's address (the audit trail names which Alertmanager sent it)

    def rejected_json(self) -> str | None:
        """The rejections as stored with the receipt (None: every alert was accepted)."""
        if not self.rejected:
            return None
        return json.dumps([r.to_json() for r in self.rejected])


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one committed webhook changed."""

    receipt_id: int
    new: int  # transitions not seen before
    duplicates: int
    stale: int
    events: tuple[IncidentEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Outbox gauges at one instant."""

    depth: Mapping[str, int] = field(default_factory=dict)  # sink -> items not yet delivered
    oldest_created_at: Mapping[str, float] = field(default_factory=dict)  # sink -> oldest item's commit time
    dead_letters: Mapping[str, int] = field(default_factory=dict)  # sink -> dead letters kept


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    id: int
    sink: str
    ordering_key: str
    error: str
    status: int
    attempts: int
    dead_at: float


class Store(Protocol):
    """The durable store."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def is_open(self) -> bool: ...

    async def ingest(
        self, receipt: Receipt, notification: Notification, policy: Policy, *, sinks: Sequence[str]
    ) -> IngestResult:
        """Record the webhook, decide, and queue one outbox row per event and sink, atomically."""
        ...

    async def claim(self, sink: str, *, now: float, limit: int, lease: float) -> list[OutboxItem]:
        """Due head-of-key items of ``sink``, leased until ``now + lease``, oldest due first, each saying
        whether it is ``superseded``: held up (its due time moved: a failed attempt, a hold; or handed out
        before and never reported back: its process died) while a later item of its key was queued."""
        ...

    async def next_due(self, sink: str, *, now: float) -> float | None:
        """When the earliest unleased head-of-key item of ``sink`` becomes due (None: nothing claimable)."""
        ...

    async def mark_delivered(self, item_id: int, *, audit: Sequence[AuditEntry] = ()) -> None:
        """Remove the delivered item (with ``audit``: and append those lines, in the same transaction)."""
        ...

    async def retry_at(
        self, item_id: int, *, at: float, error: str, attempted: bool = True, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Keep the item at the head of its key; try again no sooner than ``at``.

        ``attempted=False`` when nothing was sent (a sink's local rate limit held it back): the item's
        ``attempts``, which drives the retry backoff and is kept with dead letters, counts real sends only.
        """
        ...

    async def retry_many(
        self, retries: Sequence[tuple[int, float, str]], *, attempted: bool = True, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """:meth:`retry_at` for many ``(item_id, at, error)`` at once, in one write."""
        ...

    async def dead_letter(
        self, item_id: int, *, error: str, status: int, now: float, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Move the item to the dead letters; the key's next item may go."""
        ...

    async def prune(self, *, before: float, audit_before: float | None = None) -> int:
        """Drop receipts, resolved occurrences, closed incidents and dead letters older than ``before``, and
        audit lines older than ``audit_before`` (default ``before``)."""
        ...

    async def lead(self, role: str) -> bool:
        """Whether this replica is the one that runs ``role`` now (pruning, pollers, grouping windows).

        Call it before each round of a periodic job and skip the round on False. A replica not holding the
        role campaigns for it on each call, so when the holder dies another one takes over at its next
        round. SQLite: always True (one process owns the file). PostgreSQL: a session advisory lock.
        """
        ...

    def outbox_stats(self) -> OutboxStats:
        """Gauges for /metrics (synchronous and cheap: called on every scrape)."""
        ...

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetterRow]:
        """The newest dead letters (for operators and tests)."""
        ...

    # --- ack sync (bridge.acksync) ---------------------------------------------------------------------

    async def record_pagerduty_webhook(self, receipt: Receipt, event: WebhookEvent) -> bool:
        """Store a verified webhook and queue it to the ``pagerduty_webhook`` sink; False: id already seen."""
        ...

    async def sync(
        self, keys: Sequence[str] | None, decide: Callable[[SyncState], Changes | str], *, now: float,
        webhook_id: str | None = None,
    ) -> Changes | str:
        """Load the ack-sync state of ``keys`` (None: open incidents), decide, write, in one transaction.

        With ``webhook_id`` it happens at most once per webhook, so a redelivered item changes nothing.
        """
        ...

    async def record_silence(self, key: str, silence_id: str, alertmanager: str, *, now: float) -> None: ...

    async def live_silences(self, key: str) -> list[tuple[str, str]]:
        """(silence id, Alertmanager URL) of the bridge's unexpired silences for ``key``."""
        ...

    async def silence_expired(self, key: str, silence_id: str, *, now: float) -> None: ...

    async def ack_state(self, key: str) -> Ack | None: ...

    # --- the audit trail (bridge.audit) -----------------------------------------------------------------

    async def record_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append lines to the audit trail (the ingest script writes its own inside its transaction)."""
        ...

    async def audit_trail(
        self, key: str | None = None, *, certificate: str | None = None, since: float | None = None,
        until: float | None = None, limit: int | None = None,
    ) -> list[AuditEntry]:
        """Audit lines, oldest first: of one incident key, or of every key a certificate had, ``since <= at <
        until``; with ``limit``, the newest ``limit`` of them."""
        ...


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """An :meth:`Store.audit_trail` request as SQL clauses, written once for both dialects."""

    key: str | None = None
    certificate: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int | None = None

    COLUMNS: ClassVar[str] = (
        "at, incident_key, side, actor, action, detail, certificate, environment, event_class, issuer"
    )

    def sql(self, mark: Callable[[int], str]) -> tuple[str, list[object]]:
        """SELECT (newest first) and its arguments; ``mark(n)`` is the dialect's n-th placeholder."""
        clauses: list[str] = []
        args: list[object] = []
        for clause, value in (
            ("incident_key = {}", self.key),
            ("incident_key IN (SELECT incident_key FROM audit WHERE certificate = {})", self.certificate),
            ("at >= {}", self.since),
            ("at < {}", self.until),
        ):
            if value is not None:
                args.append(value)
                clauses.append(clause.format(mark(len(args))))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        args.append(self.limit if self.limit is not None else 2**62)
        return f"SELECT {self.COLUMNS} FROM audit{where} ORDER BY at DESC, id DESC LIMIT {mark(len(args))}", args

    @staticmethod
    def entries(rows: Sequence[Any]) -> list[AuditEntry]:
        """The rows of :meth:`sql`, oldest first."""
        return [AuditEntry(float(r[0]), *(str(v) for v in r[1:])) for r in reversed(rows)]

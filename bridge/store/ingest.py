"""The ingest transaction script, written once for every backend.

One webhook, inside ONE transaction: record the receipt, load the state the decision needs, run
:func:`bridge.decisions.decide`, then write the changed occurrences, the changed incidents, one
outbox row per event and sink, and the audit trail's lines (:mod:`bridge.audit`). A backend supplies
only its SQL and its transaction, through
:class:`IngestSql` (called from a thread, SQLite) or :class:`AsyncIngestSql` (awaited, PostgreSQL);
it never holds its own copy of these steps, so a change to the decisions reaches every store at once.

The script is a generator of :class:`Step` values: each step is one request to the backend, and the
backend's answer is sent back in. :func:`run` and :func:`run_async` drive it, synchronously or awaiting.

What the backend must guarantee, whatever its concurrency:

- ``load_state`` sees every ingest committed before for the same scopes, and no other ingest of those
  scopes commits until this transaction ends (SQLite: one writer; PostgreSQL: advisory transaction locks
  on the scopes).
- Groups (grouping on) are loaded by slot (the open ones) and by the keys the loaded incidents name; a
  group row is written guarded by its version, so two replicas deciding on one group at once cannot both
  win: the loser's :class:`Conflict` runs its script again over the winner's row. PostgreSQL also locks
  the slots with the scopes, so this is the exception.
- ``write`` inserts :attr:`Changes.created` occurrences with a plain INSERT and updates
  :attr:`Changes.updated` ones only where the row still has the status this transaction read: should two
  ingests of the same transition ever overlap, the primary key or the guard refuses the second
  (:class:`Conflict`), its transaction rolls back and its retry sees a duplicate. So one transition
  yields one outbound event, enforced by the database.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from bridge.alertmanager import Notification
from bridge.audit import AuditEntry, group_entries, ingest_entries
from bridge.decisions import Group, Lookup, Occurrence, Policy, State, action_runs, decide, event_json, lookup
from bridge.store.base import IngestResult, Receipt, StoreError

T = TypeVar("T")
ACTIONS_SINK = "actions"  # the sink that runs runbook actions (bridge.sinks.actions)


class Conflict(StoreError):
    """A concurrent transaction changed a row this one read: roll back and run the script again."""


@dataclass(frozen=True, slots=True)
class IncidentRow:
    """An incident as stored: ``trigger`` already JSON-encoded."""

    key: str
    scope: str
    event_class: str
    route: str
    open: bool
    trigger: str
    updated_at: float
    group: str = ""


GROUP_COLS = "key, slot, route, opened_at, open, detail, updated_at, version"  # a groups row, in GroupRow order


@dataclass(frozen=True, slots=True)
class GroupRow:
    """A group as stored: ``detail`` JSON-encoded ({values, members}); ``version`` 1 is a new row (INSERT),
    a later one replaces the row only where it still has ``version - 1`` (else :class:`Conflict`)."""

    key: str
    slot: str
    route: str
    opened_at: float
    open: bool
    detail: str
    updated_at: float
    version: int

    @classmethod
    def of(cls, group: Group) -> GroupRow:
        detail = json.dumps({"values": dict(group.values), "members": dict(group.members)})
        return cls(group.key, group.slot, group.route, group.opened_at, group.open, detail, group.updated_at,
                   group.version)

    def decoded(self) -> Group:
        return decode_group(self.key, self.slot, self.route, self.opened_at, self.open, self.detail,
                            self.updated_at, self.version)


def decode_group(
    key: str, slot: str, route: str, opened_at: float, is_open: bool, detail: str, updated_at: float, version: int
) -> Group:
    """A group row as read from either backend."""
    data = json.loads(detail)
    return Group(key, slot, route, float(opened_at), bool(is_open), data["values"], data["members"],
                 float(updated_at), int(version))


@dataclass(frozen=True, slots=True)
class OutboxRow:
    sink: str
    ordering_key: str
    payload: str  # JSON
    created_at: float
    receipt_id: int


@dataclass(frozen=True, slots=True)
class Changes:
    """Everything one decision writes."""

    created: Sequence[Occurrence]  # not stored yet: INSERT (the primary key refuses a concurrent twin)
    updated: Sequence[tuple[Occurrence, str]]  # (new row, status it had when read): UPDATE ... WHERE status = old
    incidents: Sequence[IncidentRow]  # upserted
    outbox: Sequence[OutboxRow]
    groups: Sequence[GroupRow] = ()  # inserted (version 1) or updated guarded by their version
    audit: Sequence[AuditEntry] = ()  # audit trail lines (bridge.audit), inserted


@dataclass(frozen=True, slots=True)
class RecordReceipt:
    """Insert the raw webhook; the answer is its id."""

    receipt: Receipt
    group_key: str


@dataclass(frozen=True, slots=True)
class LoadState:
    """Load (and hold, see module docstring) the rows :func:`decide` needs; the answer is a :class:`State`."""

    wanted: Lookup


@dataclass(frozen=True, slots=True)
class Write:
    """Write the changes; no answer."""

    changes: Changes


Step = RecordReceipt | LoadState | Write
Script = Generator[Step, Any, IngestResult]


class IngestSql(Protocol):
    """A backend's SQL for the script's steps, run inside its transaction (synchronous)."""

    def record_receipt(self, step: RecordReceipt) -> int: ...

    def load_state(self, step: LoadState) -> State: ...

    def write(self, step: Write) -> None: ...


class AsyncIngestSql(Protocol):
    """:class:`IngestSql` for a backend whose driver is awaited."""

    async def record_receipt(self, step: RecordReceipt) -> int: ...

    async def load_state(self, step: LoadState) -> State: ...

    async def write(self, step: Write) -> None: ...


def script(receipt: Receipt, notification: Notification, policy: Policy, sinks: Sequence[str]) -> Script:
    """The transaction script (see module docstring)."""
    receipt_id: int = yield RecordReceipt(receipt, notification.group_key)
    state: State = yield LoadState(lookup(notification, policy))
    decision = decide(state, notification, policy, now=receipt.received_at)
    audit = ingest_entries(receipt_id, receipt.peer, receipt.received_at, notification, state, decision, sinks)
    if not decision.new:  # duplicates and stale snapshots change nothing but the receipt and the audit trail
        if audit:
            yield Write(Changes((), (), (), (), audit=audit))
        return IngestResult(receipt_id, 0, decision.duplicates, decision.stale)
    created: list[Occurrence] = []
    updated: list[tuple[Occurrence, str]] = []
    for row in decision.occurrences:
        before = state.occurrences.get((row.fingerprint, row.starts_at))
        if before is None:
            created.append(row)
        else:
            updated.append((row, before.status))
    encoded: dict[str, tuple[Mapping[str, Any], str]] = {}  # key -> (trigger, its JSON): encode once
    incidents: list[IncidentRow] = []
    for i in decision.incidents:
        encoded[i.key] = (i.trigger, json.dumps(i.trigger))
        incidents.append(
            IncidentRow(i.key, i.scope, i.event_class, i.route, i.open, encoded[i.key][1], i.updated_at, i.group)
        )
    outbox: list[OutboxRow] = []
    for event in decision.events:
        data = event_json(event)
        trigger, text = encoded.get(event.key, (None, ""))
        payload = text if data == trigger else json.dumps(data)
        outbox.extend(OutboxRow(sink, event.key, payload, receipt.received_at, receipt_id)
                      for sink in sinks if sink != ACTIONS_SINK)
    if ACTIONS_SINK in sinks:  # runbook actions: their own sink, ordered per incident, never before the page
        outbox.extend(OutboxRow(ACTIONS_SINK, run.event.key, json.dumps(run.to_json()), receipt.received_at,
                                receipt_id) for run in action_runs(decision.events, policy))
    audit.extend(group_entries(state, decision, receipt.received_at))
    yield Write(Changes(created, updated, incidents, outbox, [GroupRow.of(g) for g in decision.groups], audit))
    return IngestResult(receipt_id, decision.new, decision.duplicates, decision.stale, tuple(decision.events))


def run(steps: Script, sql: IngestSql) -> IngestResult:
    """Drive the script with a synchronous backend."""
    try:
        step = next(steps)
        while True:
            step = steps.send(_handler(sql, step)(step))
    except StopIteration as done:
        result: IngestResult = done.value
        return result


async def run_async(steps: Script, sql: AsyncIngestSql) -> IngestResult:
    """Drive the script with an awaited backend."""
    try:
        step = next(steps)
        while True:
            step = steps.send(await _handler(sql, step)(step))
    except StopIteration as done:
        result: IngestResult = done.value
        return result


def _handler(sql: Any, step: Step) -> Callable[[Any], Any | Awaitable[Any]]:
    # The one mapping from a step to the backend's method, for both drivers.
    if isinstance(step, RecordReceipt):
        return sql.record_receipt  # type: ignore[no-any-return]
    if isinstance(step, LoadState):
        return sql.load_state  # type: ignore[no-any-return]
    return sql.write  # type: ignore[no-any-return]

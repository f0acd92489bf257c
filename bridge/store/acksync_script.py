"""Ack sync's transaction script, written once for every backend (as :mod:`bridge.store.ingest` is for ingest).

Inside ONE transaction: mark the PagerDuty webhook applied (when there is one; already applied: stop, so a
redelivered outbox item changes nothing), load the :class:`~bridge.acksync.SyncState` of the keys, run a
pure decision of :mod:`bridge.acksync`, write its changes (ack rows, audit rows, closed incidents,
outbox rows). A backend supplies the SQL of the three steps and its transaction; what it must guarantee:
``load`` sees every ack sync committed before, and no other ack sync commits until this one ends (SQLite:
one writer; PostgreSQL: a transaction-scoped advisory lock taken by ``load``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.acksync import Changes, SyncState


@dataclass(frozen=True, slots=True)
class ClaimWebhook:
    """Mark the webhook applied; the answer is False when it already was."""

    webhook_id: str
    now: float


@dataclass(frozen=True, slots=True)
class LoadSync:
    """The incidents ``keys`` (None: every open incident) with their ack state; the answer is a SyncState."""

    keys: Sequence[str] | None


@dataclass(frozen=True, slots=True)
class WriteSync:
    changes: Changes
    now: float


Step = ClaimWebhook | LoadSync | WriteSync
Script = Generator[Step, Any, Changes | str]
Decide = Callable[[SyncState], Changes | str]


class AckSql(Protocol):
    def claim_webhook(self, step: ClaimWebhook) -> bool: ...

    def load_sync(self, step: LoadSync) -> SyncState: ...

    def write_sync(self, step: WriteSync) -> None: ...


class AsyncAckSql(Protocol):
    async def claim_webhook(self, step: ClaimWebhook) -> bool: ...

    async def load_sync(self, step: LoadSync) -> SyncState: ...

    async def write_sync(self, step: WriteSync) -> None: ...


def script(keys: Sequence[str] | None, decide: Decide, *, now: float, webhook_id: str | None = None) -> Script:
    """The transaction script (see module docstring); a string result is a refusal, nothing written."""
    if webhook_id is not None:
        first: bool = yield ClaimWebhook(webhook_id, now)
        if not first:
            return Changes()
    state: SyncState = yield LoadSync(keys)
    changes = decide(state)
    if isinstance(changes, Changes):
        yield WriteSync(changes, now)
    return changes


def run(steps: Script, sql: AckSql) -> Changes | str:
    """Drive the script with a synchronous backend."""
    try:
        step = next(steps)
        while True:
            step = steps.send(_handler(sql, step)(step))
    except StopIteration as done:
        result: Changes | str = done.value
        return result


async def run_async(steps: Script, sql: AsyncAckSql) -> Changes | str:
    """Drive the script with an awaited backend."""
    try:
        step = next(steps)
        while True:
            step = steps.send(await _handler(sql, step)(step))
    except StopIteration as done:
        result: Changes | str = done.value
        return result


def _handler(sql: Any, step: Step) -> Callable[[Any], Any | Awaitable[Any]]:
    if isinstance(step, ClaimWebhook):
        return sql.claim_webhook  # type: ignore[no-any-return]
    if isinstance(step, LoadSync):
        return sql.load_sync  # type: ignore[no-any-return]
    return sql.write_sync  # type: ignore[no-any-return]

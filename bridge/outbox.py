"""The delivery worker: drains the store's outbox into the sinks, in order per key, at least once.

- Only the head item of each ordering key is in flight (the store's claim hands out heads only, under a
  lease), so a resolve never overtakes its trigger; keys proceed independently, at most
  ``max_in_flight`` at once PER SINK: a sink that is slow or rate limited (Statuspage: 1 request/s, its
  deliveries wait for one another) fills its own slots only, so it never holds another sink back.
- ``Delivered`` deletes the item, only after the sink answered: a crash in between redelivers it
  (PagerDuty's dedup_key absorbs the duplicate). ``RetryLater`` keeps it at the head until ``after``
  (Retry-After, or the sink's own rate limiter) or, without one, an exponential backoff with jitter.
  ``DeadLetter`` moves it aside with the API's error and lets the key's next item go.
- A sink with a local rate limiter (:class:`HoldsBack`) is asked, for each claimed item and before any
  delivery starts, whether it must wait; the items held back are put back with one store write for the
  whole claim, not one task and one write each. After an alert storm every new event is claimed once
  and held back, so this is the outbox's cost per webhook while the limit is reached.
- The worker wakes at once when an ingest queued something (:meth:`OutboxWorker.wake`), when a delivery
  finished, when the store's next due item falls due (:meth:`Store.next_due`, so every stored retry
  time is honoured, also the ones found at start), and at least every ``sweep_interval``.
- A sink whose last answer was a failure of the upstream itself (timeout, network error, 5xx) gets one
  delivery at a time, ``retry_initial`` after the last failure, until one succeeds: a hanging upstream holds
  one slot for one request timeout, not every slot for several, a failing one gets about a request a second
  instead of the whole queue, and the items not probed keep their short backoff, so they all go as soon as
  the upstream answers. A 429 is not such a failure: its Retry-After already says when to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from bridge import audit
from bridge.metrics import BridgeMetrics
from bridge.sinks.base import Delivered, DeliveryOutcome, OutboxItem, RetryLater, Sink
from bridge.store.base import Store

log = logging.getLogger(__name__)
PRUNE_EVERY = 3600.0  # seconds between retention sweeps
LEAD_EVERY = 1.0  # seconds between asking the election about a one-replica sink
PROBE_WAIT = "upstream failing: waiting for the probe"  # the hold of items behind a failing sink's one trial


@runtime_checkable
class OneReplica(Protocol):
    """A sink whose limits and state live in the process (Statuspage: its rate limiter and its view of the
    page), so with several replicas (PostgreSQL) only the elected one may deliver to it."""

    one_replica: bool


@runtime_checkable
class HoldsBack(Protocol):
    """A sink that can tell, without sending, that an item must wait for its local rate limit."""

    def held_back(self, item: OutboxItem) -> RetryLater | None:
        """The hold (``local=True``) if ``item`` may not be sent now, else None."""
        ...


class OutboxWorker:
    """Delivers queued items; ``run()`` until ``stop()``."""

    def __init__(
        self,
        store: Store,
        sinks: Mapping[str, Sink],
        *,
        clock: Callable[[], float] = time.time,
        metrics: BridgeMetrics | None = None,
        max_in_flight: int = 16,
        retry_initial: float = 1.0,
        retry_max: float = 300.0,
        sweep_interval: float = 5.0,
        lease: float = 300.0,
        retention: float | None = None,
        audit_retention: float | None = None,
        jitter: Callable[[], float] = random.random,
        coalesce: float = 0.005,
    ) -> None:
        self._store = store
        self._sinks = dict(sinks)
        self._clock = clock
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._sweep = sweep_interval
        self._lease = lease
        self._retention = retention
        self._audit_retention = audit_retention
        self._jitter = jitter
        self._coalesce = coalesce
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: dict[str, int] = dict.fromkeys(self._sinks, 0)  # deliveries in flight per sink
        self._leading: dict[str, tuple[float, bool]] = {}  # one-replica sink -> (checked at, elected)
        self._probing: set[str] = set()  # sinks whose upstream failed: one probing delivery at a time
        self._probe_at: dict[str, float] = {}  # ... and no sooner than this after the last failure
        self._last_prune = 0.0
        self._stopping = False
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def wake(self) -> None:
        """Look for work now (called after an ingest committed events)."""
        self._wake.set()

    def add_sink(self, name: str, sink: Sink) -> None:
        """Deliver ``name``'s items through ``sink`` from now on: a sink a reload enabled, or the one that
        replaces the dry run. The maps are replaced, not changed, so a loop suspended over them goes on with
        the old ones."""
        self._sinks = {**self._sinks, name: sink}
        self._busy = {**self._busy, name: self._busy.get(name, 0)}
        self._wake.set()

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number ``attempts + 1``: doubling from retry_initial, capped, 50-100% jitter."""
        ceiling: float = min(self._retry_max, self._retry_initial * 2.0 ** min(attempts, 32))
        return ceiling / 2 + self._jitter() * ceiling / 2

    async def run(self) -> None:
        """The delivery loop."""
        self._running = True
        try:
            while not self._stopping:
                self._wake.clear()
                await self._fill()
                await self._maybe_prune()
                timeout = await self._until_due()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                    # A burst of commits becomes one claim instead of one per webhook.
                    await asyncio.sleep(self._coalesce)
        finally:
            self._running = False

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop claiming; give in-flight deliveries ``grace`` seconds, then cancel them (they stay queued)."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    def _free(self, name: str) -> int:
        """Deliveries ``name`` may start now: its own limit; while its upstream fails, one probe at a time,
        ``retry_initial`` after the last failure."""
        free = self._max_in_flight - self._busy.get(name, 0)
        if name in self._probing:
            if self._clock() < self._probe_at.get(name, 0.0):
                return 0
            free = min(free, 1 - self._busy.get(name, 0))
        return max(free, 0)

    async def _until_due(self) -> float:
        """Seconds until the earliest stored item a free slot could take falls due (capped by the sweep)."""
        now = self._clock()
        earliest: float | None = None
        for name in self._sinks:
            probe_at = self._probe_at.get(name, 0.0)
            if name in self._probing and not self._busy.get(name, 0) and now < probe_at:
                earliest = probe_at if earliest is None else min(earliest, probe_at)
                continue  # the next probe's time (a due item is then claimed at once)
            if self._free(name) <= 0:
                continue  # a finishing delivery wakes the worker
            if not self._leading.get(name, (0.0, True))[1]:
                continue  # not elected for it: its items are not ours to wait for
            try:
                due = await self._store.next_due(name, now=now)
            except Exception as exc:
                log.error("outbox next_due failed", extra={"kv": {"sink": name, "err": str(exc)}})
                return self._sweep
            if due is not None and (earliest is None or due < earliest):
                earliest = due
        if earliest is None:
            return self._sweep
        return min(self._sweep, max(earliest - now, 0.0))

    async def _elected(self, name: str, sink: Sink) -> bool:
        """Whether this replica may deliver to ``sink`` (always, unless it is a one-replica sink); the election
        is asked at most once a second, and a replica that is not elected campaigns at each ask."""
        if not (isinstance(sink, OneReplica) and sink.one_replica):
            return True
        now = self._clock()
        checked = self._leading.get(name)
        if checked is not None and now - checked[0] < LEAD_EVERY:
            return checked[1]
        try:
            elected = await self._store.lead(f"sink:{name}")
        except Exception as exc:
            log.error("outbox election failed", extra={"kv": {"sink": name, "err": str(exc)}})
            elected = False
        self._leading[name] = (now, elected)
        return elected

    async def _fill(self) -> None:
        for name, sink in self._sinks.items():
            if not await self._elected(name, sink):
                continue  # another replica delivers to this sink
            while True:  # again while a full claim was (partly) held back: more may be due
                free = self._free(name)
                probing = name in self._probing
                # While the upstream fails, the due items beyond the one probe are claimed to be held until
                # the next probe: their due time moves, which is how a trigger resolved meanwhile is known
                # to be late (OutboxItem.superseded) instead of paging at the recovery.
                wanted = self._max_in_flight - self._busy.get(name, 0) if probing else free
                if wanted <= 0 or self._stopping:
                    break
                now = self._clock()
                try:
                    items = await self._store.claim(name, now=now, limit=wanted, lease=self._lease)
                except Exception as exc:
                    log.error("outbox claim failed", extra={"kv": {"sink": name, "err": str(exc)}})
                    return
                held = self._start(name, sink, items[:free])
                if probing:
                    after = max(self._probe_at.get(name, 0.0) - now, self._retry_initial)
                    wait = RetryLater(after=after, error=PROBE_WAIT, local=True)
                    held += [(item, wait) for item in items[free:]]
                if held:
                    await self._hold(name, held)
                if len(items) < wanted or not held:
                    break

    def _start(self, name: str, sink: Sink, items: list[OutboxItem]) -> list[tuple[OutboxItem, RetryLater]]:
        """Start a delivery for each item the sink takes now; answer the ones it holds back."""
        held: list[tuple[OutboxItem, RetryLater]] = []
        check = sink.held_back if isinstance(sink, HoldsBack) else None
        for item in items:
            hold = check(item) if check is not None else None
            if hold is not None:
                held.append((item, hold))
                continue
            task = asyncio.create_task(self._deliver(name, sink, item))
            self._tasks.add(task)
            self._busy[name] = self._busy.get(name, 0) + 1
            task.add_done_callback(functools.partial(self._done, name))
        return held

    async def _hold(self, name: str, held: list[tuple[OutboxItem, RetryLater]]) -> None:
        now = self._clock()
        retries = [(item.id, now + max(hold.after or 0.0, 0.0), hold.error) for item, hold in held]
        lines = [audit.delivery_entry(item, now, audit.HELD, _held_text(name, hold, at, now))
                 for (item, hold), (_, at, _) in zip(held, retries, strict=True)]
        try:
            await self._store.retry_many(retries, attempted=False, audit=lines)
        except Exception as exc:  # the leases expire and the items are claimed again
            kv = {"sink": name, "items": len(held), "err": str(exc)}
            log.error("cannot record held-back items", extra={"kv": kv})
            return
        if self._metrics is not None:
            self._metrics.delivery(name, "throttled").inc(len(held))

    def _done(self, name: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._busy[name] -= 1
        self._wake.set()  # the key's next item may go, and a slot is free

    async def _deliver(self, name: str, sink: Sink, item: OutboxItem) -> None:
        try:
            outcome: DeliveryOutcome = await sink.deliver(item)
        except Exception as exc:  # a sink bug: keep the item, retry with backoff, leave a traceback
            log.exception("sink raised", extra={"kv": {"sink": name, "item": item.id}})
            outcome = RetryLater(after=None, error=f"sink raised {type(exc).__name__}: {exc}")
        self._note_health(name, outcome)
        try:
            await self._record(name, item, outcome)
        except Exception as exc:  # the lease expires and the item is delivered again: at least once
            log.error("cannot record delivery outcome", extra={"kv": {"sink": name, "item": item.id, "err": str(exc)}})

    def _note_health(self, name: str, outcome: DeliveryOutcome) -> None:
        # A timeout, network error or 5xx says the upstream itself is failing; any answer it gave on
        # purpose (delivered, refused, 429 with its Retry-After) says it is back. A local hold says nothing.
        if isinstance(outcome, RetryLater):
            if outcome.local:
                return
            if outcome.status == 0 or outcome.status >= 500:
                # The next probe waits retry_initial: a failing upstream answering 5xx at once gets about one
                # request a second, not the whole queue, and the items not probed keep their short backoff.
                self._probe_at[name] = self._clock() + self._retry_initial
                if name not in self._probing:
                    self._probing.add(name)
                    log.warning("sink upstream failing: one delivery at a time until one succeeds",
                                extra={"kv": {"sink": name, "error": outcome.error}})
                return
        if name in self._probing:
            self._probing.discard(name)
            log.info("sink upstream back: deliveries in parallel again", extra={"kv": {"sink": name}})

    async def _record(self, name: str, item: OutboxItem, outcome: DeliveryOutcome) -> None:
        now = self._clock()
        if isinstance(outcome, Delivered):
            line = audit.delivery_entry(item, now, audit.DELIVERED, _delivered_text(name, outcome))
            await self._store.mark_delivered(item.id, audit=[line])
            self._count(name, "delivered")
            if outcome.late and self._metrics is not None:
                self._metrics.late(name, outcome.late).inc()
            if self._metrics is not None:
                self._metrics.latency(name).observe(max(now - item.created_at, 0.0))
        elif isinstance(outcome, RetryLater):
            delay = outcome.after if outcome.after is not None else self.backoff(item.attempts)
            at = now + max(delay, 0.0)
            if outcome.local:
                line = audit.delivery_entry(item, now, audit.HELD, _held_text(name, outcome, at, now))
            else:
                text = (f"attempt {item.attempts + 1}: {audit.sink_title(name)} said {outcome.error};"
                        f" next try at {audit.clock_time(at, now)}")
                line = audit.delivery_entry(item, now, audit.RETRY, text)
            await self._store.retry_at(item.id, at=at, error=outcome.error, attempted=not outcome.local, audit=[line])
            self._count(name, "throttled" if outcome.local else "retry")
            if not outcome.local:
                log.info(
                    "delivery to retry",
                    extra={"kv": {"sink": name, "item": item.id, "key": item.ordering_key, "error": outcome.error,
                                  "attempts": item.attempts + 1, "retry_in": round(delay, 3)}},
                )
        else:
            text = f"dead letter after attempt {item.attempts + 1}: {audit.sink_title(name)} said {outcome.error}"
            line = audit.delivery_entry(item, now, audit.DEAD_LETTER, text)
            await self._store.dead_letter(item.id, error=outcome.error, status=outcome.status, now=now, audit=[line])
            self._count(name, "dead_letter")
            log.warning(
                "delivery dead-lettered",
                extra={"kv": {"sink": name, "item": item.id, "key": item.ordering_key, "error": outcome.error}},
            )

    def _count(self, sink: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.delivery(sink, result).inc()

    async def _maybe_prune(self) -> None:
        now = self._clock()
        if self._retention is None or now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        try:
            if not await self._store.lead("prune"):  # another replica prunes (PostgreSQL)
                return
            audit_before = None if self._audit_retention is None else now - self._audit_retention
            removed = await self._store.prune(before=now - self._retention, audit_before=audit_before)
        except Exception as exc:
            log.error("store prune failed", extra={"kv": {"err": str(exc)}})
            return
        if removed:
            log.info("pruned old store rows", extra={"kv": {"rows": removed}})


def _held_text(sink: str, hold: RetryLater, at: float, now: float) -> str:
    until = audit.clock_time(at, now)
    if hold.error == PROBE_WAIT:  # not the sink's rate limit: its upstream failed, one probe goes first
        return f"held while {audit.sink_title(sink)} fails, behind one trial delivery, until {until}"
    return f"held by {audit.sink_title(sink)}'s rate limit until {until}"


def _delivered_text(sink: str, outcome: Delivered) -> str:
    text = f"{audit.sink_title(sink)} accepted it" + (f" (HTTP {outcome.status})" if outcome.status else "")
    if outcome.info:
        text += f": {outcome.info}"
    return text

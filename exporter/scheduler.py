"""Background probing: every target at its interval, with jitter, backoff and a concurrency limit.

The scheduler keeps one due time per target (monotonic seconds from an injected clock) and a loop
that starts the probes that are due, at most ``concurrency`` at once. Timing rules:

- first probe (at start, or when a target is added): uniform in ``[0, jitter * interval]``, so a
  restart does not wait a whole interval but 10,000 targets do not start in the same millisecond;
- after a success: ``interval * (1 + u)``, ``u`` uniform in ``[-jitter/2, +jitter/2]``;
- after a failure: ``retry_backoff`` doubling per consecutive failure, capped at the interval.

``concurrency`` is a ceiling, not a target: the number of probes admitted grows by one per probe
that finished since the scheduler last ran, when that wake-up was prompt, and shrinks by a quarter
when it waited more than ``LOOP_LAG_LIMIT`` behind other callbacks (like TCP's congestion window in
slow start). While the limit is full and targets wait, a timer every ``ADMISSION_TICK`` checks the
loop too: on time, nothing is queued, the probes in flight wait on their peers (slow or dead ones),
and the limit doubles. When the CPU is the bottleneck (10,000 targets due at once),
more probes in flight would only queue in the event loop, hold ~45 KB of OpenSSL state each and time
the queue instead of the peer. The limit never falls below ``MIN_ADMITTED``, so a loop kept busy by
other work still probes.

A probe that raises or overruns its module timeout (plus a grace) becomes a failed result with reason
``internal``: the loop never dies of a probe bug. Removing a target drops its schedule and results;
a probe of a removed target that finishes later is discarded.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from exporter.config import Policies
from exporter.probes.base import ProbeFn, ProbeRequest, ProbeResult, Reason
from exporter.results import ResultStore
from exporter.targets import ResolvedTarget

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
ProbeHook = Callable[[ResolvedTarget, Sequence[ProbeResult], float], None]

# A probe gets this much beyond its module timeout before the scheduler gives up on it.
TIMEOUT_GRACE = 1.0
# A finishing probe's wake-up of the scheduler that waits longer than this behind other callbacks
# means the event loop (the CPU), not the peers, limits the probes.
LOOP_LAG_LIMIT = 0.010
MIN_ADMITTED = 16  # probes admitted whatever the lag (fewer if concurrency is lower)
MAX_BACKOFF_DOUBLINGS = 64  # retry_backoff x 2**64 is beyond any interval, and far from float overflow
ADMISSION_TICK = 0.1  # seconds between checks of the loop while the limit is full and targets wait


class Admission:
    """How many probes may be in flight now, within [min(concurrency, MIN_ADMITTED), concurrency]."""

    def __init__(self, concurrency: int) -> None:
        self.limit = self.floor(concurrency)

    @staticmethod
    def floor(concurrency: int) -> int:
        return min(concurrency, MIN_ADMITTED)

    def update(self, lag: float, finished: int, concurrency: int) -> None:
        """``finished`` probes ended since the scheduler last ran; the first one's wake-up took ``lag`` seconds."""
        if lag > LOOP_LAG_LIMIT:
            self.limit = max(self.floor(concurrency), self.limit * 3 // 4)
        else:
            self.limit = min(concurrency, self.limit + finished)

    def clamp(self, concurrency: int) -> None:
        """Apply a new ceiling (reload)."""
        self.limit = max(self.floor(concurrency), min(concurrency, self.limit))


@dataclass(slots=True)
class _Slot:
    target: ResolvedTarget
    due: float
    failures: int = 0
    running: bool = False
    generation: int = 0  # bumped when the target is replaced or removed


@dataclass(frozen=True, slots=True)
class Timing:
    """Scheduling knobs from GlobalSettings."""

    concurrency: int = 256
    jitter: float = 0.1
    retry_backoff: float = 15.0


class Scheduler:
    """Probes targets in the background and records results in a ResultStore."""

    def __init__(
        self,
        probe: ProbeFn,
        store: ResultStore,
        *,
        timing: Timing = Timing(),
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_result: ProbeHook | None = None,
        timeout_grace: float = TIMEOUT_GRACE,
    ) -> None:
        self._probe = probe
        self._store = store
        self._timing = timing
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_result = on_result
        self._grace = timeout_grace
        self._slots: dict[str, _Slot] = {}
        self._heap: list[tuple[float, int, str, int]] = []  # (due, seq, key, generation)
        self._seq = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self.admission = Admission(timing.concurrency)
        self._woken_at: float | None = None  # when a finishing probe first woke the scheduler
        self._finished = 0  # probes finished since the scheduler last ran
        self._tick_at: float | None = None  # when the admission check's timer is due
        self.policies = Policies()  # replaced on reload

    def set_timing(self, timing: Timing) -> None:
        """Apply new global knobs (reload); the concurrency limit applies to probes started from now."""
        self._timing = timing
        self.admission.clamp(timing.concurrency)
        self._wake.set()

    def set_targets(self, targets: Sequence[ResolvedTarget]) -> None:
        """Apply a new target set: added ones are probed soon, removed ones dropped with their results."""
        wanted = {t.key: t for t in targets}
        for key in list(self._slots):
            if key not in wanted:
                self._slots.pop(key).generation += 1
                self._store.remove(key)
        now = self._clock()
        for key, target in wanted.items():
            slot = self._slots.get(key)
            if slot is None:
                self._slots[key] = slot = _Slot(target, now + self._first_delay(target))
                self._push(key, slot)
            elif slot.target != target:
                reprobe = slot.target.module != target.module or slot.target.address != target.address
                slot.target = target
                self._store.update_target(target)
                if reprobe:
                    slot.generation += 1
                    slot.due = now + self._first_delay(target)
                    if not slot.running:
                        self._push(key, slot)
        self._wake.set()

    def targets(self) -> list[ResolvedTarget]:
        return [slot.target for slot in self._slots.values()]

    def target(self, key: str) -> ResolvedTarget | None:
        """The scheduled target with this key (its name), if any."""
        slot = self._slots.get(key)
        return slot.target if slot else None

    def __len__(self) -> int:
        return len(self._slots)

    def due_times(self) -> dict[str, float]:
        """Target key -> next due time (monotonic); for tests and debugging."""
        return {key: slot.due for key, slot in self._slots.items()}

    async def run(self) -> None:
        """Run until cancelled; cancelling also cancels the probes in flight.

        Run again after a failure (certpager.tasks restarts it), it picks up every target where it was:
        the probes the failure cancelled are due now, the others keep their due times.
        """
        self._requeue()
        try:
            while True:
                self._adapt()
                self._start_due()
                await self._wait_next()
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _requeue(self) -> None:
        # A probe cancelled with the previous run never rescheduled its target (its due time is past,
        # so it is probed now): rebuild the heap from the slots, dropping every stale entry.
        self._heap = []
        for key, slot in self._slots.items():
            slot.running = False
            slot.generation += 1
            self._push(key, slot)

    def _adapt(self) -> None:
        # Lags are read on the scheduler's own clock: virtual in tests, where they are 0 unless a test moves it.
        now, concurrency = self._clock(), self._timing.concurrency
        if self._woken_at is not None:
            self.admission.update(now - self._woken_at, self._finished, concurrency)
            self._woken_at, self._finished = None, 0
        if self._tick_at is not None and self._tick_at <= now <= self._tick_at + LOOP_LAG_LIMIT:
            # The timer fired on time with the limit full: the loop is idle and the probes in flight
            # wait on their peers, so twice as many may run. A late timer says nothing new (the
            # finishing probes' wake-ups measure the lag).
            self.admission.update(0.0, self.admission.limit, concurrency)
        self._tick_at = None

    async def _wait_next(self) -> None:
        self._wake.clear()
        delay = self._heap[0][0] - self._clock() if self._heap else None
        if self.in_flight >= self.admission.limit:
            # At the limit: a finishing probe (or a change) lets another start; while targets wait
            # below the ceiling, the admission timer checks whether the loop could take more.
            waiting = delay is not None and delay <= 0
            delay = ADMISSION_TICK if waiting and self.admission.limit < self._timing.concurrency else None
            if delay is not None:
                self._tick_at = self._clock() + delay
        elif delay is not None and delay <= 0:
            return
        waiter = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self._sleep(delay)) if delay is not None else None
        pending = {waiter} | ({sleeper} if sleeper else set())
        try:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in pending:
                fut.cancel()

    def _start_due(self) -> None:
        # A task is created only when a probe may start: 10,000 due targets wait as heap entries,
        # not as 10,000 suspended tasks (memory), and the limit needs no semaphore.
        now = self._clock()
        while self._heap and self._heap[0][0] <= now and self.in_flight < self.admission.limit:
            _, _, key, generation = heapq.heappop(self._heap)
            slot = self._slots.get(key)
            if slot is None or slot.generation != generation or slot.running:
                continue  # stale heap entry: removed, rescheduled, or already probing
            slot.running = True
            self.in_flight += 1
            task = asyncio.create_task(self._probe_slot(key, slot, generation))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _probe_slot(self, key: str, slot: _Slot, generation: int) -> None:
        target = slot.target
        try:
            started = self._clock()
            results = await self.probe_target(target)
            elapsed = self._clock() - started
        finally:
            self.in_flight -= 1
            slot.running = False
            if self._woken_at is None:
                self._woken_at = self._clock()
            self._finished += 1
            self._wake.set()
        if self._slots.get(key) is not slot:
            return  # removed while probing: its results must not come back
        try:
            self._store.record(slot.target, results)
            if self._on_result is not None:
                self._on_result(target, results, elapsed)
        except Exception:
            # A bug in recording must not end this target's schedule: it would never be probed again.
            log.exception("recording a probe result failed", extra={"kv": {"target": target.target}})
        ok = any(r.success for r in results)
        slot.failures = 0 if ok else slot.failures + 1
        # A target whose module changed mid-probe gets a prompt probe with its new settings.
        delay = self._next_delay(slot) if slot.generation == generation else self._first_delay(slot.target)
        slot.due = self._clock() + delay
        self._push(key, slot)

    async def probe_target(self, target: ResolvedTarget, timeout: float | None = None) -> list[ProbeResult]:
        """Probe one target now; never raises for the target's failures or for probe bugs."""
        timeout = target.module.timeout if timeout is None else timeout
        request = ProbeRequest(target=target.target, module=target.module, timeout=timeout,
                               labels=target.labels, address=target.address, policies=self.policies)
        started = self._wall()
        try:
            # A timeout scope, not wait_for: no extra task per probe.
            async with asyncio.timeout(timeout + self._grace):
                results = await self._probe(request)
        except TimeoutError:
            log.error("probe overran its timeout", extra={"kv": {"target": target.target, "timeout": timeout}})
            return [ProbeResult(success=False, reason=Reason.INTERNAL, detail="probe overran its timeout",
                                started_at=started, duration=self._wall() - started)]
        except Exception:
            log.exception("probe raised", extra={"kv": {"target": target.target}})
            return [ProbeResult(success=False, reason=Reason.INTERNAL, detail="probe raised an exception",
                                started_at=started, duration=self._wall() - started)]
        if not results:
            return [ProbeResult(success=False, reason=Reason.NO_CERTIFICATE, detail="probe returned no result",
                                started_at=started, duration=self._wall() - started)]
        return results

    def _first_delay(self, target: ResolvedTarget) -> float:
        return self._rng.uniform(0, self._timing.jitter * target.interval)

    def _next_delay(self, slot: _Slot) -> float:
        interval = slot.target.interval
        if slot.failures:
            # The exponent is capped: 2.0 ** 1024 overflows, and a target failing that long must still be probed.
            return min(self._timing.retry_backoff * 2.0 ** min(slot.failures - 1, MAX_BACKOFF_DOUBLINGS), interval)
        half = self._timing.jitter / 2
        return interval * (1 + self._rng.uniform(-half, half))

    def _push(self, key: str, slot: _Slot) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (slot.due, self._seq, key, slot.generation))

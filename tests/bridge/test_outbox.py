"""The outbox worker against a recording sink: order, no overtaking, Retry-After, backoff, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

from prometheus_client import CollectorRegistry

from bridge.alertmanager import parse
from bridge.decisions import Policy
from bridge.metrics import BridgeMetrics
from bridge.outbox import OutboxWorker
from bridge.sinks.base import DeadLetter, Delivered, RetryLater
from bridge.store.base import Receipt
from tests.bridge.conftest import Clock, RecordingSink, alert, body


async def until(condition, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def ingest(store, *alerts, now=1_800_000_000.0):
    raw = body(*alerts)
    return await store.ingest(Receipt("alertmanager", raw, now), parse(raw), Policy(), sinks=["pagerduty"])


@contextlib.asynccontextmanager
async def running(store, sink, clock, **kw):
    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry)
    worker = OutboxWorker(store, {"pagerduty": sink}, clock=clock, metrics=metrics, **kw)
    task = asyncio.create_task(worker.run())
    try:
        yield worker, registry
    finally:
        await worker.stop(grace=1.0)
        await asyncio.wait_for(task, 5)


def sample(registry, result):
    return registry.get_sample_value("certpager_bridge_deliveries_total", {"sink": "pagerduty", "result": result})


async def test_resolve_never_overtakes_its_trigger(store, clock):
    sink = RecordingSink()
    release = asyncio.Event()

    async def gate(item):
        if item.payload["action"] == "trigger":
            await release.wait()

    sink.gate = gate
    await ingest(store, alert())
    await ingest(store, alert("resolved"))
    await ingest(store, alert(certificate="other.example.com"))
    async with running(store, sink, clock, sweep_interval=0.05) as (_worker, registry):
        await until(lambda: len(sink.seen) == 2)
        await asyncio.sleep(0.2)  # several sweeps: the resolve must still wait behind its trigger
        assert [(i.payload["component"], i.payload["action"]) for i in sink.seen] == [
            ("api.example.com", "trigger"), ("other.example.com", "trigger")]
        release.set()
        # The counter moves after the commit that empties the outbox: wait for it, not the table.
        await until(lambda: sample(registry, "delivered") == 3)
        assert store.pending() == []
        assert sink.seen[2].payload["action"] == "resolve"


async def test_retry_after_is_honoured(store):
    clock = Clock()
    sink = RecordingSink(answers=[RetryLater(after=30.0, error="429 rate limited", status=429)])
    await ingest(store, alert())
    async with running(store, sink, clock, sweep_interval=0.05) as (worker, registry):
        await until(lambda: len(sink.seen) == 1 and sample(registry, "retry") == 1)
        clock.advance(29.0)
        worker.wake()
        await asyncio.sleep(0.2)
        assert len(sink.seen) == 1
        clock.advance(1.0)
        worker.wake()
        await until(lambda: len(sink.seen) == 2 and store.pending() == [])
        assert sink.seen[1].attempts == 1


async def test_backoff_doubles_with_jitter_up_to_the_cap(store):
    worker = OutboxWorker(store, {}, retry_initial=1.0, retry_max=300.0, jitter=lambda: 1.0)
    assert [worker.backoff(a) for a in range(11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    low = OutboxWorker(store, {}, retry_initial=1.0, retry_max=300.0, jitter=lambda: 0.0)
    assert [low.backoff(a) for a in (0, 3, 50)] == [0.5, 4.0, 150.0]


async def test_retry_without_after_uses_backoff(store):
    clock = Clock()
    sink = RecordingSink(answers=[RetryLater(after=None, error="503"), RetryLater(after=None, error="timeout")])
    await ingest(store, alert())
    async with running(store, sink, clock, sweep_interval=0.05, retry_initial=10.0, jitter=lambda: 1.0) as (w, r):
        await until(lambda: len(sink.seen) == 1 and sample(r, "retry") == 1)
        clock.advance(9.9)
        w.wake()
        await asyncio.sleep(0.1)
        assert len(sink.seen) == 1
        clock.advance(0.1)
        w.wake()
        await until(lambda: len(sink.seen) == 2 and sample(r, "retry") == 2)
        clock.advance(19.9)  # second retry: 20 s
        w.wake()
        await asyncio.sleep(0.1)
        assert len(sink.seen) == 2
        clock.advance(0.1)
        w.wake()
        await until(lambda: store.pending() == [])


async def test_dead_letter_is_recorded_and_the_key_moves_on(store, clock):
    sink = RecordingSink(answers=[DeadLetter(error="400 Event object is invalid: payload.summary", status=400)])
    await ingest(store, alert())
    await ingest(store, alert("resolved"))
    async with running(store, sink, clock) as (_worker, registry):
        await until(lambda: sample(registry, "delivered") == 1)
        assert store.pending() == []
        assert sink.actions()[1][1] == "resolve"
        (dead,) = store.dead_letters()
        assert (dead.error, dead.status) == ("400 Event object is invalid: payload.summary", 400)
        assert (sample(registry, "dead_letter"), sample(registry, "delivered")) == (1, 1)


async def test_a_raising_sink_is_a_retry(store, clock):
    class Broken(RecordingSink):
        async def deliver(self, item):
            self.seen.append(item)
            raise RuntimeError("bug")

    sink = Broken()
    await ingest(store, alert())
    async with running(store, sink, clock, retry_initial=3600.0) as (_worker, registry):
        await until(lambda: sample(registry, "retry") == 1)
        (item,) = store.pending()
        assert item.attempts == 1


async def test_wakes_on_commit_without_waiting_for_the_sweep(store, clock):
    sink = RecordingSink()
    async with running(store, sink, clock, sweep_interval=60.0) as (worker, _registry):
        await asyncio.sleep(0.05)
        await ingest(store, alert())
        started = time.monotonic()
        worker.wake()
        await until(lambda: len(sink.seen) == 1, timeout=1.0)
        assert time.monotonic() - started < 1.0


async def test_concurrency_is_bounded(store, clock):
    sink = RecordingSink()
    release = asyncio.Event()
    in_flight, peak = 0, 0

    async def gate(item):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1

    sink.gate = gate
    for i in range(6):
        await ingest(store, alert(certificate=f"c{i}.example.com"))
    async with running(store, sink, clock, max_in_flight=2, sweep_interval=0.05) as (_worker, _registry):
        await until(lambda: len(sink.seen) == 2)
        await asyncio.sleep(0.2)
        assert (len(sink.seen), peak) == (2, 2)
        release.set()
        await until(lambda: store.pending() == [])
        assert (len(sink.seen), peak) == (6, 2)


class HoldingSink(RecordingSink):
    """A sink whose local limit holds back every item until ``open_at`` (the worker asks before delivering)."""

    def __init__(self, clock, open_at: float) -> None:
        super().__init__()
        self.clock = clock
        self.open_at = open_at
        self.asked = 0

    def held_back(self, item):
        self.asked += 1
        wait = self.open_at - self.clock()
        return RetryLater(after=wait, error="rate limit (local)", local=True) if wait > 0 else None


async def test_held_back_items_are_put_back_without_a_delivery(store):
    clock = Clock()
    sink = HoldingSink(clock, open_at=clock.now + 60.0)
    for i in range(5):
        await ingest(store, alert(certificate=f"c{i}.example.com"))
    commits = store.commits
    # Two slots for five items: the worker claims again while whole claims are held back.
    async with running(store, sink, clock, max_in_flight=2, sweep_interval=5.0) as (worker, registry):
        await until(lambda: sample(registry, "throttled") == 5)
        assert sink.seen == [] and sink.asked == 5 and worker.in_flight == 0
        # Nothing was sent, so nothing was attempted: backoff and dead letters count real sends only.
        assert [(i.attempts, i.payload["component"]) for i in store.pending()] == [
            (0, f"c{i}.example.com") for i in range(5)]
        # 3 claims + 3 writes for the held-back items (not 5 of each) + 1 look for the next due item
        assert store.commits - commits <= 7
        clock.advance(60.0)
        worker.wake()
        await until(lambda: sample(registry, "delivered") == 5)
        assert sorted(i.payload["component"] for i in sink.seen) == [f"c{i}.example.com" for i in range(5)]
        assert sample(registry, "throttled") == 5


class LocallyLimitedThenFailingSink(RecordingSink):
    """Holds every item back ``holds`` times from deliver() itself, then answers 503 once, then 202."""

    def __init__(self, holds: int) -> None:
        super().__init__()
        self.holds = holds
        self.calls = 0

    async def deliver(self, item):
        self.calls += 1
        if self.calls <= self.holds:
            return RetryLater(after=1.0, error="rate limit (local)", local=True)
        if self.calls == self.holds + 1:
            return RetryLater(after=None, error="503")
        return await super().deliver(item)


async def test_local_holds_do_not_inflate_the_backoff_of_a_real_failure(store):
    # After an alert storm an event may be held back by the local rate limit many times; its first real
    # failure must still get the first retry's backoff (1-2 s here), not the capped one (minutes).
    clock = Clock()
    sink = LocallyLimitedThenFailingSink(holds=10)
    await ingest(store, alert())
    async with running(store, sink, clock, sweep_interval=0.05, retry_initial=1.0, retry_max=300.0) as (
        worker, registry,
    ):
        for calls in range(1, 11):
            await until(lambda n=calls: sink.calls == n)
            clock.advance(1.0)
            worker.wake()
        await until(lambda: sample(registry, "retry") == 1)
        (item,) = store.pending()
        assert item.attempts == 1
        assert item.payload["component"] == "api.example.com"
        clock.advance(2.0)  # the first retry waits at most retry_initial (1 s); a capped one 150-300 s
        worker.wake()
        await until(lambda: sample(registry, "delivered") == 1)


async def test_every_stored_due_time_is_honoured_not_just_the_earliest(store):
    # Real clock, sweep 30 s: a retry due in 0.3 s or 0.6 s must not wait for the sweep.
    sink = RecordingSink(answers=[RetryLater(after=0.3, error="503"), RetryLater(after=0.6, error="503")])
    await ingest(store, alert(certificate="a.example.com"), now=time.time())
    await ingest(store, alert(certificate="b.example.com"), now=time.time())
    async with running(store, sink, time.time, sweep_interval=30.0) as (_worker, registry):
        await until(lambda: sample(registry, "delivered") == 2, timeout=5.0)
    assert len(sink.seen) == 4


async def test_retries_stored_before_a_restart_are_honoured_on_time(store):
    now = time.time()
    await ingest(store, alert(certificate="a.example.com"), now=now)
    await ingest(store, alert(certificate="b.example.com"), now=now)
    first, second = await store.claim("pagerduty", now=now, limit=10, lease=60.0)
    await store.retry_at(first.id, at=now + 0.3, error="503")
    await store.retry_at(second.id, at=now + 0.8, error="503")
    sink = RecordingSink()
    async with running(store, sink, time.time, sweep_interval=30.0) as (_worker, registry):
        await until(lambda: sample(registry, "delivered") == 2, timeout=5.0)
    assert [i.attempts for i in sink.seen] == [1, 1]


class HangingSink(RecordingSink):
    """Times out at once ``timeouts`` times, then hangs every delivery until ``release``; counts the peak."""

    def __init__(self, timeouts: int) -> None:
        super().__init__()
        self.timeouts = timeouts
        self.release = asyncio.Event()
        self.hanging = 0
        self.peak = 0

    async def deliver(self, item):
        self.seen.append(item)
        if self.timeouts > 0:
            self.timeouts -= 1
            return RetryLater(after=None, error="timeout: ReadTimeout")
        self.hanging += 1
        self.peak = max(self.peak, self.hanging)
        try:
            await self.release.wait()
        finally:
            self.hanging -= 1
        return RetryLater(after=None, error="timeout: ReadTimeout") if self.timeouts < 0 else Delivered(status=202)


async def test_a_failing_upstream_gets_one_delivery_at_a_time_until_one_succeeds(store):
    clock = Clock()
    sink = HangingSink(timeouts=5)
    for i in range(5):
        await ingest(store, alert(certificate=f"c{i}.example.com"))
    async with running(store, sink, clock, sweep_interval=0.05, retry_initial=1.0, jitter=lambda: 1.0) as (
        worker, registry,
    ):
        await until(lambda: sample(registry, "retry") == 5)  # all five timed out: the upstream is failing
        clock.advance(2.0)  # every retry is due
        worker.wake()
        await until(lambda: sink.hanging == 1)
        await asyncio.sleep(0.3)  # several sweeps with four more items due: none is sent into the hang
        assert (sink.peak, worker.in_flight) == (1, 1)
        assert sample(registry, "throttled") >= 4  # held until the next probe, not sent into the hang
        sink.release.set()  # the upstream answers: back to parallel deliveries
        await until(lambda: sample(registry, "delivered") == 1)
        clock.advance(1.0)  # the holds end at the next probe's time (retry_initial)
        worker.wake()
        await until(lambda: sample(registry, "delivered") == 5)
    assert sink.peak == 1
    # The four that waited were not sent into the hang, so their backoff did not grow.
    assert sorted(i.attempts for i in sink.seen[5:]) == [1, 1, 1, 1, 1]
    # Their audit lines say why they waited: the failing upstream, not a rate limit.
    held = [e.detail for e in await store.audit_trail() if e.action == "held"]
    assert held and all(re.fullmatch(r"trigger: held while \S+ fails, behind one trial delivery, until \S+", d)
                        for d in held), held


class Elections:
    """The store, with an election this test decides (PostgreSQL's advisory locks, as a fake)."""

    def __init__(self, store, won: bool) -> None:
        self.store, self.won, self.asked = store, won, []

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def lead(self, role: str) -> bool:
        self.asked.append(role)
        return self.won


async def test_a_one_replica_sink_is_delivered_by_the_elected_replica_only(store):
    statuspage = RecordingSink("statuspage")
    statuspage.one_replica = True  # type: ignore[attr-defined]
    pagerduty = RecordingSink()
    elections = Elections(store, won=False)
    raw = body(alert())
    await store.ingest(Receipt("alertmanager", raw, time.time()), parse(raw), Policy(),
                       sinks=["pagerduty", "statuspage"])
    worker = OutboxWorker(elections, {"pagerduty": pagerduty, "statuspage": statuspage}, sweep_interval=0.05)
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: len(pagerduty.seen) == 1)
        await asyncio.sleep(0.3)
        assert statuspage.seen == [] and elections.asked[0] == "sink:statuspage"  # another replica's job
        elections.won = True  # that replica died: this one is elected at its next ask (within a second)
        await until(lambda: len(statuspage.seen) == 1, timeout=3.0)
        assert set(elections.asked) == {"sink:statuspage"}  # PagerDuty is delivered by every replica
    finally:
        await worker.stop(grace=1.0)
        await asyncio.wait_for(task, 5)

"""The background scheduler in virtual time: intervals, jitter, backoff, concurrency, target changes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random

import pytest

from exporter.config import Config, Module, Target
from exporter.probes.base import Reason
from exporter.results import ResultStore
from exporter.scheduler import ADMISSION_TICK, LOOP_LAG_LIMIT, MIN_ADMITTED, TIMEOUT_GRACE, Admission, Scheduler, Timing
from exporter.targets import resolve_targets
from tests.exporter.service_fixtures import FakeClock, FakeProbe, failed_result, ok_result, sample_map, value


def make_targets(n: int = 1, interval: str = "60s", **kw):
    config = Config(targets=[Target(target=f"t{i}.test:443", interval=interval, **kw) for i in range(n)])
    return resolve_targets(config)[0]


@contextlib.asynccontextmanager
async def running(probe, *, timing=None, seed=1, targets=()):
    timing = timing or Timing(jitter=0.1, retry_backoff=5.0)
    clock = FakeClock()
    probe.clock = clock
    store = ResultStore()
    seen = []
    scheduler = Scheduler(probe, store, timing=timing, clock=clock, wall_clock=clock, sleep=clock.sleep,
                          rng=random.Random(seed), on_result=lambda t, r, e: seen.append((t.target, r)))
    scheduler.set_targets(list(targets))
    task = asyncio.create_task(scheduler.run())
    try:
        yield clock, scheduler, store, seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_first_probe_within_jitter_window_then_every_interval():
    probe = FakeProbe()
    async with running(probe, targets=make_targets(1)) as (clock, *_):
        start = clock.now
        await clock.advance(300)
    times = [t - start for t in probe.times("t0.test:443")]
    assert 0 <= times[0] <= 6.0  # jitter 0.1 x 60 s
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 5
    assert all(57.0 <= g <= 63.0 for g in gaps), gaps  # 60 s +- jitter/2


async def test_first_probes_are_spread_not_a_herd():
    probe = FakeProbe()
    async with running(probe, targets=make_targets(200)) as (clock, *_):
        start = clock.now
        await clock.advance(6.0)
    firsts = sorted(t - start for _, t in probe.calls)
    assert len(firsts) == 200
    assert firsts[-1] <= 6.0
    # uniform over [0, 6 s]: no second holds more than a third of them
    buckets = [sum(1 for t in firsts if s <= t < s + 1) for s in range(6)]
    assert max(buckets) < 70, buckets


async def test_failures_back_off_doubling_capped_at_interval():
    probe = FakeProbe(answers={"t0.test:443": [failed_result(Reason.REFUSED)]})
    async with running(probe, targets=make_targets(1, interval="60s")) as (clock, *_):
        await clock.advance(400)
    times = probe.times("t0.test:443")
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps[:6] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]


async def test_success_after_failures_returns_to_interval():
    outcomes = iter([failed_result(), failed_result(), ok_result(), ok_result()])
    probe = FakeProbe(answers={"t0.test:443": lambda req: [next(outcomes, ok_result())]})
    async with running(probe, targets=make_targets(1), timing=Timing(jitter=0.0, retry_backoff=5.0)) as (clock, *_):
        await clock.advance(130)
    times = probe.times("t0.test:443")
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps[:3] == [5.0, 10.0, 60.0]


async def test_concurrency_limit_is_respected():
    gate = asyncio.Event()
    probe = FakeProbe(gate=gate)
    async with running(probe, timing=Timing(concurrency=3, jitter=0.0), targets=make_targets(10)) as (clock, sch, *_):
        await clock.advance(1)
        assert probe.running == 3
        assert sch.in_flight == 3
        gate.set()
        await clock.advance(1)
    assert probe.max_running == 3
    assert len(probe.calls) == 10


def test_admission_grows_with_prompt_finishes_and_shrinks_with_lag_within_floor_and_concurrency():
    admission = Admission(256)
    assert admission.limit == MIN_ADMITTED
    admission.update(0.0, 16, 256)  # 16 probes finished, promptly: twice as many may run
    assert admission.limit == 32
    for _ in range(10):
        admission.update(0.0, admission.limit, 256)
    assert admission.limit == 256
    admission.update(LOOP_LAG_LIMIT * 2, 40, 256)
    assert admission.limit == 192
    for _ in range(50):
        admission.update(1.0, 1, 256)
    assert admission.limit == MIN_ADMITTED
    admission.update(LOOP_LAG_LIMIT, 1, 256)  # at the limit is still prompt
    assert admission.limit == MIN_ADMITTED + 1
    assert Admission(3).limit == 3
    admission.clamp(8)
    assert admission.limit == 8


async def busy_loop_run(busy: bool, n: int = 200):
    """n targets due at once; each finishing probe costs 20 ms of (virtual) loop time when busy."""
    clock = FakeClock()
    probe = FakeProbe(clock=clock)
    gate = asyncio.Event()
    probe.gate = gate
    limits = []

    def on_result(target, results, elapsed):
        if busy:
            clock.now += 2 * LOOP_LAG_LIMIT  # the CPU spent rendering, handshaking: the scheduler waits
        limits.append(scheduler.admission.limit)

    scheduler = Scheduler(probe, ResultStore(), timing=Timing(concurrency=256, jitter=0.0), clock=clock,
                          wall_clock=clock, sleep=clock.sleep, rng=random.Random(1), on_result=on_result)
    scheduler.set_targets(make_targets(n))
    task = asyncio.create_task(scheduler.run())
    try:
        await clock.advance(0.001)
        first = probe.running
        gate.set()
        await clock.advance(10)  # past the 200 x 20 ms the busy probes add to the clock
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return first, probe, limits


async def test_a_saturated_loop_keeps_admissions_at_the_floor_and_still_probes_everything():
    first, probe, limits = await busy_loop_run(busy=True)
    assert first == MIN_ADMITTED  # no burst of 200 handshakes before the loop's lag is known
    assert probe.max_running == MIN_ADMITTED and max(limits) == MIN_ADMITTED
    assert len(probe.calls) == 200


async def test_a_prompt_loop_lets_admissions_climb_towards_concurrency():
    first, probe, limits = await busy_loop_run(busy=False)
    assert first == MIN_ADMITTED
    assert max(limits) == 128  # 16 + 32 + 64 admitted, doubling each prompt round, then the last 88
    assert len(probe.calls) == 200


async def test_stalled_peers_let_admissions_double_each_tick_up_to_concurrency():
    gate = asyncio.Event()  # never set: every peer stalls, nothing finishes
    probe = FakeProbe(gate=gate)
    async with running(probe, timing=Timing(concurrency=256, jitter=0.0), targets=make_targets(300)) as (
            clock, sch, *_):
        await clock.advance(0.001)
        assert probe.running == MIN_ADMITTED
        await clock.advance(ADMISSION_TICK)
        assert probe.running == 2 * MIN_ADMITTED
        await clock.advance(4 * ADMISSION_TICK)
        assert probe.running == 256 and sch.admission.limit == 256


async def test_removed_target_is_dropped_with_its_results_and_not_probed_again():
    probe = FakeProbe()
    targets = make_targets(2)
    async with running(probe, targets=targets) as (clock, sch, store, _):
        await clock.advance(10)
        assert set(store.snapshot()) == {"t0.test:443", "t1.test:443"}
        sch.set_targets(targets[:1])
        text = store.snapshot().render().decode()
        assert "t1.test" not in text
        before = len(probe.times("t1.test:443"))
        await clock.advance(300)
        assert len(probe.times("t1.test:443")) == before
        assert len(probe.times("t0.test:443")) >= 5


async def test_result_of_a_target_removed_mid_probe_is_discarded():
    gate = asyncio.Event()
    probe = FakeProbe(gate=gate)
    targets = make_targets(1)
    async with running(probe, targets=targets, timing=Timing(jitter=0.0)) as (clock, sch, store, _):
        await clock.advance(1)
        assert probe.running == 1
        sch.set_targets([])
        gate.set()
        await clock.advance(1)
        assert len(store.snapshot()) == 0


async def test_added_target_is_probed_soon():
    probe = FakeProbe()
    async with running(probe, targets=make_targets(1, interval="1h")) as (clock, sch, *_):
        await clock.advance(600)
        added_at = clock.now
        sch.set_targets(make_targets(2, interval="1h"))
        await clock.advance(360)
    times = probe.times("t1.test:443")
    assert len(times) == 1
    assert 0 <= times[0] - added_at <= 360  # within jitter x interval


async def test_module_change_reprobes_and_label_change_rerenders_without_probe():
    probe = FakeProbe()
    async with running(probe, targets=make_targets(1, interval="1h"), timing=Timing(jitter=0.0)) as (clock, sch, st, _):
        await clock.advance(1)
        assert len(probe.calls) == 1
        sch.set_targets(make_targets(1, interval="1h", labels={"env": "prod"}))
        await clock.advance(1)
        assert len(probe.calls) == 1
        assert value(sample_map(st.snapshot().render().decode()), "tls_probe_success", env="prod") == 1
        config = Config(modules={"slow": Module(timeout=30)},
                        targets=[Target(target="t0.test:443", module="slow", interval="1h")])
        sch.set_targets(resolve_targets(config)[0])
        await clock.advance(1)
        assert len(probe.calls) == 2
        assert probe.requests[-1].timeout == 30


async def test_probe_that_raises_or_hangs_becomes_an_internal_failure():
    async def broken(request):
        if request.target.startswith("t0"):
            raise RuntimeError("bug")
        await asyncio.sleep(3600)
        return []

    timing = Timing(jitter=0.0)
    store = ResultStore()
    scheduler = Scheduler(broken, store, timing=timing, timeout_grace=0.01)
    targets = make_targets(2)
    raised = await scheduler.probe_target(targets[0])
    assert [(r.success, r.reason) for r in raised] == [(False, Reason.INTERNAL)]
    hung = await scheduler.probe_target(targets[1], timeout=0.01)
    assert [(r.success, r.reason, r.detail) for r in hung] == [(False, Reason.INTERNAL, "probe overran its timeout")]
    assert TIMEOUT_GRACE > 0


async def test_probe_request_carries_module_timeout_labels_and_address():
    probe = FakeProbe()
    config = Config(modules={"m": Module(timeout=3)}, targets=[
        Target(target="svc.test:443", module="m", labels={"team": "a"}, address="127.0.0.1:8443")])
    async with running(probe, targets=resolve_targets(config)[0]) as (clock, *_):
        await clock.advance(400)
    request = probe.requests[0]
    assert (request.target, request.timeout, dict(request.labels), request.address) == (
        "svc.test:443", 3.0, {"team": "a"}, "127.0.0.1:8443")


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_jitter_stays_within_bounds_for_many_targets(seed):
    probe = FakeProbe()
    async with running(probe, seed=seed, timing=Timing(jitter=0.2), targets=make_targets(50, interval="100s")) as (
            clock, *_):
        await clock.advance(1000)
    for i in range(50):
        times = probe.times(f"t{i}.test:443")
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(90.0 - 1e-6 <= g <= 110.0 + 1e-6 for g in gaps)


async def test_a_target_failing_for_ever_is_still_probed_at_its_interval():
    # 2.0 ** 1024 overflows: the backoff's exponent is capped, so the 1,025th failure in a row is not the last probe.
    probe = FakeProbe(answers={"t0.test:443": [failed_result(Reason.REFUSED)]})
    async with running(probe, timing=Timing(jitter=0.1, retry_backoff=0.001),
                       targets=make_targets(1, interval="1s")) as (clock, *_):
        await clock.advance(1100)
    times = probe.times("t0.test:443")
    assert len(times) > 1080
    assert round(times[-1] - times[-2], 6) == 1.0


async def test_a_restarted_scheduler_reprobes_the_targets_its_failure_cancelled():
    gate = asyncio.Event()
    probe = FakeProbe(gate=gate)
    async with running(probe, targets=make_targets(3)) as (clock, scheduler, _, seen):
        await clock.advance(10)  # all three probes started and wait on the gate
        assert scheduler.in_flight == 3
    # The run ended (a failure): its probes were cancelled. Run again, as certpager.tasks does.
    gate.set()
    task = asyncio.create_task(scheduler.run())
    await clock.advance(1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sorted(t for t, _ in seen) == ["t0.test:443", "t1.test:443", "t2.test:443"]


async def test_a_failure_recording_a_result_does_not_end_the_targets_schedule():
    probe, hooks = FakeProbe(), []

    def on_result(target, results, elapsed):
        hooks.append(target.target)
        if len(hooks) == 1:
            raise RuntimeError("metrics bug")

    clock = FakeClock()
    probe.clock = clock
    scheduler = Scheduler(probe, ResultStore(), timing=Timing(jitter=0.1), clock=clock, wall_clock=clock,
                          sleep=clock.sleep, rng=random.Random(1), on_result=on_result)
    scheduler.set_targets(make_targets(1))
    task = asyncio.create_task(scheduler.run())
    await clock.advance(200)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(probe.times("t0.test:443")) == 4  # first within 6 s, then every 60 s


"""certpager.tasks: a background task that fails is restarted, one that keeps failing stops the process."""

from __future__ import annotations

import asyncio

from certpager.tasks import TaskSupervisor
from tests.exporter.service_fixtures import FakeClock, settle


class Flaky:
    """A loop that fails the first ``failures`` times it is started, then runs until cancelled."""

    def __init__(self, failures: int, *, error: BaseException | None = None) -> None:
        self.failures, self.starts = failures, 0
        self.error = error or RuntimeError("boom")

    async def __call__(self) -> None:
        self.starts += 1
        if self.starts <= self.failures:
            raise self.error
        await asyncio.Event().wait()


async def test_a_failed_task_is_restarted_after_a_backoff_and_not_ready_meanwhile(caplog):
    clock = FakeClock()
    tasks = TaskSupervisor(clock=clock, sleep=clock.sleep)
    flaky = Flaky(2, error=RecursionError("maximum recursion depth exceeded"))
    tasks.start("watcher", flaky)
    await settle()
    assert (flaky.starts, tasks.ready()) == (1, False)
    assert tasks.problems() == ["watcher: RecursionError: maximum recursion depth exceeded"]
    await clock.advance(1.0)  # first backoff: 1 s
    assert (flaky.starts, tasks.ready()) == (2, False)
    await clock.advance(1.9)  # second: 2 s
    assert flaky.starts == 2
    await clock.advance(0.1)
    assert (flaky.starts, tasks.ready(), tasks.failed) == (3, True, None)
    assert tasks.restarts() == {"watcher": 2}
    assert sum("background task failed" in r.message and r.exc_info is not None for r in caplog.records) == 2
    await tasks.stop()


async def test_a_task_that_returns_has_stopped_working_and_is_restarted():
    clock = FakeClock()
    tasks = TaskSupervisor(clock=clock, sleep=clock.sleep)
    runs = []

    async def once() -> None:
        runs.append(clock.now)
        if len(runs) > 1:
            await asyncio.Event().wait()

    tasks.start("outbox", once)
    await settle()
    assert tasks.problems() == ["outbox: ended unexpectedly"]
    await clock.advance(1.0)
    assert len(runs) == 2 and tasks.ready()
    await tasks.stop()


async def test_a_task_that_keeps_failing_is_given_up_on_and_the_failure_callback_runs():
    clock = FakeClock()
    tasks = TaskSupervisor(clock=clock, sleep=clock.sleep, max_failures=3)
    reasons: list[str] = []
    tasks.on_failure(reasons.append)
    flaky = Flaky(100)
    tasks.start("scheduler", flaky)
    await clock.advance(60)
    assert flaky.starts == 3  # failed, 1 s, failed, 2 s, failed: given up
    assert tasks.failed == reasons[0] == "background task scheduler failed 3 times in a row (last: RuntimeError: boom)"
    assert not tasks.ready()
    assert tasks.unready() == ["background task scheduler was given up on: the process is stopping"]
    late: list[str] = []
    tasks.on_failure(late.append)  # registered after the fact: still told
    assert late == reasons
    await tasks.stop()


async def test_failures_far_apart_do_not_add_up():
    clock = FakeClock()
    tasks = TaskSupervisor(clock=clock, sleep=clock.sleep, max_failures=2, healthy_after=60)
    failures = 0

    async def fails_after_a_while() -> None:
        nonlocal failures
        await clock.sleep(120)  # ran healthily for two minutes
        failures += 1
        raise RuntimeError("rare")

    tasks.start("outbox", fails_after_a_while)
    await clock.advance(1000)
    assert failures >= 5 and tasks.failed is None
    await tasks.stop()


async def test_stop_cancels_the_tasks():
    tasks = TaskSupervisor()
    started = asyncio.Event()

    async def loop() -> None:
        started.set()
        await asyncio.Event().wait()

    tasks.start("a", loop)
    await started.wait()
    await tasks.stop()
    assert tasks.problems() == [] and tasks.ready()

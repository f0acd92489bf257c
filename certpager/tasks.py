"""Background tasks that never die silently, for both services.

Every long-running loop of a service (the exporter's scheduler and target-file watcher, the bridge's
outbox worker with its pruning) runs under one :class:`TaskSupervisor`:

- a task that raises, or returns (a loop that ends has stopped working), is logged with its
  traceback and started again after a backoff (1 s doubling up to 30 s); ``/-/ready`` answers 503
  while any task is down;
- a task that keeps failing (``max_failures`` times in a row, each within ``healthy_after`` seconds of
  its start) is given up on: the supervisor sets :attr:`TaskSupervisor.failed` and calls the
  ``on_failure`` callbacks, which stop the server; the command then exits 1 so systemd, Kubernetes or
  Docker start a fresh process. A stuck bug is never hidden behind a process that looks healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
TaskFactory = Callable[[], Awaitable[None]]

MAX_FAILURES = 5
HEALTHY_AFTER = 60.0  # seconds a task must run before its next failure counts as a new first one
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0


@dataclass(slots=True)
class _Entry:
    name: str
    factory: TaskFactory
    runner: asyncio.Task[None] | None = None
    up: bool = False
    failures: int = 0  # in a row
    restarts: int = 0  # in total, for logs and metrics
    last_error: str = field(default="")


class TaskSupervisor:
    """Runs named background tasks, restarts them when they fail, gives up on one that keeps failing."""

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        max_failures: int = MAX_FAILURES,
        healthy_after: float = HEALTHY_AFTER,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._max_failures = max_failures
        self._healthy_after = healthy_after
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._entries: dict[str, _Entry] = {}
        self._on_failure: list[Callable[[str], None]] = []
        self._closing = False
        self.failed: str | None = None  # why the supervisor gave up, once it did
        self._given_up: str | None = None  # the task it gave up on

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` once when a task is given up on (the CLI stops the server with it)."""
        self._on_failure.append(callback)
        if self.failed is not None:
            callback(self.failed)

    def start(self, name: str, factory: TaskFactory) -> None:
        """Run ``factory()`` as task ``name`` until :meth:`stop`, restarting it when it fails."""
        if name in self._entries and self._entries[name].runner is not None:
            raise RuntimeError(f"background task {name!r} is already running")
        entry = self._entries[name] = _Entry(name, factory)
        entry.runner = asyncio.create_task(self._supervise(entry), name=f"certpager-{name}")

    def ready(self) -> bool:
        """True while every task runs (and none was given up on)."""
        return self.failed is None and all(entry.up for entry in self._entries.values())

    def unready(self) -> list[str]:
        """Why the process is not ready, in words for ``/-/ready`` (empty when it is): the tasks that are
        down, by name (their errors stay in the logs: /-/ready needs no credentials)."""
        if self._given_up is not None:
            return [f"background task {self._given_up} was given up on: the process is stopping"]
        return [f"background task {e.name} is restarting" for e in self._entries.values() if not e.up]

    def problems(self) -> list[str]:
        """One line per task that is down, for the readiness answer and logs."""
        return [f"{e.name}: {e.last_error}" for e in self._entries.values() if not e.up]

    def restarts(self) -> dict[str, int]:
        """Task name -> restarts since the process started."""
        return {name: entry.restarts for name, entry in self._entries.items()}

    def state(self) -> dict[str, tuple[bool, int]]:
        """Task name -> (running now, restarts so far)."""
        return {name: (entry.up, entry.restarts) for name, entry in self._entries.items()}

    async def stop(self, *, wait: bool = False) -> None:
        """End every task: cancel them, or with ``wait`` let a running one end by itself.

        ``wait`` is for a loop already told to stop (the outbox worker's ``stop()``): it finishes its
        round instead of being cancelled mid-write; one waiting for its restart is cancelled.
        """
        self._closing = True
        runners = []
        for entry in self._entries.values():
            if entry.runner is None:
                continue
            if not (wait and entry.up):
                entry.runner.cancel()
            runners.append(entry.runner)
        for runner in runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._entries.clear()
        self._closing = False

    def closing(self) -> None:
        """From now on a task that returns has been told to stop: it is not restarted."""
        self._closing = True

    async def _supervise(self, entry: _Entry) -> None:
        while True:
            started = self._clock()
            entry.up = True
            try:
                await entry.factory()
            except asyncio.CancelledError:
                entry.up = False
                raise
            except Exception as exc:
                entry.last_error = f"{type(exc).__name__}: {exc}"
                log.error("background task failed", exc_info=True,
                          extra={"kv": {"task": entry.name, "err": entry.last_error}})
            else:
                if self._closing:
                    entry.up = False
                    return
                entry.last_error = "ended unexpectedly"
                log.error("background task ended unexpectedly", extra={"kv": {"task": entry.name}})
            entry.up = False
            ran_for = self._clock() - started
            entry.failures = 1 if ran_for >= self._healthy_after else entry.failures + 1
            if entry.failures >= self._max_failures:
                self._give_up(entry)
                return
            delay = min(self._backoff_max, self._backoff_initial * 2.0 ** (entry.failures - 1))
            log.error("restarting background task", extra={"kv": {
                "task": entry.name, "failures_in_a_row": entry.failures, "restart_in": delay}})
            await self._sleep(delay)
            entry.restarts += 1

    def _give_up(self, entry: _Entry) -> None:
        self._given_up = entry.name
        self.failed = (f"background task {entry.name} failed {entry.failures} times in a row "
                       f"(last: {entry.last_error})")
        log.critical("giving up: stopping the process so its supervisor restarts it",
                     extra={"kv": {"task": entry.name, "err": self.failed}})
        for callback in self._on_failure:
            callback(self.failed)


class TaskCollector:
    """``<namespace>_background_task_up{task}`` and ``<namespace>_background_task_restarts_total{task}``.

    A task that restarts now and then recovers by itself, which a log line alone hides: alert on
    ``increase(..._restarts_total[1h]) > 0``.
    """

    def __init__(self, supervisor: TaskSupervisor, namespace: str) -> None:
        self._supervisor = supervisor
        self._namespace = namespace

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{self._namespace}_background_task_up",
                               "1 while the background task runs, 0 while it waits to be restarted.", labels=["task"])
        restarts = CounterMetricFamily(f"{self._namespace}_background_task_restarts",
                                       "Restarts of the background task after it failed.", labels=["task"])
        for name, (running, count) in sorted(self._supervisor.state().items()):
            up.add_metric([name], 1.0 if running else 0.0)
            restarts.add_metric([name], float(count))
        yield up
        yield restarts


"""Wires config, target files, scheduler, results and self metrics into one running exporter.

:class:`Exporter` owns the config and its reload (blackbox's SafeConfig: a new config is fully loaded
and validated before it replaces the old one; a bad file leaves everything as it was and sets
``certpager_exporter_config_last_reload_successful`` to 0). Everything external (probe function,
clocks, sleep, randomness, config loader) is injected so tests can drive it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from certpager.errors import ConfigError
from certpager.tasks import TaskCollector, TaskSupervisor
from exporter.access import AllowList, ProbeAccess, Slots
from exporter.config import Config, load
from exporter.probes import get_probe
from exporter.probes.base import ProbeFn, ProbeRequest, ProbeResult
from exporter.results import ResultStore, render_single
from exporter.scheduler import Clock, Scheduler, Sleep, Timing
from exporter.selfmetrics import SelfMetrics
from exporter.targets import ResolvedTarget, TargetFileWatcher, resolve_targets

log = logging.getLogger(__name__)

Loader = Callable[[Path], Config]


async def default_probe(request: ProbeRequest) -> list[ProbeResult]:
    """Dispatch to the probe registered for the module's kind (the registry imports it on first use)."""
    return await get_probe(request.module.kind)(request)


class UnknownModuleError(LookupError):
    """/probe named a module the config does not define."""


class Exporter:
    """The running exporter: background probing plus on-demand probes, reloadable."""

    def __init__(
        self,
        config_path: Path | str,
        *,
        probe: ProbeFn = default_probe,
        loader: Loader = load,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """Load the config (raises ConfigError) and read the target files once."""
        self.config_path = Path(config_path)
        self._loader = loader
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self.metrics = SelfMetrics(self._state)
        # The scheduler and the file watcher are restarted when they fail; /-/ready says when one is down.
        self.tasks = TaskSupervisor(clock=clock, sleep=sleep)
        self.metrics.registry.register(TaskCollector(self.tasks, "certpager_exporter"))
        self._probes_since_trim = 0
        self.config, self.access = self._load()
        self.probe_slots = Slots()  # /probe requests probing now (probe.max_concurrent)
        self.store = ResultStore(self.config.metrics)
        self.scheduler = Scheduler(probe, self.store, timing=_timing(self.config), clock=clock, wall_clock=wall_clock,
                                   sleep=sleep, rng=rng, on_result=self._on_result)
        self.scheduler.policies = self.config.policies
        self.watcher = self._new_watcher(self.config)
        self._files_changed = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._apply_targets()
        self.metrics.reloaded(True, self._wall())

    def _on_result(self, target: ResolvedTarget, results: Sequence[ProbeResult], elapsed: float) -> None:
        self.metrics.observe_probe(target, results, elapsed)
        self._probes_since_trim += 1
        if self._probes_since_trim >= TRIM_EVERY_PROBES:
            self._probes_since_trim = 0
            trim_memory()

    def _load(self) -> tuple[Config, ProbeAccess]:
        """The config file's content and who may probe what (its secret files read now); a failure is
        recorded (success is, once the config is applied)."""
        try:
            config = self._loader(self.config_path)
            credentials = config.web.auth.credentials(key="web.auth", config_path=self.config_path)
        except ConfigError:
            self.metrics.reloaded(False, self._wall())
            raise
        probe = config.probe
        return config, ProbeAccess(credentials, AllowList.parse(probe.allowed_targets), probe.max_concurrent)

    def _new_watcher(self, config: Config) -> TargetFileWatcher:
        watcher = TargetFileWatcher(config.target_files, base_dir=self.config_path.parent, clock=self._clock,
                                    on_error=lambda _msg: self.metrics.target_file_errors.inc(),
                                    previous=getattr(self, "watcher", None))
        watcher.poll(force=True)
        return watcher

    def _apply_targets(self) -> None:
        targets, warnings = resolve_targets(self.config, self.watcher.groups())
        for warning in warnings:
            log.warning("duplicate target ignored", extra={"kv": {"err": warning}})
        self.scheduler.set_targets(targets)

    def _state(self) -> tuple[int, int, int, dict[str, bool]]:
        scheduler = getattr(self, "scheduler", None)
        watcher = getattr(self, "watcher", None)
        return (
            len(scheduler) if scheduler is not None else 0,
            scheduler.in_flight if scheduler is not None else 0,
            scheduler.admission.limit if scheduler is not None else 0,
            watcher.file_status() if watcher is not None else {},
        )

    async def reload(self) -> None:
        """Load the config file again; on error keep the old config and re-raise (ConfigError)."""
        async with self._reload_lock:
            try:
                config, access = await asyncio.to_thread(self._load)
            except ConfigError as exc:
                # Logged here, the one path of SIGHUP and POST /-/reload: a failed reload is never silent.
                log.error("config reload failed, keeping the old config",
                          extra={"kv": {"file": str(self.config_path), "err": str(exc)}})
                raise
            watcher = await asyncio.to_thread(self._new_watcher, config)
            self.config, self.watcher, self.access = config, watcher, access
            self.scheduler.set_timing(_timing(config))
            self.scheduler.policies = config.policies
            self.store.set_settings(config.metrics)
            self._apply_targets()
            # Only now: a scrape must not see "reloaded" next to the old targets (it did, in a thread's gap).
            self.metrics.reloaded(True, self._wall())
            self._files_changed.set()
            log.info("config reloaded", extra={"kv": {"file": str(self.config_path), "targets": len(
                self.scheduler.targets())}})

    async def run(self) -> None:
        """Probe in the background and watch target files until cancelled, each under :attr:`tasks`."""
        self.tasks.start("scheduler", self.scheduler.run)
        self.tasks.start("target-file-watcher", self._watch_files)
        try:
            await asyncio.Event().wait()
        finally:
            await self.tasks.stop()

    async def _watch_files(self) -> None:
        while True:
            due = self.watcher.next_due()
            delay = None if due is None else max(0.0, due - self._clock())
            await _sleep_or_event(self._sleep, delay, self._files_changed)
            self._files_changed.clear()
            changed = self.watcher.poll()  # a few stat() calls: cheap enough for the loop
            if changed:
                self._apply_targets()

    def metrics_chunks(self) -> Iterator[bytes]:
        """The /metrics body in chunks: cached probe results family by family, then self metrics."""
        yield from self.store.snapshot().chunks()
        yield self.metrics.render()
        trim_memory()  # a scrape at 10,000 targets just freed ~30 MB in ~128 KB pieces

    async def probe_now(self, target: str, module_name: str, timeout_cap: float | None) -> bytes:
        """Probe ``target`` with ``module_name`` now (the /probe endpoint); raises UnknownModuleError."""
        config = self.config
        module = config.all_modules.get(module_name)
        if module is None:
            raise UnknownModuleError(module_name)
        known = self.scheduler.target(target)
        labels = dict(known.labels) if known else {}
        resolved = ResolvedTarget(
            target=target, module_name=module_name, module=module, labels=labels,
            interval=config.global_.scrape_interval, thresholds=config.thresholds_for(labels, None)
            if known is None else known.thresholds, address=known.address if known else None,
        )
        timeout = module.timeout if timeout_cap is None else max(0.001, min(module.timeout, timeout_cap))
        started = self._clock()
        results = await self.scheduler.probe_target(resolved, timeout)
        self.metrics.observe_probe(resolved, results, self._clock() - started)
        return render_single(resolved, results, config.metrics)


TRIM_EVERY_PROBES = 1000


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)  # glibc only


def trim_memory() -> None:
    """Give freed heap back to the OS (glibc malloc_trim; a no-op elsewhere).

    Probes allocate and free TLS buffers in between the long-lived rendered text of every target,
    so glibc keeps the freed holes and RSS only grows; trimming keeps it near what is in use.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _timing(config: Config) -> Timing:
    g = config.global_
    return Timing(concurrency=g.concurrency, jitter=g.jitter, retry_backoff=g.retry_backoff)


async def _sleep_or_event(sleep: Sleep, delay: float | None, event: asyncio.Event) -> None:
    """Return after ``delay`` seconds (never, if None) or as soon as ``event`` is set."""
    waiter: asyncio.Future[object] = asyncio.ensure_future(event.wait())
    pending: set[asyncio.Future[object]] = {waiter}
    if delay is not None:
        pending.add(asyncio.ensure_future(_await(sleep(delay))))
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in pending:
            fut.cancel()


async def _await(aw: Awaitable[None]) -> object:
    await aw
    return None

"""The exporter's background tasks never die silently: each is killed here and must come back (or exit 1)."""

from __future__ import annotations

import asyncio
import functools
import json
import random

import pytest

from certpager import tasks as certpager_tasks
from exporter import app as exporter_app
from exporter.app import Exporter
from exporter.cli import serve_config
from exporter.scheduler import Scheduler
from exporter.web import create_app
from tests.exporter.service_fixtures import FakeClock, FakeProbe, sample_map, value, write

CONFIG = """
global: {scrape_interval: 60s, jitter: 0}
targets: [{target: a.test:443}]
target_files: [{files: [sd/*.json], refresh_interval: 5s}]
"""


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def probe(clock):
    return FakeProbe(clock=clock)


@pytest.fixture
def exporter(tmp_path, probe, clock):
    write(tmp_path / "sd" / "a.json", json.dumps([{"targets": ["x.test:443"]}]))
    return Exporter(write(tmp_path / "exporter.yml", CONFIG), probe=probe, clock=clock,
                    wall_clock=lambda: 1_750_000_000.0, sleep=clock.sleep, rng=random.Random(7))


def fail_once(obj: object, name: str, error: Exception) -> list[int]:
    """Make ``obj.name()`` raise ``error`` on its next call only; returns a list counting the calls."""
    original, calls = getattr(obj, name), []

    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)
    return calls


async def test_a_file_sd_file_nested_1000_deep_is_an_invalid_file_not_a_dead_watcher(exporter, clock, probe, tmp_path):
    sd = tmp_path / "sd" / "a.json"
    run = asyncio.create_task(exporter.run())
    await clock.advance(1)
    sd.write_text("[" * 1000 + "]" * 1000)
    await clock.advance(6)
    assert exporter.tasks.ready()
    assert exporter.watcher.file_status() == {str(sd): False}
    assert {t.target for t in exporter.scheduler.targets()} == {"a.test:443", "x.test:443"}  # last good kept
    sd.write_text(json.dumps([{"targets": ["y.test:443"]}]))
    await clock.advance(6)
    assert {t.target for t in exporter.scheduler.targets()} == {"a.test:443", "y.test:443"}
    await clock.advance(1)
    assert "y.test:443" in {target for target, _ in probe.calls}
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)


@pytest.mark.parametrize(("task", "owner", "method"), [
    ("scheduler", "scheduler", "_start_due"),
    ("target-file-watcher", "watcher", "poll"),
])
async def test_a_killed_task_is_restarted_and_ready_says_so_meanwhile(
    serve_app, exporter, clock, probe, tmp_path, task, owner, method
):
    client = await serve_app(create_app(exporter))
    await clock.advance(1)
    assert (await client.get("/-/ready")).status == 200
    calls = fail_once(getattr(exporter, owner), method, RecursionError("maximum recursion depth exceeded"))
    # The loop runs again on a file change (watcher) or at the next due probe (scheduler): make both happen.
    write(tmp_path / "sd" / "a.json", json.dumps([{"targets": ["z.test:443"]}]))
    for _ in range(100):  # bounded: 10 s of virtual time, in steps shorter than the 1 s restart backoff
        await clock.advance(0.1)
        if calls:
            break
    assert calls, "the fault was not reached"
    assert exporter.tasks.problems() == [f"{task}: RecursionError: maximum recursion depth exceeded"]
    ready = await client.get("/-/ready")
    assert (ready.status, await ready.text()) == (503, f"Not ready: background task {task} is restarting.\n")
    metrics = sample_map(await (await client.get("/metrics")).text())
    assert value(metrics, "certpager_exporter_background_task_up", task=task) == 0
    await clock.advance(1)  # restarted after 1 s
    assert (await client.get("/-/ready")).status == 200
    await clock.advance(60)
    metrics = sample_map(await (await client.get("/metrics")).text())
    assert value(metrics, "certpager_exporter_background_task_up", task=task) == 1
    assert value(metrics, "certpager_exporter_background_task_restarts_total", task=task) == 1
    assert value(metrics, "tls_probe_success", target="z.test:443") == 1
    assert probe.times("a.test:443")[-1] > clock.now - 61  # still probed at its interval


async def test_a_task_that_keeps_failing_stops_the_exporter_with_exit_1(tmp_path, monkeypatch):
    monkeypatch.setattr(exporter_app, "TaskSupervisor", functools.partial(
        certpager_tasks.TaskSupervisor, backoff_initial=0.01, max_failures=2))

    async def broken(self: Scheduler) -> None:
        raise RuntimeError("scheduler bug")

    monkeypatch.setattr(Scheduler, "run", broken)
    config = write(tmp_path / "exporter.yml", "targets: [{target: 127.0.0.1:1}]\n")
    code = await asyncio.wait_for(serve_config(config, "127.0.0.1:0"), 20)
    assert code == 1


async def test_a_parser_bug_on_one_file_makes_it_invalid_not_a_failing_watcher(exporter, clock, tmp_path, monkeypatch):
    from exporter import targets

    def broken(path: str, text: str) -> list[targets.SDGroup]:
        raise KeyError("parser bug")

    monkeypatch.setattr(targets, "parse_sd_file", broken)
    sd = write(tmp_path / "sd" / "a.json", json.dumps([{"targets": ["y.test:443"]}]))
    assert exporter.watcher.poll(force=True) is False  # no raise
    assert exporter.watcher.file_status() == {str(sd): False}
    assert {t.target for t in exporter.scheduler.targets()} == {"a.test:443", "x.test:443"}

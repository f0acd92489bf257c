"""The bridge's background task (the outbox worker, which also prunes) never dies silently."""

from __future__ import annotations

import asyncio
import functools

from prometheus_client import CollectorRegistry

from bridge import app as bridge_app
from bridge import cli as bridge_cli
from bridge.app import ALERTMANAGER_PATH, Bridge
from bridge.outbox import OutboxWorker
from bridge.store.sqlite import SqliteStore
from certpager import tasks as certpager_tasks
from tests.bridge.conftest import RecordingSink, alert, body, loaded_config
from tests.bridge.test_app import bearer, write_config


async def _ready_status(client) -> int:
    return (await client.get("/-/ready")).status


async def _wait_for(predicate, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):  # bounded
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_a_killed_outbox_worker_is_restarted_and_ready_says_so_meanwhile(serve_app, tmp_path):
    sink = RecordingSink()
    bridge = Bridge(write_config(tmp_path), store=SqliteStore(tmp_path / "b.db"), sinks={"pagerduty": sink},
                    registry=CollectorRegistry())
    client = await serve_app(bridge.app)
    assert await _ready_status(client) == 200
    fill, failures = bridge.worker._fill, []

    def broken_fill():  # the worker's loop dies once, as a bug would kill it
        if not failures:
            failures.append(1)
            raise RuntimeError("outbox bug")
        return fill()

    bridge.worker._fill = broken_fill  # type: ignore[method-assign]
    assert (await client.post(ALERTMANAGER_PATH, data=body(alert()), headers=bearer())).status == 200
    await _wait_for(lambda: _is(client, 503))
    assert bridge.tasks.problems() == ["outbox: RuntimeError: outbox bug"]
    # /-/ready names what is down, never the error (it needs no credentials)
    assert await (await client.get("/-/ready")).text() == "Not ready: background task outbox is restarting.\n"
    await _wait_for(lambda: _is(client, 200))  # restarted after 1 s
    await _wait_for(_delivered(sink))  # and the event queued meanwhile goes out
    text = await (await client.get("/metrics")).text()
    assert 'certpager_bridge_background_task_restarts_total{task="outbox"} 1.0' in text
    assert 'certpager_bridge_background_task_up{task="outbox"} 1.0' in text


async def _is(client, status: int) -> bool:
    return await _ready_status(client) == status


def _delivered(sink: RecordingSink):
    async def check() -> bool:
        return bool(sink.actions())
    return check


async def test_an_outbox_worker_that_keeps_failing_stops_the_bridge_with_exit_1(tmp_path, monkeypatch):
    monkeypatch.setattr(bridge_app, "TaskSupervisor", functools.partial(
        certpager_tasks.TaskSupervisor, backoff_initial=0.01, max_failures=2))

    async def broken(self: OutboxWorker) -> None:
        raise RuntimeError("outbox bug")

    monkeypatch.setattr(OutboxWorker, "run", broken)
    loaded = loaded_config({"store": {"path": str(tmp_path / "b.db")}}, path=tmp_path / "bridge.yml")
    code = await asyncio.wait_for(bridge_cli._serve(loaded, "127.0.0.1:0"), 20)
    assert code == 1

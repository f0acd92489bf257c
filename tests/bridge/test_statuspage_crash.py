"""Crash test for the Statuspage sink: `certpager bridge` as a subprocess, SIGKILLed while Statuspage has applied
an incident update whose answer never came back, restarted on the same SQLite file. Nothing may be lost
(every incident resolved, every component operational) and nothing done twice (no second incident, no
second resolution)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp

from tests.bridge.conftest import alert, body
from tests.bridge.test_crash import bridge_process, free_port, post
from tests.fakes.statuspage import run_fake_statuspage

TOKEN = "statuspage-SECRET-token"
COMPONENTS = {"gw0000000001": "Gateway API", "web000000001": "Web"}
CERTS = 6


def write_config(tmp_path: Path, url: str, port: int) -> Path:
    path = tmp_path / "bridge.yml"
    path.write_text(
        f"integrations:\n  statuspage:\n    api_token: {TOKEN}\n    page_id: page01\n    api_url: {url}\n"
        '    component_map: {"Gateway API": gw0000000001, "Web": web000000001}\n'
        "    requests_per_second: 50\n"
        f"server:\n  listen_address: 127.0.0.1:{port}\nstore:\n  path: {tmp_path / 'bridge.db'}\n"
        "outbox:\n  retry_initial: 50ms\n  retry_max: 500ms\n  sweep_interval: 200ms\n"
    )
    return path


def webhooks(status: str) -> list[bytes]:
    return [body(alert(status, certificate=f"c{i}.example.com", service="Gateway API" if i % 2 else "Web",
                       severity="critical")) for i in range(CERTS)]


async def until(condition, what: str, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen; bridge log:\n{log.read_text()}"
        await asyncio.sleep(0.05)


async def test_sigkill_mid_update_loses_nothing_and_opens_nothing_twice(tmp_path):
    async with run_fake_statuspage(token=TOKEN, components=dict(COMPONENTS), rate_limit=10_000) as fake:
        port = free_port()
        config = write_config(tmp_path, fake.url, port)
        log = tmp_path / "bridge.log"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with bridge_process(config, port, log) as proc:
                for data in webhooks("firing"):
                    assert await post(session, port, data)
                await until(lambda: len(fake.own_incidents()) == CERTS, "every incident opened", log)
                # The next write is applied by Statuspage, but its answer stalls: the bridge dies waiting.
                fake.fail_next(1, status=None, delay=30.0, apply=True)
                for data in webhooks("resolved"):
                    assert await post(session, port, data)
                await until(lambda: any(i.status == "resolved" for i in fake.own_incidents()), "a resolve", log)
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            assert sum(i.status == "resolved" for i in fake.own_incidents()) == 1
            async with bridge_process(config, port, log):
                await until(lambda: all(i.status == "resolved" for i in fake.own_incidents()), "every resolve", log)
                await asyncio.sleep(0.5)  # nothing more may arrive
        assert len(fake.incidents) == CERTS  # each opened once
        for incident in fake.own_incidents():
            assert [u["status"] for u in incident.updates] == ["investigating", "resolved"], incident.updates
        assert set(fake.statuses().values()) == {"operational"}
        assert TOKEN not in log.read_text()

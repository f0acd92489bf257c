"""Two `certpager bridge` processes on one PostgreSQL, both configured for Statuspage: only the elected one
delivers to it (its rate limit and its view of the page are per process), every incident opens once, and
when the elected replica is SIGKILLed the other takes the Statuspage queue over."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest
import uvloop

from tests.bridge.conftest import alert, body
from tests.bridge.test_crash import bridge_process, free_port, post
from tests.fakes.statuspage import run_fake_statuspage
from tests.postgres import PASSWORD

TOKEN = "statuspage-token-replicas"
GATEWAY, WEB = "gw0000000001", "web000000001"
CERTS = 6


@pytest.fixture
async def pg(pg):
    if not isinstance(asyncio.get_running_loop(), uvloop.Loop):
        pytest.skip("replica tests run on uvloop only, the bridge CLI's loop (keeps the suite lean)")
    return pg


def config(tmp_path: Path, port: int, url: str, sp_url: str) -> Path:
    path = tmp_path / f"bridge-{port}.yml"
    path.write_text(
        f"integrations:\n  statuspage:\n    api_token: {TOKEN}\n    page_id: page01\n    api_url: {sp_url}\n"
        f'    component_map: {{"Gateway API": {GATEWAY}, "Web": {WEB}}}\n    requests_per_second: 20\n'
        f"server:\n  listen_address: 127.0.0.1:{port}\nstore:\n  url: {url}\n  password_file: pg.password\n"
        "outbox:\n  retry_initial: 50ms\n  retry_max: 500ms\n  sweep_interval: 200ms\n  lease: 2s\n"
    )
    return path


async def requests_sent(session: aiohttp.ClientSession, port: int) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("certpager_bridge_statuspage_requests_total{"))


async def until(condition, what: str, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen; logs:\n{log.read_text()[-3000:]}"
        await asyncio.sleep(0.05)


async def test_only_the_elected_replica_delivers_to_statuspage(tmp_path, pg):
    (tmp_path / "pg.password").write_text(PASSWORD + "\n")
    log = tmp_path / "bridges.log"
    async with run_fake_statuspage(token=TOKEN, components={GATEWAY: "Gateway API", WEB: "Web"},
                                   rate_limit=10_000) as fake:
        ports = [free_port(), free_port()]
        configs = [config(tmp_path, p, pg.url, fake.url) for p in ports]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
                bridge_process(configs[0], ports[0], log) as first, \
                bridge_process(configs[1], ports[1], log) as second:
            for i in range(CERTS):  # to both replicas in turn, as a load balancer would
                data = body(alert(certificate=f"c{i}.example.com", service="Web" if i % 2 else "Gateway API",
                                  severity="critical"))
                assert await post(session, ports[i % 2], data)
            await until(lambda: len(fake.own_incidents()) == CERTS, "every incident opened", log)
            sent = [await requests_sent(session, p) for p in ports]
            assert sorted(s > 0 for s in sent) == [False, True], sent  # one replica sent every request
            elected = sent.index(max(sent))
            victim, survivor = ((first, ports[1]), (second, ports[0]))[elected]
            victim.send_signal(signal.SIGKILL)  # the other replica takes the Statuspage queue over
            await victim.wait()
            for i in range(CERTS):
                assert await post(session, survivor, body(alert("resolved", certificate=f"c{i}.example.com")))
            await until(lambda: all(i.status == "resolved" for i in fake.own_incidents()), "every resolve", log,
                        timeout=30.0)
        assert len(fake.incidents) == CERTS
        assert set(fake.statuses().values()) == {"operational"}

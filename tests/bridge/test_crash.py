"""Crash test: `certpager bridge` as a subprocess, SIGKILLed in the middle of a burst, restarted on the same
SQLite file; every expected PagerDuty event must land once, in order per key (PagerDuty's dedup_key
absorbs a resend of an event whose 202 the dead process never recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp

from tests.bridge.conftest import alert, body
from tests.fakes.pagerduty import run_fake_pagerduty

ROUTING_KEY = "C" * 32
CERTS = 40  # certificates in the burst; each gets a trigger then a resolve
REPO = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, events_url: str, port: int) -> Path:
    path = tmp_path / "bridge.yml"
    path.write_text(
        f"integrations:\n  pagerduty:\n    routing_key: {ROUTING_KEY}\n    events_url: {events_url}\n"
        f"    rate_limit_per_minute: 100000\n"
        f"server:\n  listen_address: 127.0.0.1:{port}\n"
        f"store:\n  path: {tmp_path / 'bridge.db'}\n"
        "outbox:\n  retry_initial: 50ms\n  retry_max: 500ms\n  sweep_interval: 200ms\n"
    )
    return path


@contextlib.asynccontextmanager
async def bridge_process(config: Path, port: int, log: Path):
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "certpager", "bridge", "--config.file", str(config),
            cwd=REPO, stdout=out, stderr=out, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    try:
        await wait_ready(port, proc)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


async def wait_ready(port: int, proc) -> None:
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert proc.returncode is None, "bridge exited during start"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/-/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError("bridge not ready in 15 s")


async def post(session, port: int, data: bytes) -> bool:
    try:
        async with session.post(f"http://127.0.0.1:{port}/api/v1/alerts/alertmanager", data=data) as resp:
            return resp.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


async def send_and_kill(session, port: int, webhooks: list[bytes], accepted: list[bool], proc, fake) -> None:
    """Post the burst 4 at a time, in order; once 3/5 are answered and PagerDuty got an event, SIGKILL the bridge."""
    gate = asyncio.Semaphore(4)
    killed = asyncio.Event()

    async def one(i: int) -> None:
        async with gate:
            if killed.is_set():
                return
            accepted[i] = await post(session, port, webhooks[i])
            if sum(accepted) >= len(webhooks) * 3 // 5 and not killed.is_set():
                killed.set()
                # The bridge may answer 3/5 of the burst before its first delivery lands: wait for one.
                for _ in range(500):
                    if fake.accepted:
                        break
                    await asyncio.sleep(0.01)
                proc.send_signal(signal.SIGKILL)

    await asyncio.gather(*(one(i) for i in range(len(webhooks))))
    await proc.wait()


def burst() -> list[bytes]:
    """Every certificate fires, then every certificate resolves (a resolve is sent after its trigger)."""
    firing = [body(alert(certificate=f"c{i}.example.com")) for i in range(CERTS)]
    resolved = [body(alert("resolved", certificate=f"c{i}.example.com")) for i in range(CERTS)]
    return firing + resolved


async def test_sigkill_mid_burst_loses_nothing_and_sends_nothing_twice(tmp_path):
    async with run_fake_pagerduty(rate_limit=100000) as fake:
        fake.fail_next(CERTS, status=None, delay=0.05)  # slow answers: the outbox is mid-way at the kill
        port = free_port()
        config = write_config(tmp_path, fake.url, port)
        log = tmp_path / "bridge.log"
        webhooks = burst()
        accepted = [False] * len(webhooks)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with bridge_process(config, port, log) as proc:
                await send_and_kill(session, port, webhooks, accepted, proc, fake)
            delivered_before_restart = len(fake.accepted)
            assert 0 < delivered_before_restart < 2 * CERTS, "the kill must land mid-delivery"
            async with bridge_process(config, port, log):
                # Alertmanager retries what was not answered 2xx, in order.
                for i, data in enumerate(webhooks):
                    if not accepted[i]:
                        assert await post(session, port, data), f"webhook {i} refused after restart"
                deadline = time.monotonic() + 30
                while len({(a, k) for a, k in fake.actions()}) < 2 * CERTS:
                    assert time.monotonic() < deadline, f"only {len(fake.actions())} events arrived: {log.read_text()}"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # nothing more may arrive

        per_key: dict[str, list[str]] = {}
        for action, key in fake.actions():
            per_key.setdefault(key, []).append(action)
        assert len(per_key) == CERTS
        for key, actions in per_key.items():
            collapsed = [a for n, a in enumerate(actions) if n == 0 or actions[n - 1] != a]
            assert collapsed in (["trigger", "resolve"], ["resolve"]), (key, actions)
        # Each certificate paged once and was closed (O R). A trigger in flight at the kill, handed out
        # again after its resolve was queued, is late: a change event, not a second page (O C R, or C D
        # when the killed process had not sent it: nobody paged for something already fixed). A resolve
        # resent after the restart finds nothing open (D).
        stories = fake.stories()
        assert len(stories) == CERTS and all(re.fullmatch(r"OC?RD*|CD+", s) for s in stories.values()), stories
        resent = len(fake.actions()) - 2 * CERTS
        assert resent <= 16  # at most the deliveries in flight at the kill (outbox.max_in_flight)
        assert all(fake.open_incident(ROUTING_KEY, key) is None for key in per_key)
        assert ROUTING_KEY not in log.read_text()  # the secret never reaches the log

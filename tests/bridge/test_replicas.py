"""Several `certpager bridge` processes on one PostgreSQL (a real cluster), webhooks to all of them.

Alertmanager's HA pair sends every notification twice, through a load balancer, so each webhook goes to
two replicas at once and is retried on another replica until one answers 200. Each certificate fires,
resolves, fires anew and resolves (four transitions, interleaved across certificates). Faults during the
burst: one replica SIGKILLed while its deliveries are in flight and another restarted; or PostgreSQL
itself restarted. Afterwards the fake PagerDuty saw every transition exactly once, in order per key
(a resend of an event the killed replica had sent but not recorded is absorbed by the dedup_key). A
trigger the killed replica had claimed, handed out again after its resolve was queued, is late: recorded
as a change event (late_resolved), never a page for something fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.bridge.conftest import T0, T1, alert, body
from tests.bridge.stores import PostgresBackend
from tests.bridge.test_crash import bridge_process, free_port
from tests.fakes.pagerduty import FakePagerDuty, run_fake_pagerduty
from tests.postgres import PASSWORD

ROUTING_KEY = "M" * 32
CERTS = 24  # certificates; 4 transitions each
URL = "http://127.0.0.1:{port}/api/v1/alerts/alertmanager"


def stages() -> list[list[bytes]]:
    """Four rounds of webhooks; a round is sent once the one before was accepted (Alertmanager's order)."""
    certs = [f"r{i}.example.com" for i in range(CERTS)]
    return [
        [body(alert(status, certificate=c, starts_at=starts)) for c in certs]
        for status, starts in (("firing", T0), ("resolved", T0), ("firing", T1), ("resolved", T1))
    ]


class Replicas:
    """Bridge processes sharing one database; ``up`` lists the ports that answer."""

    def __init__(self, tmp_path: Path, pg: PostgresBackend, fake: FakePagerDuty, count: int) -> None:
        self.tmp_path, self.stack = tmp_path, contextlib.AsyncExitStack()
        (tmp_path / "pg.password").write_text(PASSWORD + "\n")
        self.ports = [free_port() for _ in range(count)]
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.configs = {port: self._config(port, pg.url, fake.url) for port in self.ports}
        self.log = tmp_path / "bridges.log"

    def _config(self, port: int, url: str, events_url: str) -> Path:
        path = self.tmp_path / f"bridge-{port}.yml"
        path.write_text(
            f"integrations:\n  pagerduty:\n    routing_key: {ROUTING_KEY}\n    events_url: {events_url}\n"
            f"    rate_limit_per_minute: 100000\n"
            f"server:\n  listen_address: 127.0.0.1:{port}\n"
            f"store:\n  url: {url}\n  password_file: pg.password\n"
            "outbox:\n  retry_initial: 50ms\n  retry_max: 500ms\n  sweep_interval: 200ms\n  lease: 2s\n"
        )
        return path

    @property
    def up(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.returncode is None]

    async def start(self, port: int) -> None:
        self.procs[port] = await self.stack.enter_async_context(
            bridge_process(self.configs[port], port, self.log))

    async def __aenter__(self) -> Replicas:
        await self.stack.__aenter__()
        await asyncio.gather(*(self.start(p) for p in self.ports))  # they migrate at once
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.__aexit__(*exc)


async def deliver(session: aiohttp.ClientSession, replicas: Replicas, data: bytes, n: int, refusals: list[int]) -> None:
    """What the HA pair and its retries do: send to two replicas at once, retry until one answered 200."""
    deadline = time.monotonic() + 30

    async def one(port: int) -> bool:
        try:
            async with session.post(URL.format(port=port), data=data) as resp:
                if resp.status != 200:
                    refusals.append(resp.status)
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    attempt = 0
    while True:
        up = replicas.up
        targets = {up[(n + attempt) % len(up)], up[(n + attempt + 1) % len(up)]}
        if any(await asyncio.gather(*(one(p) for p in targets))):
            return
        assert time.monotonic() < deadline, f"webhook {n} never accepted: {replicas.log.read_text()[-3000:]}"
        attempt += 1
        await asyncio.sleep(0.1)


async def send_all(
    session: aiohttp.ClientSession, replicas: Replicas, fault: Callable[[int], Awaitable[None]],
    refusals: list[int],
) -> None:
    gate = asyncio.Semaphore(8)

    async def one(n: int, data: bytes) -> None:
        async with gate:
            await deliver(session, replicas, data, n, refusals)

    for number, stage in enumerate(stages()):
        sending = asyncio.gather(*(one(n, data) for n, data in enumerate(stage)))
        await fault(number)
        await sending


async def until_delivered(fake: FakePagerDuty, replicas: Replicas) -> None:
    deadline = time.monotonic() + 30
    while len(fake.stories()) < CERTS or not all(STORY.fullmatch(s) for s in fake.stories().values()):
        assert time.monotonic() < deadline, f"{len(fake.accepted)} events arrived: {replicas.log.read_text()[-3000:]}"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # nothing more may arrive


def effective(fake: FakePagerDuty) -> dict[str, list[str]]:
    """Per dedup key, what changed in PagerDuty (resends absorbed by the dedup_key left out)."""
    per_key: dict[str, list[str]] = {}
    for accepted in fake.accepted:
        if accepted.outcome not in ("deduplicated", "dropped", "change"):
            per_key.setdefault(accepted.dedup_key, []).append(accepted.outcome)
    return per_key


# Per key (FakePagerDuty.stories), each firing and its resolve: paged then closed (O R); paged by an
# attempt the killed replica never recorded, resent late as a change event, closed (O C R); or claimed by
# the killed replica and never sent, then late: a change event, a resolve with nothing open (C D). A
# resent resolve finds nothing open (D). Never two pages for one firing.
FIRING = r"(?:OC?RD*|CD+)"
STORY = re.compile(FIRING * 2)


def check_pagerduty(fake: FakePagerDuty, replicas: Replicas) -> None:
    told = fake.stories()
    assert len(told) == CERTS and all(STORY.fullmatch(story) for story in told.values()), told
    for key in effective(fake):
        actions = [a for a, k in fake.actions() if k == key]
        collapsed = [a for n, a in enumerate(actions) if n == 0 or actions[n - 1] != a]
        assert collapsed in (["trigger", "resolve", "trigger", "resolve"], ["resolve", "trigger", "resolve"],
                             ["trigger", "resolve"]), (key, actions)
    assert PASSWORD not in replicas.log.read_text()  # the store's password never reaches a log


async def test_three_replicas_one_killed_mid_burst_another_restarted(tmp_path, pg):
    async with run_fake_pagerduty(rate_limit=100000) as fake:
        fake.fail_next(2 * CERTS, status=None, delay=0.3)  # slow answers: deliveries are in flight at the kill
        timeout = aiohttp.ClientTimeout(total=5)
        async with Replicas(tmp_path, pg, fake, 3) as replicas, aiohttp.ClientSession(timeout=timeout) as session:
            victim, restarted = replicas.ports[0], replicas.ports[1]
            leased: list[int] = []

            async def fault(stage: int) -> None:
                if stage == 1:  # the first firings are being delivered: kill one replica
                    while not fake.accepted:
                        await asyncio.sleep(0.01)
                    replicas.procs[victim].send_signal(signal.SIGKILL)
                    await replicas.procs[victim].wait()
                    leased.append(await pg.count("outbox WHERE lease_until > extract(epoch FROM now())"))
                if stage == 2:  # a rolling restart of another one
                    replicas.procs[restarted].send_signal(signal.SIGTERM)
                    await replicas.procs[restarted].wait()
                    await replicas.start(restarted)

            await send_all(session, replicas, fault, [])
            await until_delivered(fake, replicas)
            check_pagerduty(fake, replicas)
            assert leased[0] > 0, "the kill must land while deliveries are claimed"
            assert replicas.procs[restarted].returncode is None
    assert await pg.count("outbox") == 0


async def test_postgresql_restarted_under_load_answers_503_then_loses_nothing(tmp_path, pg):
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        run_fake_pagerduty(rate_limit=100000) as fake,
        Replicas(tmp_path, pg, fake, 2) as replicas,
        aiohttp.ClientSession(timeout=timeout) as session,
    ):
        refusals: list[int] = []

        async def fault(stage: int) -> None:
            if stage == 1:
                await asyncio.to_thread(pg.server.stop_fast)
                # While it is away, a webhook is refused with a 5xx (Alertmanager retries), not accepted.
                async with session.post(URL.format(port=replicas.ports[0]), data=stages()[1][0]) as resp:
                    assert resp.status == 503
                await asyncio.sleep(1.0)
                await asyncio.to_thread(pg.server.start)

        await send_all(session, replicas, fault, refusals)
        await until_delivered(fake, replicas)
        check_pagerduty(fake, replicas)
        assert set(refusals) <= {503}  # refused while it was away, never a 4xx
        assert [p.returncode for p in replicas.procs.values()] == [None, None]  # reconnected by themselves
        for port in replicas.ports:
            async with session.get(f"http://127.0.0.1:{port}/-/ready") as resp:
                assert resp.status == 200

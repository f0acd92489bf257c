"""Benchmark the bridge's durable ingest and outbox drain on this machine (loopback only; not a test).

Runs the real ``certpager bridge`` and the fake PagerDuty (tests/fakes/pagerduty.py) as subprocesses, with
the SQLite store on the local disk (WAL, synchronous=FULL: every commit is fsync'd), and prints:

1. ingest at saturation: alert transitions/s answered 200 by ``POST /api/v1/alerts/alertmanager``, with
   1 and 10 alerts per webhook (Alertmanager groups), many concurrent senders;
2. answer latency p50/p99 at a fixed, open-loop 500 transitions/s (1 and 10 alerts per webhook);
3. outbox drain rate into the fake PagerDuty, the rate limiter off (limit 1,000,000/min) and on (120/min);
4. replicas: ingest at saturation (1 alert per webhook) and its answer p50/p99, with one bridge on SQLite
   and then 1, 2 and 3 bridges on one PostgreSQL (a private cluster from Debian's binaries, on the same
   disk, ``fsync=on``, ``synchronous_commit=on``), the senders spread over the replicas. It also prints
   the CPU the bridges and the PostgreSQL server processes used per transition.

Usage: ``.venv/bin/python -m bench.bridge_ingest [--seconds 8] [--phases all|replicas]``. Every phase is
bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
ROUTING_KEY = "B" * 32
PATH = "/api/v1/alerts/alertmanager"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to report cost independent of machine load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    url: str


@contextlib.asynccontextmanager
async def fake_pagerduty(workdir: Path) -> AsyncIterator[Proc]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.pagerduty", "--port", "0", "--rate-limit", "1000000000",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=(workdir / "fake.log").open("ab"),
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        yield Proc(proc, line.removeprefix("listening on "))
    finally:
        await stop(proc)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def bridge(
    workdir: Path, events_url: str, *, rate_limit: int, db: str, store: str | None = None
) -> AsyncIterator[Proc]:
    """One bridge process; ``store`` is the YAML of its store section (default: SQLite file ``db``)."""
    port = free_port()
    store = store or f"  path: {workdir / (db + '.db')}"
    config = workdir / f"{db}-{port}.yml"
    config.write_text(
        f"integrations:\n  pagerduty:\n    routing_key: {ROUTING_KEY}\n    events_url: {events_url}\n"
        f"    rate_limit_per_minute: {rate_limit}\n"
        f"server:\n  listen_address: 127.0.0.1:{port}\n  max_body_bytes: 16777216\n"
        f"store:\n{store}\n"
        "outbox:\n  max_in_flight: 32\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "certpager", "bridge", "--config.file", str(config), "--log.level", "warning",
        cwd=REPO, stderr=(workdir / "bridge.log").open("ab"), env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            await wait_ready(url)
        except RuntimeError:
            print((workdir / "bridge.log").read_text()[-3000:], file=sys.stderr)
            raise
        yield Proc(proc, url)
    finally:
        await stop(proc)


async def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/-/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"bridge at {url} not ready")


class Payloads:
    """Webhooks whose alerts are all new occurrences (every one is a transition that queues an event)."""

    def __init__(self, per_webhook: int, tag: str) -> None:
        self.per_webhook = per_webhook
        self.tag = tag
        self.n = 0

    def next(self) -> bytes:
        alerts = []
        for _ in range(self.per_webhook):
            self.n += 1
            cert = f"{self.tag}-{self.n}.example.com"
            alerts.append({
                "status": "firing",
                "labels": {"alertname": "CertificateExpired", "class": "certificate_expired", "certificate": cert,
                           "environment": "production", "issuer": "R11", "target": f"{cert}:443"},
                "annotations": {"summary": f"{cert} expired", "expires_at": "2026-11-20T00:00:00Z"},
                "startsAt": "2026-11-20T10:00:00.000000Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example/graph", "fingerprint": f"{self.n:016x}",
            })
        return json.dumps({
            "version": "4", "groupKey": "{}:{alertname=\"CertificateExpired\"}", "truncatedAlerts": 0,
            "status": "firing", "receiver": "certpager", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://alertmanager.example:9093", "alerts": alerts,
        }).encode()


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs webhooks with pre-encoded headers.

    The load generator shares the 2 cores with the bridge, so it must cost little: a raw request on a
    kept-alive socket costs a fraction of an aiohttp client request (see ``client CPU`` in the output).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, _, port = url.removeprefix("http://").partition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        return cls(reader, writer, head.encode())

    async def post(self, data: bytes) -> float:
        """Send one webhook, read the whole answer: seconds taken (raises unless 200)."""
        started = time.perf_counter()
        self.writer.write(b"%sContent-Length: %d\r\n\r\n%s" % (self.head, len(data), data))
        header = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in header.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        if header[9:12] != b"200":
            raise RuntimeError(f"webhook answered {header[:40]!r}")
        return time.perf_counter() - started

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Idle connections to reuse; a new one when all are busy (open-loop load needs any number)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.idle: list[Connection] = []
        self.all: list[Connection] = []

    async def post(self, data: bytes) -> float:
        conn = self.idle.pop() if self.idle else None
        if conn is None:
            conn = await Connection.open(self.url)
            self.all.append(conn)
        took = await conn.post(data)
        self.idle.append(conn)
        return took

    def close(self) -> None:
        for conn in self.all:
            conn.close()


async def saturate(
    url: str | list[str], per_webhook: int, seconds: float, senders: int = 32, latencies: list[float] | None = None,
    tag: str = "",
) -> tuple[float, int]:
    """Closed loop, ``senders`` at once (spread over the URLs): (transitions/s committed and answered, transitions).

    Each answer's time is appended to ``latencies`` when given.
    """
    payloads = Payloads(per_webhook, f"sat{per_webhook}{tag}")
    done = 0
    deadline = time.perf_counter() + seconds
    pools = [Pool(u) for u in ([url] if isinstance(url, str) else url)]

    async def sender(pool: Pool) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            took = await pool.post(payloads.next())
            done += per_webhook
            if latencies is not None:
                latencies.append(took)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(sender(pools[i % len(pools)]) for i in range(senders)))
        return done / (time.perf_counter() - started), done
    finally:
        for pool in pools:
            pool.close()


async def paced(url: str, per_webhook: int, rate: float, seconds: float) -> tuple[float, float, float]:
    """Open loop at ``rate`` transitions/s: (p50, p99, max) answer latency in ms."""
    payloads = Payloads(per_webhook, f"lat{per_webhook}")
    interval = per_webhook / rate
    pool = Pool(url)
    try:
        tasks = []
        start = time.perf_counter()
        for i in range(int(seconds / interval)):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(pool.post(payloads.next())))
        latencies = list(await asyncio.gather(*tasks))
    finally:
        pool.close()
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000, max(latencies) * 1000


async def accepted(fake_url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(fake_url + "/_fake/state") as resp:
        return len((await resp.json())["accepted"])


async def drain(workdir: Path, fake_url: str, *, rate_limit: int, events: int, window: float) -> tuple[int, float]:
    """Queue ``events`` triggers, then count how many reach the fake within ``window`` s: (count, seconds)."""
    base = await accepted(fake_url)
    async with bridge(workdir, fake_url, rate_limit=rate_limit, db=f"drain{rate_limit}") as b:
        payloads = Payloads(50, f"drain{rate_limit}")
        pool = Pool(b.url)
        try:
            started = time.perf_counter()
            for _ in range(events // 50):
                await pool.post(payloads.next())
            deadline = started + window
            count = 0
            while time.perf_counter() < deadline:
                count = await accepted(fake_url) - base
                if count >= events:
                    break
                await asyncio.sleep(0.05)
            return count, time.perf_counter() - started
        finally:
            pool.close()


def postgres_cpu(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster and every process it started (live ones)."""
    total = cpu_seconds(postmaster)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def report(label: str, rate: float, done: int, latencies: list[float], bridge_cpu: float, pg_cpu: float | None) -> str:
    cuts = statistics.quantiles(latencies, n=100)
    line = (f"{label:<28} {rate:7.0f} transitions/s  answer p50={cuts[49] * 1000:5.1f} ms p99={cuts[98] * 1000:6.1f} ms"
            f"  bridges CPU {bridge_cpu / done * 1e6:4.0f} us/tr")
    if pg_cpu is not None:
        line += f"  postgres CPU {pg_cpu / done * 1e6:4.0f} us/tr"
    return line + f"  (load average {load_average()})"


async def replicas_phase(workdir: Path, fake_url: str, seconds: float) -> None:
    """One bridge on SQLite, then 1, 2 and 3 on one PostgreSQL: saturation with 1 alert per webhook."""
    from tests.postgres import PASSWORD, cluster  # the tests' private cluster (Debian's binaries)

    async with bridge(workdir, fake_url, rate_limit=120, db="replicas-sqlite") as b:
        latencies: list[float] = []
        cpu0 = cpu_seconds(b.proc.pid)
        rate, done = await saturate(b.url, 1, seconds, latencies=latencies, tag="sqlite")
        print(report("replicas sqlite x1", rate, done, latencies, cpu_seconds(b.proc.pid) - cpu0, None))
    (workdir / "pg.password").write_text(PASSWORD + "\n")
    with cluster(fsync=True) as server:
        if server is None:
            print("replicas postgresql: not run (PostgreSQL is not installed: scripts/install-system-deps)")
            return
        postmaster = server.daemon.proc.pid if server.daemon.proc is not None else 0
        for count in (1, 2, 3):
            database = await server.create_database()
            store = f"  url: {server.url(database)}\n  password_file: {workdir / 'pg.password'}\n  pool_size: 8"
            async with contextlib.AsyncExitStack() as stack:
                bridges = await asyncio.gather(*(
                    stack.enter_async_context(bridge(workdir, fake_url, rate_limit=120, db=f"pg{count}", store=store))
                    for _ in range(count)
                ))
                latencies = []
                cpu0, pg0 = sum(cpu_seconds(b.proc.pid) for b in bridges), postgres_cpu(postmaster)
                rate, done = await saturate([b.url for b in bridges], 1, seconds, latencies=latencies, tag=f"pg{count}")
                cpu, pg = sum(cpu_seconds(b.proc.pid) for b in bridges) - cpu0, postgres_cpu(postmaster) - pg0
                print(report(f"replicas postgresql x{count}", rate, done, latencies, cpu, pg))
            await server.drop_database(database)


async def main(seconds: float, phases: str) -> None:
    with tempfile.TemporaryDirectory(prefix="certpager-bench-", dir=REPO) as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        print(f"cpus={os.cpu_count()} store={workdir} (WAL, synchronous=FULL)")
        if phases == "replicas":
            async with fake_pagerduty(workdir) as fake:
                await replicas_phase(workdir, fake.url, seconds)
            return
        async with fake_pagerduty(workdir) as fake:
            async with bridge(workdir, fake.url, rate_limit=120, db="ingest") as b:
                for per in (1, 10):
                    cpu0, own0 = cpu_seconds(b.proc.pid), time.process_time()
                    rate, done = await saturate(b.url, per, seconds)
                    cost = (cpu_seconds(b.proc.pid) - cpu0) / done * 1e6
                    client = (time.process_time() - own0) / done * 1e6
                    print(f"ingest saturation   alerts/webhook={per:<3} {rate:8.0f} transitions/s"
                          f"  bridge CPU {cost:5.0f} us/transition  client CPU {client:4.0f} us/transition"
                          f"  (load average {load_average()})")
                for per in (1, 10):
                    p50, p99, worst = await paced(b.url, per, 500.0, seconds)
                    print(f"latency @500 tr/s   alerts/webhook={per:<3} p50={p50:6.1f} ms  p99={p99:6.1f} ms"
                          f"  max={worst:6.1f} ms")
            count, took = await drain(workdir, fake.url, rate_limit=1_000_000, events=2000, window=60)
            print(f"drain limiter off   {count} events in {took:5.2f} s = {count / took:6.0f} events/s")
            count, took = await drain(workdir, fake.url, rate_limit=120, events=300, window=10)
            print(f"drain limiter on    {count} events in {took:5.2f} s (limit 120/min per routing key)")
            await replicas_phase(workdir, fake.url, seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each ingest phase")
    parser.add_argument("--phases", choices=["all", "replicas"], default="all", help="replicas: only phase 4")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.phases))

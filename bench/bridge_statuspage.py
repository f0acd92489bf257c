"""Benchmark the Statuspage sink against the fake Statuspage under its real limit (loopback only; not a test).

Runs the real ``certpager bridge`` as a subprocess (SQLite store on the local disk) and the fakes
(tests/fakes/statuspage.py, tests/fakes/pagerduty.py) in this process, so every request's arrival time is
read on one clock. Prints:

1. drain rate with the local limit ON (``requests_per_second: 1``) against a fake that enforces
   Statuspage's 1 request/s per token measured over 60 s (60 in any 60 s, then 429 + Retry-After): requests
   per second, the most requests in any 1 s and any 60 s window, and the 429s. PEER, same run: the same
   drain with the local limit OFF (``requests_per_second: 100``), where only Statuspage's 429s slow it down.
2. a burst of N alert transitions (default 500 firing alerts, 10 per webhook, 5 services): seconds from the
   first webhook to the last component update on the page, and to the last PagerDuty event. PEER, same run:
   the PagerDuty sink draining the same burst at its own limit (120 events/min per routing key), in
   parallel, through the same outbox; both are compared with their limit's floor.

Usage: ``.venv/bin/python -m bench.bridge_statuspage [--drain 60] [--burst 500]``. Each phase is bounded
(the drain by ~N s, the burst by ~N s at 1 request/s plus a margin); everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fakes.pagerduty import FakePagerDuty, run_fake_pagerduty  # noqa: E402
from tests.fakes.statuspage import FakeStatuspage, run_fake_statuspage  # noqa: E402

TOKEN = "bench-statuspage-token"
ROUTING_KEY = "S" * 32
SERVICES = {f"Service {n}": f"cmp{n:09d}" for n in range(5)}
PATH = "/api/v1/alerts/alertmanager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def config(workdir: Path, port: int, sp_url: str, rps: float, pd_url: str | None) -> Path:
    pagerduty = (f"  pagerduty:\n    routing_key: {ROUTING_KEY}\n    events_url: {pd_url}\n"
                 "    rate_limit_per_minute: 120\n") if pd_url else ""
    path = workdir / f"bridge-{port}.yml"
    path.write_text(
        f"integrations:\n{pagerduty}  statuspage:\n    api_token: {TOKEN}\n    page_id: page01\n"
        f"    api_url: {sp_url}\n    component_map: '{json.dumps(SERVICES)}'\n    requests_per_second: {rps}\n"
        f"server:\n  listen_address: 127.0.0.1:{port}\nstore:\n  path: {workdir / f'bridge-{port}.db'}\n"
        "outbox:\n  sweep_interval: 200ms\n"
    )
    return path


@contextlib.asynccontextmanager
async def bridge(workdir: Path, sp_url: str, rps: float, pd_url: str | None = None) -> AsyncIterator[int]:
    port = free_port()
    path = config(workdir, port, sp_url, rps, pd_url)
    with (workdir / f"bridge-{port}.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "certpager", "bridge", "--config.file", str(path), "--log.level", "warning",
            cwd=REPO, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/-/ready") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("bridge not ready")
        yield port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)


def webhook(first: int, count: int) -> bytes:
    names = list(SERVICES)
    alerts = []
    for n in range(first, first + count):
        labels = {"alertname": "CertificateExpired", "class": "certificate_expired",
                  "certificate": f"c{n}.example.com", "environment": "production",
                  "service": names[n % len(names)], "severity": "critical"}
        alerts.append({"status": "firing", "labels": labels, "annotations": {}, "startsAt": "2026-12-01T00:00:00Z",
                       "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": f"{n:016x}"})
    return json.dumps({"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
                       "receiver": "bench", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
                       "externalURL": "", "alerts": alerts}).encode()


async def send_burst(port: int, count: int) -> float:
    """Post ``count`` firing alerts, 10 per webhook; return when the first was posted (monotonic)."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for first in range(0, count, 10):
            data = webhook(first, min(10, count - first))
            async with session.post(f"http://127.0.0.1:{port}{PATH}", data=data) as r:
                assert r.status == 200, await r.text()
    return started


def windows(times: list[float], width: float) -> int:
    """The most arrivals in any window of ``width`` seconds."""
    best, lo = 0, 0
    for hi, at in enumerate(times):
        while at - times[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def wait_for(condition, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def drain(workdir: Path, count: int, rps: float) -> dict[str, float]:
    async with run_fake_statuspage(token=TOKEN, components={c: n for n, c in SERVICES.items()}) as fake:
        async with bridge(workdir, fake.url, rps) as port:
            await send_burst(port, count)
            done = await wait_for(lambda: len(fake.own_incidents()) == count, limit=count * 1.2 + 90)
        arrivals = [e.at for e in fake.log]
        accepted = [e.at for e in fake.log if e.status < 400]
        span = max(accepted[-1] - accepted[0], 1e-9) if len(accepted) > 1 else float("nan")
        return {
            "done": float(done), "requests": len(arrivals), "accepted": len(accepted),
            "rate": (len(accepted) - 1) / span, "max_1s": windows(arrivals, 1.0), "max_60s": windows(arrivals, 60.0),
            "rejected_429": sum(e.status in (420, 429) for e in fake.log), "seconds": span,
            "min_gap": min((b - a for a, b in itertools.pairwise(arrivals)), default=float("nan")),
        }


async def burst(workdir: Path, count: int) -> dict[str, float]:
    sp_fake: FakeStatuspage
    pd_fake: FakePagerDuty
    async with run_fake_statuspage(token=TOKEN, components={c: n for n, c in SERVICES.items()}) as sp_fake, \
            run_fake_pagerduty() as pd_fake:
        async with bridge(workdir, sp_fake.url, 1.0, pd_fake.url) as port:
            started = await send_burst(port, count)
            posted = time.monotonic() - started
            pd_done = float("nan")
            deadline = started + count * 1.1 + 120
            while time.monotonic() < deadline:
                if pd_done != pd_done and len(pd_fake.actions()) >= count:  # NaN: not yet
                    pd_done = time.monotonic() - started
                if pd_done == pd_done and len(sp_fake.own_incidents()) >= count:
                    break
                await asyncio.sleep(0.05)
        last_write = max((e.at for e in sp_fake.writes() if e.status < 300), default=float("nan"))
        last_change = max((c.changed_at[-1] for c in sp_fake.components.values() if c.changed_at),
                          default=float("nan"))
        return {
            "posted_s": posted,
            "statuspage_last_update_s": last_write - started,
            "statuspage_components_final_s": last_change - started,
            "statuspage_incidents": len(sp_fake.own_incidents()),
            "statuspage_429": sum(e.status in (420, 429) for e in sp_fake.log),
            "statuspage_max_1s": windows([e.at for e in sp_fake.log], 1.0),
            "statuspage_max_60s": windows([e.at for e in sp_fake.log], 60.0),
            "pagerduty_last_event_s": pd_done,
            "pagerduty_events": len(pd_fake.actions()),
            "pagerduty_429": pd_fake.requests - len(pd_fake.accepted) - len(pd_fake.rejected),
        }


async def main_async(args: argparse.Namespace) -> None:
    print(f"machine: {os.cpu_count()} cores, load {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="certpager-bench-sp-") as tmp:
        workdir = Path(tmp)
        if args.drain:
            for label, rps in (("limit on (1/s)", 1.0), ("limit off (peer)", 100.0)):
                r = await drain(workdir, args.drain, rps)
                print(f"drain {args.drain} incidents, {label}: {r['rate']:.3f} accepted req/s "
                      f"over {r['seconds']:.1f} s; "
                      f"max {r['max_1s']} req in any 1 s, {r['max_60s']} in any 60 s, closest arrivals "
                      f"{r['min_gap'] * 1000:.0f} ms apart; "
                      f"{r['rejected_429']} answered 429; {r['requests']} requests; done={bool(r['done'])}",
                      flush=True)
        if args.burst:
            r = await burst(workdir, args.burst)
            # Floors: Statuspage, one POST per incident plus two reads of the page, spaced 1.02 s; PagerDuty,
            # 120 events at once, then 120 per 60 s window.
            floor_sp = (args.burst + 2 - 1) * 1.02
            floor_pd = 60.0 * ((args.burst - 1) // 120)
            print(f"burst of {args.burst} transitions (posted in {r['posted_s']:.1f} s): every component at its "
                  f"final status after {r['statuspage_components_final_s']:.1f} s; last Statuspage update (the last "
                  f"incident opened) after {r['statuspage_last_update_s']:.1f} s (floor {floor_sp:.0f} s); "
                  f"{r['statuspage_incidents']} "
                  f"incidents, {r['statuspage_429']} answered 429, max {r['statuspage_max_1s']} req in any 1 s and "
                  f"{r['statuspage_max_60s']} in any 60 s", flush=True)
            print(f"  peer, same run and outbox: last PagerDuty event after {r['pagerduty_last_event_s']:.1f} s "
                  f"(floor {floor_pd:.0f} s at 120/min); {r['pagerduty_events']} events, "
                  f"{r['pagerduty_429']} answered 429", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drain", type=int, default=60, help="incidents in the drain phase (0: skip)")
    parser.add_argument("--burst", type=int, default=500, help="alert transitions in the burst phase (0: skip)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

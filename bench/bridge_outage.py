"""Benchmark how fast the bridge's PagerDuty delivery recovers from an outage (loopback only; not a test).

The real outbox worker, PagerDutySink (httpx, 10 s timeout as in production) and SQLite store deliver 50
triggers (50 certificates) to the fake PagerDuty (tests/fakes/pagerduty.py), in this process. Two outages:

1. PagerDuty answers 500 for 10 s, then recovers. Figure: seconds from the recovery to the last trigger
   accepted, and the requests sent during the outage.
2. PagerDuty hangs for 20 s (no answer: every request times out), then recovers. Same figures.

PEER, same run, for both: the behaviour before issue 16, the sink's limiter keeping the slot of every send,
refused or not (its 120/min window fills with refused sends and the triggers wait for it), and a worker that
keeps starting deliveries into a failing upstream (every slot held for a 10 s timeout while it hangs).

Usage: ``.venv/bin/python -m bench.bridge_outage``. Bounded: each phase stops after 150 s at most.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.alertmanager import parse  # noqa: E402
from bridge.decisions import Policy  # noqa: E402
from bridge.outbox import OutboxWorker  # noqa: E402
from bridge.ratelimit import SlidingWindowLimiter  # noqa: E402
from bridge.sinks.base import DeliveryOutcome  # noqa: E402
from bridge.sinks.pagerduty import PagerDutySink  # noqa: E402
from bridge.store.base import Receipt  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.fakes.pagerduty import FakePagerDuty, run_fake_pagerduty  # noqa: E402

ROUTING_KEY = "B" * 32
CERTS = 50
LIMIT_S = 150.0


class KeepEverySlot(SlidingWindowLimiter):
    """The peer's accounting: a refused send keeps its slot."""

    def release(self, key: str, stamp: float) -> None:
        return None


class KeepsSending(OutboxWorker):
    """The peer's worker: no one-at-a-time while the upstream fails."""

    def _note_health(self, name: str, outcome: DeliveryOutcome) -> None:
        return None


def webhook(n: int) -> bytes:
    alerts = [{"status": "firing", "labels": {"alertname": "CertificateExpired", "class": "certificate_expired",
                                              "certificate": f"c{i}.example.com", "environment": "production"},
               "startsAt": "2026-11-20T10:00:00Z", "fingerprint": f"{i:016x}"} for i in range(n)]
    return json.dumps({"version": "4", "status": "firing", "alerts": alerts}).encode()


async def phase(fake: FakePagerDuty, *, outage: float, hang: bool, peer: bool) -> tuple[float, int]:
    """Seconds from the end of the outage to the last of CERTS triggers accepted, and requests in the outage."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db")
        await store.open()
        sink = PagerDutySink(httpx.AsyncClient(timeout=10.0), url=fake.url, routing_key_for=lambda _: ROUTING_KEY)
        if peer:
            sink._limiter = KeepEverySlot(120, 60.0)  # the bench swaps its own class in, nothing else
        worker_class = KeepsSending if peer else OutboxWorker
        worker = worker_class(store, {"pagerduty": sink}, retry_initial=1.0, retry_max=300.0)
        fake.fail_next(100_000, None if hang else 500, delay=3600.0 if hang else 0.0)
        before = len(fake.accepted)
        raw = webhook(CERTS)
        await store.ingest(Receipt("alertmanager", raw, time.time()), parse(raw), Policy(), sinks=["pagerduty"])
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(outage)
        in_outage = fake.requests
        fake.heal()
        healed = time.monotonic()
        while len(fake.accepted) - before < CERTS and time.monotonic() - healed < LIMIT_S:
            await asyncio.sleep(0.05)
        took = time.monotonic() - healed
        await worker.stop(grace=0.5)
        await task
        await sink.aclose()
        await store.close()
        return took, in_outage


async def main() -> None:
    print(f"# {CERTS} triggers, loadavg {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    for hang, outage, what in ((False, 10.0, "500 for 10 s"), (True, 20.0, "no answer for 20 s")):
        for peer in (False, True):
            async with run_fake_pagerduty() as fake:  # a fresh fake (and rate window) per run
                took, sent = await phase(fake, outage=outage, hang=hang, peer=peer)
            who = "peer (before issue 16)" if peer else "bridge"
            print(f"{what:20} {who:24} last trigger {took:6.2f} s after recovery; {sent:4d} requests in the outage")


if __name__ == "__main__":
    asyncio.run(main())

"""Fakes and builders for the exporter service tests (scheduler, targets, render, web).

FakeClock drives the scheduler in virtual time; FakeProbe is a ProbeFn that records its calls and
answers from a table. Certificates here are plain CertificateInfo values with exact dates, so the
tests can assert exact exported values.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exporter.probes.base import (
    CertificateInfo,
    Phase,
    Position,
    ProbeRequest,
    ProbeResult,
    Reason,
    VerifyReason,
)

NOT_AFTER = 1_800_000_000.0
NOT_BEFORE = 1_700_000_000.0


async def settle(rounds: int = 30) -> None:
    """Let every ready task run (bounded)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """A monotonic clock plus sleep in virtual time; ``advance`` wakes sleepers in deadline order."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running everything that becomes due on the way."""
        end = self.now + seconds
        for _ in range(100_000):  # bounded: a test never loops forever
            await settle()
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > end:
                break
            deadline, _, fut = heapq.heappop(self._sleepers)
            self.now = max(self.now, deadline)
            fut.set_result(None)
        else:
            raise AssertionError("FakeClock.advance did not settle")
        self.now = end
        await settle()


def cert(
    position: Position = Position.LEAF,
    index: int = 0,
    subject_cn: str = "www.example.test",
    issuer_cn: str = "Example Intermediate",
    not_after: float = NOT_AFTER,
    not_before: float = NOT_BEFORE,
    **kw: object,
) -> CertificateInfo:
    values: dict[str, object] = dict(
        serial=f"{index + 1:x}0a", sans=(subject_cn,), key_type="ec", key_bits=256,
        signature_algorithm="ecdsa-with-SHA256", sha256=bytes([index]) * 32,
        self_signed=position is Position.ROOT, is_ca=position is not Position.LEAF,
    )
    values.update(kw)
    return CertificateInfo(position=position, index=index, subject_cn=subject_cn, issuer_cn=issuer_cn,
                           not_before=not_before, not_after=not_after, **values)  # type: ignore[arg-type]


def chain3(base: float = NOT_AFTER) -> tuple[CertificateInfo, ...]:
    return (
        cert(Position.LEAF, 0, "www.example.test", "Example Intermediate", base),
        cert(Position.INTERMEDIATE, 1, "Example Intermediate", "Example Root", base + 1000),
        cert(Position.ROOT, 2, "Example Root", "Example Root", base + 2000),
    )


def ok_result(chain: tuple[CertificateInfo, ...] | None = None, **kw: object) -> ProbeResult:
    values: dict[str, object] = dict(
        success=True, durations={Phase.RESOLVE: 0.001, Phase.CONNECT: 0.002, Phase.HANDSHAKE: 0.25},
        tls_version="TLS 1.3", cipher="TLS_AES_256_GCM_SHA384", chain=chain if chain is not None else chain3(),
        chain_verified=True, hostname_verified=True, duration=0.253,
    )
    values.update(kw)
    return ProbeResult(**values)  # type: ignore[arg-type]


def failed_result(reason: Reason = Reason.REFUSED, **kw: object) -> ProbeResult:
    values: dict[str, object] = dict(success=False, reason=reason, durations={Phase.RESOLVE: 0.001})
    values.update(kw)
    return ProbeResult(**values)  # type: ignore[arg-type]


def untrusted_result() -> ProbeResult:
    return ok_result(chain_verified=False, verify_reason=VerifyReason.UNKNOWN_ISSUER, hostname_verified=False)


@dataclass
class FakeProbe:
    """A ProbeFn answering from ``answers`` (target -> results, or a callable); records calls."""

    answers: dict[str, list[ProbeResult] | Callable[[ProbeRequest], list[ProbeResult]]] = field(default_factory=dict)
    clock: Callable[[], float] | None = None
    gate: asyncio.Event | None = None  # when set, probes wait for it (concurrency tests)
    calls: list[tuple[str, float]] = field(default_factory=list)
    requests: list[ProbeRequest] = field(default_factory=list)
    running: int = 0
    max_running: int = 0

    async def __call__(self, request: ProbeRequest) -> list[ProbeResult]:
        self.calls.append((request.target, self.clock() if self.clock else 0.0))
        self.requests.append(request)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            answer = self.answers.get(request.target, [ok_result()])
            return answer(request) if callable(answer) else list(answer)
        finally:
            self.running -= 1

    def times(self, target: str) -> list[float]:
        return [t for name, t in self.calls if name == target]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def sample_map(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse Prometheus text; (sample name, labels) -> value. Fails on duplicate series."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    """The value of the one series ``name`` whose labels include ``labels`` (None if absent)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0] if found else None


"""Shared helpers for the bridge tests: payload builders, a recording sink, a settable clock."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import uvloop

from bridge.config import BridgeConfig, LoadedConfig, resolve_secrets
from bridge.sinks.base import Delivered, DeliveryOutcome, OutboxItem
from bridge.store.sqlite import SqliteStore
from tests.bridge.stores import BACKENDS, Backend, PostgresBackend, SqliteBackend

PAYLOADS = Path(__file__).parent / "payloads"
ROUTING_KEY = "R" * 32
T0 = "2026-11-20T10:00:00.000000Z"
T1 = "2026-11-21T10:00:00.000000Z"


def alert(
    status: str = "firing",
    *,
    cls: str = "certificate_expired",
    certificate: str = "api.example.com",
    environment: str | None = "production",
    starts_at: str = T0,
    fingerprint: str | None = None,
    **labels: str,
) -> dict[str, Any]:
    """One Alertmanager alert as Alertmanager serialises it."""
    all_labels = {"alertname": "CertificateAlert", "class": cls, "certificate": certificate, **labels}
    if environment is not None:
        all_labels["environment"] = environment
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": f"{cls} for {certificate}", "expires_at": "2026-11-20T00:00:00Z"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-22T10:00:00Z",
        "generatorURL": "http://prometheus.example/graph?g0.expr=x",
        "fingerprint": fingerprint or hashlib.sha256(repr((cls, certificate, environment)).encode()).hexdigest()[:16],
    }


def payload(*alerts: dict[str, Any], truncated: int = 0, group_key: str = '{}:{alertname="CertificateAlert"}') -> dict:
    """A version 4 webhook carrying ``alerts``."""
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": truncated,
        "status": status,
        "receiver": "certpager",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }


def body(*alerts: dict[str, Any], **kw: Any) -> bytes:
    return json.dumps(payload(*alerts, **kw)).encode()


class RecordingSink:
    """A sink answering from a script (default Delivered), recording every item it was handed."""

    def __init__(self, name: str = "pagerduty", answers: Sequence[DeliveryOutcome] = ()) -> None:
        self.name = name
        self.answers = list(answers)
        self.seen: list[OutboxItem] = []
        self.gate: Callable[[OutboxItem], Any] | None = None

    async def deliver(self, item: OutboxItem) -> DeliveryOutcome:
        self.seen.append(item)
        if self.gate is not None:
            await self.gate(item)
        return self.answers.pop(0) if self.answers else Delivered(status=202)

    async def aclose(self) -> None:
        pass

    def actions(self) -> list[tuple[str, str]]:
        return [(i.payload["key"], i.payload["action"]) for i in self.seen]


class Clock:
    """A settable clock."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def loaded_config(data: dict[str, Any] | None = None, path: Path = Path("/nonexistent/bridge.yml")) -> LoadedConfig:
    config = BridgeConfig.model_validate(data or {})
    return LoadedConfig(config=config, path=path, secrets=resolve_secrets(config, path))


@pytest.fixture
async def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "bridge.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path):
    """A store backend on a fresh database (see tests/bridge/stores.py); every backend in turn."""
    handle: Backend
    if request.param == "postgresql":
        if not isinstance(asyncio.get_running_loop(), uvloop.Loop):
            pytest.skip("PostgreSQL store tests run on uvloop only, the bridge CLI's loop (keeps the suite lean)")
        server = request.getfixturevalue("postgres_server")
        if server is None:
            pytest.skip("PostgreSQL is not installed (scripts/install-system-deps installs it)")
        handle = await PostgresBackend.create(server)
    else:
        handle = SqliteBackend(tmp_path)
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def any_store(backend):
    """An open store of each backend in turn."""
    s = backend.new()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def pg(postgres_server):
    """A fresh database on the session's private PostgreSQL (tests/postgres.py); skipped where none is installed."""
    if postgres_server is None:
        pytest.skip("PostgreSQL is not installed (scripts/install-system-deps installs it)")
    handle = await PostgresBackend.create(postgres_server)
    try:
        yield handle
    finally:
        await handle.close()

"""``certpager history``: every decision the bridge made about a certificate (or one incident key), in words.

    certpager history --certificate NAME | --key KEY [--since 7d] [--until T] [--config.file F]

It reads the audit trail (:mod:`bridge.audit`) of the store the bridge's config names, beside a running
bridge: a SQLite file read-only without its lock, PostgreSQL through the same URL. It answers "did we
page?" and "why no page?": each webhook and its verdict, each event queued, each delivery attempt and
its answer, rate-limit holds, dead letters, acknowledgements and resolves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Protocol

from bridge import audit
from bridge.audit import AuditEntry
from bridge.config import LoadedConfig, load
from bridge.store.base import StoreError
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteAuditReader
from certpager.config import parse_duration
from certpager.errors import CertpagerError

DEFAULT_CONFIG = "certpager-bridge.yml"
_QUEUED = {audit.TRIGGER: "trigger", audit.RESOLVE: "resolve", audit.UPDATE: "update"}


class Trail(Protocol):
    async def audit_trail(
        self, key: str | None = None, *, certificate: str | None = None, since: float | None = None,
        until: float | None = None, limit: int | None = None,
    ) -> list[AuditEntry]: ...


@contextlib.asynccontextmanager
async def open_trail(loaded: LoadedConfig) -> AsyncIterator[Trail]:
    """The audit trail of the store ``loaded`` names (read-only for SQLite)."""
    settings = loaded.config.store
    if settings.url is None:
        yield SqliteAuditReader(settings.path)
        return
    store = PostgresStore(settings.url.get_secret_value(), password=loaded.secrets.store_password, pool_size=1)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def parse_when(value: str, now: float) -> float:
    """``30d``/``12h``/``90`` (that long before now) or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r}: expected a duration before now (30d, 12h, 90m) or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def sentence(entry: AuditEntry) -> str:
    """One audit line in words."""
    action, detail = entry.action, entry.detail
    if action in (audit.RECEIVED, audit.DUPLICATE, audit.STALE):
        return f"webhook received: {detail}"
    if entry.side == "bridge" and action in _QUEUED:
        return f"{_QUEUED[action]} {detail}"
    if action in (audit.DELIVERED, audit.RETRY, audit.HELD, audit.DEAD_LETTER) or action in audit.GROUP_ACTIONS:
        return detail
    who = f" by {entry.actor}" if entry.actor else ""
    return f"{action} from {entry.side}{who}" + (f": {detail}" if detail else "")


def render(entries: list[AuditEntry]) -> list[str]:
    """``TIME  KEY  SENTENCE`` per line."""
    return [f"{stamp(e.at)}  {e.key}  {sentence(e)}" for e in entries]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config.file", dest="config_file", default=DEFAULT_CONFIG,
                        help=f"the bridge's config file, for its store (default {DEFAULT_CONFIG})")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--certificate", help="every incident of this certificate (its certificate label)")
    which.add_argument("--key", help="one incident key (PagerDuty's dedup_key)")
    parser.add_argument("--since", help="from this time: a duration before now (7d, 12h) or ISO 8601 (default: all)")
    parser.add_argument("--until", help="before this time: a duration before now or ISO 8601 (default: now)")


def run(args: argparse.Namespace, *, now: Callable[[], float] | None = None) -> int:
    """Print the history; 0 when there is some, 1 when nothing is recorded, 2 on a usage or store error."""
    import time

    moment = (now or time.time)()
    try:
        since = parse_when(args.since, moment) if args.since else None
        until = parse_when(args.until, moment) if args.until else None
    except ValueError as exc:
        print(f"certpager history: {exc}", file=sys.stderr)
        return 2
    try:
        loaded = load(args.config_file)
        entries = asyncio.run(_read(loaded, args.key, args.certificate, since, until))
    except (CertpagerError, StoreError) as exc:
        print(f"certpager history: {exc}", file=sys.stderr)
        return 2
    if not entries:
        what = f"certificate {args.certificate}" if args.certificate else f"incident key {args.key}"
        print(f"nothing recorded for {what}: the bridge received no alert about it in that time "
              "(or its lines are older than store.audit_retention)")
        return 1
    print("\n".join(render(entries)))
    return 0


async def _read(
    loaded: LoadedConfig, key: str | None, certificate: str | None, since: float | None, until: float | None
) -> list[AuditEntry]:
    async with open_trail(loaded) as trail:
        return await trail.audit_trail(key, certificate=certificate, since=since, until=until)

"""The store backends the store tests run against, behind one test-side handle (:class:`Backend`).

A test asks for the ``backend`` fixture (tests/bridge/conftest.py), parametrised over :data:`BACKENDS`,
or for ``any_store`` (an open store of that backend). ``backend.new()`` is another store on the same
database (a restart, or a second replica); ``count`` and ``pending`` look at the database from outside
the store under test.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from bridge.sinks.base import OutboxItem
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from tests.postgres import PASSWORD, PostgresServer

PENDING_SQL = "SELECT id, sink, ordering_key, payload, attempts, created_at FROM outbox ORDER BY id"


class Backend(Protocol):
    name: str

    def new(self) -> Any:
        """A new, unopened store on this test's database."""
        ...

    async def count(self, table: str) -> int: ...

    async def pending(self, sink: str | None = None) -> list[OutboxItem]:
        """Every queued outbox row in id order."""
        ...

    async def set_payload(self, item_id: int, text: str) -> None:
        """Overwrite an outbox row's stored payload (to test rows that cannot be decoded)."""
        ...

    async def close(self) -> None: ...


def outbox_item(row: Sequence[Any]) -> OutboxItem:
    return OutboxItem(id=int(row[0]), sink=row[1], ordering_key=row[2], payload=json.loads(row[3]),
                      attempts=int(row[4]), created_at=float(row[5]))


class SqliteBackend:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.path = directory / "bridge.db"

    def new(self) -> SqliteStore:
        return SqliteStore(self.path)

    async def count(self, table: str) -> int:
        with sqlite3.connect(self.path) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    async def pending(self, sink: str | None = None) -> list[OutboxItem]:
        with sqlite3.connect(self.path) as conn:
            items = [outbox_item(row) for row in conn.execute(PENDING_SQL)]
        return [i for i in items if sink is None or i.sink == sink]

    async def set_payload(self, item_id: int, text: str) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute("UPDATE outbox SET payload = ? WHERE id = ?", (text, item_id))

    async def close(self) -> None:
        pass


class PostgresBackend:
    """A fresh database on the session's cluster, dropped at the end of the test."""

    name = "postgresql"

    def __init__(self, server: PostgresServer, database: str) -> None:
        self.server, self.database = server, database
        self.url = server.url(database)

    @classmethod
    async def create(cls, server: PostgresServer) -> PostgresBackend:
        return cls(server, await server.create_database())

    def new(self, **options: Any) -> PostgresStore:
        return PostgresStore(self.url, password=PASSWORD, **{"stats_interval": 0.05, **options})

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await self.server.connect(self.database)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def count(self, table: str) -> int:
        return int((await self.fetch(f"SELECT COUNT(*) FROM {table}"))[0][0])

    async def pending(self, sink: str | None = None) -> list[OutboxItem]:
        items = [outbox_item(row) for row in await self.fetch(PENDING_SQL)]
        return [i for i in items if sink is None or i.sink == sink]

    async def set_payload(self, item_id: int, text: str) -> None:
        await self.fetch("UPDATE outbox SET payload = $1 WHERE id = $2", text, item_id)

    async def close(self) -> None:
        await self.server.drop_database(self.database)


BACKENDS = ["sqlite", "postgresql"]

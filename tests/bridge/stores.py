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

from bridge.sinks.base import OutboxItem
from bridge.store.sqlite import SqliteStore

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

    async def close(self) -> None:
        pass


BACKENDS = ["sqlite"]


async def make_backend(name: str, directory: Path) -> Backend:
    """The handle for backend ``name``, on a fresh database."""
    if name == "sqlite":
        return SqliteBackend(directory)
    raise ValueError(f"unknown store backend {name!r}")

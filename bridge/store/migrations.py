"""SQLite schema migrations: version N is ``MIGRATIONS[N - 1]``; ``PRAGMA user_version`` holds the version.

Applied at open, each in its own transaction, so re-opening an up-to-date file is a no-op and a crash
mid-migration leaves the previous version. Never edit a released migration; append a new one.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: receipts, occurrences, incidents, outbox, dead letters. Every index costs a B-tree write per
    # ingest (the hot path), so only lookups the hot path makes are indexed; the hourly prune scans.
    """
    CREATE TABLE receipts (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        received_at REAL NOT NULL,
        group_key TEXT NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE occurrences (
        fingerprint TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
        incident_key TEXT NOT NULL,
        scope TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (fingerprint, starts_at)
    ) WITHOUT ROWID;
    CREATE INDEX occurrences_firing_scope ON occurrences(scope) WHERE status = 'firing';
    CREATE TABLE incidents (
        key TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        event_class TEXT NOT NULL,
        route TEXT NOT NULL,
        open INTEGER NOT NULL,
        trigger TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX incidents_scope ON incidents(scope);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sink TEXT NOT NULL,
        ordering_key TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        lease_until REAL NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        receipt_id INTEGER
    );
    CREATE INDEX outbox_key ON outbox(sink, ordering_key, id);
    CREATE INDEX outbox_due ON outbox(sink, next_attempt_at);
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        sink TEXT NOT NULL,
        ordering_key TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_at REAL NOT NULL,
        dead_at REAL NOT NULL,
        status INTEGER NOT NULL,
        error TEXT NOT NULL
    );
    CREATE INDEX dead_letters_dead_at ON dead_letters(dead_at);
    """,
    # 2: the alerts of a webhook that were rejected (JSON [{index, error}]), kept with its receipt.
    """
    ALTER TABLE receipts ADD COLUMN rejected TEXT
    """,
)

LATEST = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version (0: empty)."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the missing migrations (autocommit connection); return the resulting version."""
    version = schema_version(conn)
    if version > LATEST:
        raise RuntimeError(f"store schema version {version} is newer than this bridge knows ({LATEST})")
    for number in range(version + 1, LATEST + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[number - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return schema_version(conn)


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT on its own; split so the migration and its version bump share one transaction.
    return [s.strip() for s in script.split(";") if s.strip()]

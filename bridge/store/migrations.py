"""Schema migrations of both backends: version N is ``MIGRATIONS[N - 1]`` (SQLite, ``PRAGMA user_version``
holds the version) and ``POSTGRES_MIGRATIONS[N - 1]`` (PostgreSQL, applied by :mod:`bridge.store.postgres`).

Applied at open, each in its own transaction, so re-opening an up-to-date database is a no-op and a crash
mid-migration leaves the previous version. Never edit a released migration; append a new one to BOTH
tuples (the same tables and columns in each dialect; tests/bridge/test_store.py checks they keep step).
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
    # 3: groups of correlated incidents (grouping:), and which group an incident is a member of.
    """
    CREATE TABLE groups (
        key TEXT PRIMARY KEY,
        slot TEXT NOT NULL,
        route TEXT NOT NULL,
        opened_at REAL NOT NULL,
        open INTEGER NOT NULL,
        detail TEXT NOT NULL,
        updated_at REAL NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE INDEX groups_open_slot ON groups(slot) WHERE open = 1;
    ALTER TABLE incidents ADD COLUMN grp TEXT NOT NULL DEFAULT ''
    """,
    # 4: ack sync. PagerDuty webhook ids (dedup, and whether applied), each incident's ack state (JSON of
    # bridge.acksync.Ack), every silence the bridge created, and the audit trail of state changes.
    """
    CREATE TABLE pd_webhooks (
        webhook_id TEXT PRIMARY KEY,
        received_at REAL NOT NULL,
        event_type TEXT NOT NULL,
        applied_at REAL
    ) WITHOUT ROWID;
    CREATE TABLE ack_state (
        key TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        incident_key TEXT NOT NULL,
        alertmanager TEXT NOT NULL,
        created_at REAL NOT NULL,
        expired_at REAL
    ) WITHOUT ROWID;
    CREATE INDEX silences_key ON silences(incident_key) WHERE expired_at IS NULL;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        incident_key TEXT NOT NULL,
        side TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_key ON audit(incident_key, id);
    """,
    # 5: the audit of runbook actions: every attempt's outcome.
    """
    CREATE TABLE action_runs (
        id INTEGER PRIMARY KEY,
        action TEXT NOT NULL,
        type TEXT NOT NULL,
        incident_key TEXT NOT NULL,
        phase TEXT NOT NULL,
        result TEXT NOT NULL,
        status INTEGER NOT NULL,
        detail TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX action_runs_at ON action_runs(at)
    """,
    # 6: the audit trail (bridge.audit) also holds every decision of the ingest and the outbox, with the
    # subject it was about, so a certificate's history and the report need no other table.
    """
    ALTER TABLE audit ADD COLUMN certificate TEXT NOT NULL DEFAULT '';
    ALTER TABLE audit ADD COLUMN environment TEXT NOT NULL DEFAULT '';
    ALTER TABLE audit ADD COLUMN event_class TEXT NOT NULL DEFAULT '';
    ALTER TABLE audit ADD COLUMN issuer TEXT NOT NULL DEFAULT '';
    CREATE INDEX audit_certificate ON audit(certificate) WHERE certificate != '';
    CREATE INDEX audit_at ON audit(at)
    """,
    # 7: runbook actions' outcomes are audit trail lines (side "actions", written by the outbox): one record.
    "DROP TABLE action_runs",
)

# The same schema in PostgreSQL's dialect. Ids are identity columns: an outbox id is taken when the row is
# inserted, and ingests of one scope are serialised (advisory locks), so a key's events keep id order.
POSTGRES_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE receipts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        source TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        group_key TEXT NOT NULL,
        body BYTEA NOT NULL
    );
    CREATE TABLE occurrences (
        fingerprint TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
        incident_key TEXT NOT NULL,
        scope TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (fingerprint, starts_at)
    );
    CREATE INDEX occurrences_firing_scope ON occurrences(scope) WHERE status = 'firing';
    CREATE TABLE incidents (
        key TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        event_class TEXT NOT NULL,
        route TEXT NOT NULL,
        open BOOLEAN NOT NULL,
        trigger TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX incidents_scope ON incidents(scope);
    CREATE TABLE outbox (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        sink TEXT NOT NULL,
        ordering_key TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        receipt_id BIGINT
    );
    CREATE INDEX outbox_key ON outbox(sink, ordering_key, id);
    CREATE INDEX outbox_due ON outbox(sink, next_attempt_at);
    CREATE TABLE dead_letters (
        id BIGINT PRIMARY KEY,
        sink TEXT NOT NULL,
        ordering_key TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        dead_at DOUBLE PRECISION NOT NULL,
        status INTEGER NOT NULL,
        error TEXT NOT NULL
    );
    CREATE INDEX dead_letters_dead_at ON dead_letters(dead_at);
    """,
    # 2: the alerts of a webhook that were rejected (JSON [{index, error}]), kept with its receipt.
    """
    ALTER TABLE receipts ADD COLUMN rejected TEXT
    """,
    # 3: groups of correlated incidents (grouping:), and which group an incident is a member of.
    """
    CREATE TABLE groups (
        key TEXT PRIMARY KEY,
        slot TEXT NOT NULL,
        route TEXT NOT NULL,
        opened_at DOUBLE PRECISION NOT NULL,
        open BOOLEAN NOT NULL,
        detail TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE INDEX groups_open_slot ON groups(slot) WHERE open;
    ALTER TABLE incidents ADD COLUMN grp TEXT NOT NULL DEFAULT ''
    """,
    # 4: ack sync (see MIGRATIONS[3]).
    """
    CREATE TABLE pd_webhooks (
        webhook_id TEXT PRIMARY KEY,
        received_at DOUBLE PRECISION NOT NULL,
        event_type TEXT NOT NULL,
        applied_at DOUBLE PRECISION
    );
    CREATE TABLE ack_state (
        key TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        incident_key TEXT NOT NULL,
        alertmanager TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expired_at DOUBLE PRECISION
    );
    CREATE INDEX silences_key ON silences(incident_key) WHERE expired_at IS NULL;
    CREATE TABLE audit (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        incident_key TEXT NOT NULL,
        side TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_key ON audit(incident_key, id);
    """,
    # 5: the audit of runbook actions: every attempt's outcome.
    """
    CREATE TABLE action_runs (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        action TEXT NOT NULL,
        type TEXT NOT NULL,
        incident_key TEXT NOT NULL,
        phase TEXT NOT NULL,
        result TEXT NOT NULL,
        status INTEGER NOT NULL,
        detail TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX action_runs_at ON action_runs(at)
    """,
    # 6: the audit trail's subject columns (see MIGRATIONS[5]).
    """
    ALTER TABLE audit ADD COLUMN certificate TEXT NOT NULL DEFAULT '';
    ALTER TABLE audit ADD COLUMN environment TEXT NOT NULL DEFAULT '';
    ALTER TABLE audit ADD COLUMN event_class TEXT NOT NULL DEFAULT '';
    ALTER TABLE audit ADD COLUMN issuer TEXT NOT NULL DEFAULT '';
    CREATE INDEX audit_certificate ON audit(certificate) WHERE certificate != '';
    CREATE INDEX audit_at ON audit(at)
    """,
    # 7: runbook actions' outcomes are audit trail lines (side "actions", written by the outbox): one record.
    "DROP TABLE action_runs",
)

LATEST = len(MIGRATIONS)
AUDIT_VERSION = 6  # the first version whose audit table has the subject columns


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
            for statement in statements(MIGRATIONS[number - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return schema_version(conn)


def statements(script: str) -> list[str]:
    # executescript() would COMMIT on its own; split so the migration and its version bump share one transaction.
    return [s.strip() for s in script.split(";") if s.strip()]

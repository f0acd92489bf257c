"""SQLite statements of ack sync: each function runs inside the single writer's transaction.

:class:`SqliteAckSql` supplies the steps of the shared transaction script
(:mod:`bridge.store.acksync_script`); the one writer thread serialises ack syncs.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Sequence

from bridge.acksync import Ack, Changes, IncidentView, SyncState
from bridge.decisions import Group
from bridge.pagerduty_webhook import WebhookEvent
from bridge.store.acksync_script import ClaimWebhook, LoadSync, WriteSync
from bridge.store.base import Receipt
from bridge.store.ingest import GROUP_COLS, GroupRow, decode_group

WEBHOOK_SINK = "pagerduty_webhook"
_ACK_FIELDS = {f.name for f in dataclasses.fields(Ack)}


def record_webhook(conn: sqlite3.Connection, receipt: Receipt, event: WebhookEvent) -> bool:
    """Store a verified PagerDuty webhook and queue its processing; False when its webhook id was seen."""
    cursor = conn.execute(
        "INSERT INTO pd_webhooks (webhook_id, received_at, event_type) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (event.webhook_id, receipt.received_at, event.event_type),
    )
    if cursor.rowcount == 0:
        return False
    cursor = conn.execute(
        "INSERT INTO receipts (source, received_at, group_key, body) VALUES (?, ?, ?, ?)",
        (receipt.source, receipt.received_at, f"pagerduty:{event.incident_id}", receipt.body),
    )
    payload = json.dumps({"webhook_id": event.webhook_id, "event": event.raw})
    # Ordered per PagerDuty incident, as PagerDuty sends them; other incidents proceed in parallel.
    conn.execute(
        "INSERT INTO outbox (sink, ordering_key, payload, created_at, next_attempt_at, receipt_id)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (WEBHOOK_SINK, f"pd:{event.incident_id or event.event_id}", payload, receipt.received_at,
         receipt.received_at, cursor.lastrowid),
    )
    return True


def load(conn: sqlite3.Connection, keys: Sequence[str] | None) -> SyncState:
    """The incidents ``keys`` (None: every open incident), their firing fingerprints and ack rows, and the
    groups involved: those the incidents are members of, and a key that is a group's (with its members)."""
    cols = "key, route, open, trigger, scope, grp"
    if keys is None:
        rows = conn.execute(f"SELECT {cols} FROM incidents WHERE open = 1").fetchall()
    else:
        rows = []
        for key in keys:
            rows.extend(conn.execute(f"SELECT {cols} FROM incidents WHERE key = ?", (key,)))
    found = {r[0] for r in rows}
    groups: dict[str, Group] = {}
    for key in sorted({r[5] for r in rows if r[5]} | {k for k in keys or () if k not in found}):
        row = conn.execute(f"SELECT {GROUP_COLS} FROM groups WHERE key = ?", (key,)).fetchone()
        if row is not None:
            groups[key] = decode_group(*row)
    for group in groups.values():  # a group's members, when it was asked for by its key
        for member in sorted(set(group.members) - found):
            rows.extend(conn.execute(f"SELECT {cols} FROM incidents WHERE key = ?", (member,)))
            found.add(member)
    firing: dict[str, list[str]] = {}
    for row in rows:  # the partial index on firing occurrences by scope
        for (fp,) in conn.execute(
            "SELECT fingerprint FROM occurrences WHERE scope = ? AND status = 'firing' AND incident_key = ?",
            (row[4], row[0]),
        ):
            firing.setdefault(row[0], []).append(fp)
    incidents = {
        r[0]: IncidentView(r[0], r[1], bool(r[2]), json.loads(r[3]), tuple(sorted(firing.get(r[0], ()))), r[5])
        for r in rows
    }
    acks: dict[str, Ack] = {}
    for key in sorted(found | set(groups) | set(keys or ())):
        row = conn.execute("SELECT state FROM ack_state WHERE key = ?", (key,)).fetchone()
        if row is not None:
            data = {k: v for k, v in json.loads(row[0]).items() if k in _ACK_FIELDS}
            acks[key] = Ack(**data)
    own = frozenset(r[0] for r in conn.execute("SELECT id FROM silences"))
    return SyncState(incidents=incidents, acks=acks, own_silences=own, groups=groups)


def write(conn: sqlite3.Connection, changes: Changes, now: float) -> None:
    """Write a decision's changes."""
    conn.executemany(
        "INSERT INTO ack_state (key, state, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
        " state = excluded.state, updated_at = excluded.updated_at",
        [(a.key, json.dumps(dataclasses.asdict(a)), now) for a in changes.acks],
    )
    conn.executemany(
        "INSERT INTO audit (at, incident_key, side, actor, action, detail) VALUES (?, ?, ?, ?, ?, ?)",
        [(e.at, e.key, e.side, e.actor, e.action, e.detail) for e in changes.audit],
    )
    for key in changes.close:
        # Its firing occurrences count as resolved: a repeat of them is stale and never pages again;
        # only a new occurrence (a later startsAt) opens the incident anew.
        conn.execute(
            "UPDATE occurrences SET status = 'resolved', updated_at = ? WHERE incident_key = ? AND status = 'firing'",
            (now, key),
        )
        conn.execute("UPDATE incidents SET open = 0, updated_at = ? WHERE key = ?", (now, key))
    for group in changes.groups:  # closed with its members out of it (bridge.acksync.closed_group)
        row = GroupRow.of(group)
        conn.execute(
            "UPDATE groups SET open = ?, detail = ?, updated_at = ?, version = ? WHERE key = ?",
            (int(row.open), row.detail, row.updated_at, row.version, row.key),
        )
        conn.execute("UPDATE incidents SET grp = '' WHERE grp = ?", (group.key,))
    conn.executemany(
        "INSERT INTO outbox (sink, ordering_key, payload, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
        [(row.sink, row.ordering_key, json.dumps(row.payload), now, now) for row in changes.outbox],
    )


class SqliteAckSql:
    """The ack-sync script's SQL for SQLite (:class:`bridge.store.acksync_script.AckSql`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def claim_webhook(self, step: ClaimWebhook) -> bool:
        cursor = self.conn.execute(
            "UPDATE pd_webhooks SET applied_at = ? WHERE webhook_id = ? AND applied_at IS NULL",
            (step.now, step.webhook_id),
        )
        return cursor.rowcount == 1

    def load_sync(self, step: LoadSync) -> SyncState:
        return load(self.conn, step.keys)

    def write_sync(self, step: WriteSync) -> None:
        write(self.conn, step.changes, step.now)


def record_silence(conn: sqlite3.Connection, key: str, silence_id: str, alertmanager: str, now: float) -> None:
    conn.execute(
        "INSERT INTO silences (id, incident_key, alertmanager, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (id) DO NOTHING",
        (silence_id, key, alertmanager, now),
    )
    conn.execute(
        "INSERT INTO audit (at, incident_key, side, actor, action, detail) VALUES (?, ?, 'bridge', 'certpager',"
        " 'silence created', ?)",
        (now, key, f"silence {silence_id} on {alertmanager}"),
    )


def live_silences(conn: sqlite3.Connection, key: str) -> list[tuple[str, str]]:
    """(silence id, Alertmanager URL) of the bridge's unexpired silences for ``key``."""
    rows = conn.execute(
        "SELECT id, alertmanager FROM silences WHERE incident_key = ? AND expired_at IS NULL ORDER BY created_at",
        (key,),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def silence_expired(conn: sqlite3.Connection, key: str, silence_id: str, now: float) -> None:
    conn.execute("UPDATE silences SET expired_at = ? WHERE id = ?", (now, silence_id))
    conn.execute(
        "INSERT INTO audit (at, incident_key, side, actor, action, detail) VALUES (?, ?, 'bridge', 'certpager',"
        " 'silence expired', ?)",
        (now, key, f"silence {silence_id}"),
    )


def ack_of(conn: sqlite3.Connection, key: str) -> Ack | None:
    row = conn.execute("SELECT state FROM ack_state WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    return Ack(**{k: v for k, v in json.loads(row[0]).items() if k in _ACK_FIELDS})

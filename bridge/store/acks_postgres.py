"""PostgreSQL statements of ack sync, run by :class:`bridge.store.postgres.PostgresStore` in its transactions.

:class:`PostgresAckSql` supplies the steps of the shared transaction script
(:mod:`bridge.store.acksync_script`). Its ``load_sync`` first takes one transaction-scoped advisory lock,
so ack syncs of all replicas (the elected poller, any replica applying a PagerDuty webhook) run one after
the other and none overwrites the ack state another just wrote.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from bridge.acksync import Ack, IncidentView, SyncState
from bridge.decisions import Group
from bridge.pagerduty_webhook import WebhookEvent
from bridge.store.acksync_script import ClaimWebhook, LoadSync, WriteSync
from bridge.store.base import Receipt
from bridge.store.ingest import GROUP_COLS, GroupRow, decode_group

WEBHOOK_SINK = "pagerduty_webhook"
ACK_LOCK = (0x43505247 + 2, 1)  # (class, key) of the two-key advisory lock serialising ack syncs
_ACK_FIELDS = {f.name for f in dataclasses.fields(Ack)}


def _ack(text: str) -> Ack:
    return Ack(**{k: v for k, v in json.loads(text).items() if k in _ACK_FIELDS})


async def record_webhook(conn: Any, receipt: Receipt, event: WebhookEvent) -> bool:
    """Store a verified PagerDuty webhook and queue its processing; False when its webhook id was seen."""
    inserted = await conn.fetchval(
        "INSERT INTO pd_webhooks (webhook_id, received_at, event_type) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        event.webhook_id, receipt.received_at, event.event_type,
    )
    if inserted is None:
        return False
    receipt_id = await conn.fetchval(
        "INSERT INTO receipts (source, received_at, group_key, body) VALUES ($1, $2, $3, $4) RETURNING id",
        receipt.source, receipt.received_at, f"pagerduty:{event.incident_id}", receipt.body,
    )
    await conn.execute(
        "INSERT INTO outbox (sink, ordering_key, payload, created_at, next_attempt_at, receipt_id)"
        " VALUES ($1, $2, $3, $4, $4, $5)",
        WEBHOOK_SINK, f"pd:{event.incident_id or event.event_id}",
        json.dumps({"webhook_id": event.webhook_id, "event": event.raw}), receipt.received_at, receipt_id,
    )
    return True


class PostgresAckSql:
    """The ack-sync script's SQL for PostgreSQL (:class:`bridge.store.acksync_script.AsyncAckSql`)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def claim_webhook(self, step: ClaimWebhook) -> bool:
        status = await self.conn.execute(
            "UPDATE pd_webhooks SET applied_at = $1 WHERE webhook_id = $2 AND applied_at IS NULL",
            step.now, step.webhook_id,
        )
        return bool(status.endswith(" 1"))

    async def load_sync(self, step: LoadSync) -> SyncState:
        conn = self.conn
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", *ACK_LOCK)
        cols = "key, route, open, trigger, scope, grp"
        if step.keys is None:
            rows = await conn.fetch(f"SELECT {cols} FROM incidents WHERE open")
        else:
            rows = await conn.fetch(f"SELECT {cols} FROM incidents WHERE key = ANY($1::text[])", list(step.keys))
        rows = list(rows)
        found = {r[0] for r in rows}
        groups: dict[str, Group] = {}
        wanted_groups = sorted({r[5] for r in rows if r[5]} | {k for k in step.keys or () if k not in found})
        for row in await conn.fetch(f"SELECT {GROUP_COLS} FROM groups WHERE key = ANY($1::text[])", wanted_groups):
            groups[row[0]] = decode_group(*row)
        members = sorted({m for g in groups.values() for m in g.members} - found)
        if members:  # a group's members, when it was asked for by its key
            rows.extend(await conn.fetch(f"SELECT {cols} FROM incidents WHERE key = ANY($1::text[])", members))
        keys = [r[0] for r in rows]
        firing: dict[str, list[str]] = {}
        for row in await conn.fetch(
            "SELECT incident_key, fingerprint FROM occurrences WHERE status = 'firing'"
            " AND scope = ANY($1::text[]) AND incident_key = ANY($2::text[])",
            sorted({r[4] for r in rows}), keys,
        ):
            firing.setdefault(row[0], []).append(row[1])
        incidents = {
            r[0]: IncidentView(r[0], r[1], bool(r[2]), json.loads(r[3]), tuple(sorted(firing.get(r[0], ()))), r[5])
            for r in rows
        }
        wanted = sorted(set(keys) | set(groups) | set(step.keys or ()))
        acks = {r[0]: _ack(r[1]) for r in await conn.fetch(
            "SELECT key, state FROM ack_state WHERE key = ANY($1::text[])", wanted)}
        own = frozenset(r[0] for r in await conn.fetch("SELECT id FROM silences"))
        return SyncState(incidents=incidents, acks=acks, own_silences=own, groups=groups)

    async def write_sync(self, step: WriteSync) -> None:
        changes, now, conn = step.changes, step.now, self.conn
        if changes.acks:
            await conn.executemany(
                "INSERT INTO ack_state (key, state, updated_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE"
                " SET state = excluded.state, updated_at = excluded.updated_at",
                [(a.key, json.dumps(dataclasses.asdict(a)), now) for a in changes.acks],
            )
        if changes.audit:
            await conn.executemany(
                "INSERT INTO audit (at, incident_key, side, actor, action, detail) VALUES ($1, $2, $3, $4, $5, $6)",
                [(e.at, e.key, e.side, e.actor, e.action, e.detail) for e in changes.audit],
            )
        for key in changes.close:  # see acks_sqlite.write
            await conn.execute(
                "UPDATE occurrences SET status = 'resolved', updated_at = $1 WHERE incident_key = $2"
                " AND status = 'firing'", now, key,
            )
            await conn.execute("UPDATE incidents SET open = false, updated_at = $1 WHERE key = $2", now, key)
        for group in changes.groups:  # closed with its members out of it (bridge.acksync.closed_group)
            row = GroupRow.of(group)
            await conn.execute(
                "UPDATE groups SET open = $1, detail = $2, updated_at = $3, version = $4 WHERE key = $5",
                row.open, row.detail, row.updated_at, row.version, row.key,
            )
            await conn.execute("UPDATE incidents SET grp = '' WHERE grp = $1", group.key)
        if changes.outbox:
            await conn.executemany(
                "INSERT INTO outbox (sink, ordering_key, payload, created_at, next_attempt_at)"
                " VALUES ($1, $2, $3, $4, $4)",
                [(r.sink, r.ordering_key, json.dumps(r.payload), now) for r in changes.outbox],
            )


def _audit_row(key: str, action: str, detail: str, now: float) -> tuple[Any, ...]:
    return (now, key, "bridge", "certpager", action, detail)


_AUDIT_SQL = "INSERT INTO audit (at, incident_key, side, actor, action, detail) VALUES ($1, $2, $3, $4, $5, $6)"


async def record_silence(conn: Any, key: str, silence_id: str, alertmanager: str, now: float) -> None:
    await conn.execute(
        "INSERT INTO silences (id, incident_key, alertmanager, created_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (id) DO NOTHING", silence_id, key, alertmanager, now,
    )
    await conn.execute(_AUDIT_SQL, *_audit_row(key, "silence created", f"silence {silence_id} on {alertmanager}", now))


async def live_silences(conn: Any, key: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT id, alertmanager FROM silences WHERE incident_key = $1 AND expired_at IS NULL ORDER BY created_at",
        key,
    )
    return [(str(r[0]), str(r[1])) for r in rows]


async def silence_expired(conn: Any, key: str, silence_id: str, now: float) -> None:
    await conn.execute("UPDATE silences SET expired_at = $1 WHERE id = $2", now, silence_id)
    await conn.execute(_AUDIT_SQL, *_audit_row(key, "silence expired", f"silence {silence_id}", now))


async def ack_of(conn: Any, key: str) -> Ack | None:
    text = await conn.fetchval("SELECT state FROM ack_state WHERE key = $1", key)
    return None if text is None else _ack(text)


PRUNE_SQL = (
    "DELETE FROM pd_webhooks WHERE received_at < $1",
    "DELETE FROM silences WHERE expired_at < $1",
    "DELETE FROM ack_state WHERE updated_at < $1 AND key NOT IN (SELECT key FROM incidents)"
    " AND key NOT IN (SELECT key FROM groups)",
)


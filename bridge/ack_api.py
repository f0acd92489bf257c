"""Ack sync's HTTP endpoints: the PagerDuty Webhooks v3 receiver, snooze and the audit trail.

aiohttp handlers; each reads only the request's headers, query, path parameters and body.

``POST /api/v1/pagerduty/webhook`` verifies the signature, stores the event (fsync'd) and answers 202
before doing anything else: PagerDuty wants a 2xx within 5 s, and the work (REST look-ups, silences) runs
from the store. A redelivery (same ``X-Webhook-Id``) is answered 202 ``duplicate``; an event type ack sync
does not act on is answered 202 ``ignored`` and counted, not stored. 401/403/400/413 as in
:mod:`bridge.pagerduty_webhook`; 503 when the store failed (PagerDuty retries 5xx).

``POST /api/v1/incidents/{key}/snooze?duration=1h[&by=NAME]`` (the Alertmanager webhook's credentials):
PagerDuty REST snooze plus a silence until then; 202, 400 bad duration, 404 unknown incident, 409 not
firing or no REST token. ``GET /api/v1/incidents/{key}/audit``: who did what, when, from which side.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bridge import acksync, pagerduty_webhook
from bridge.config import LoadedConfig
from bridge.metrics import BridgeMetrics
from bridge.store.base import Receipt, Store, StoreError
from certpager.config import parse_duration
from certpager.web import payload, read_body

log = logging.getLogger(__name__)
WEBHOOK_PATH = "/api/v1/pagerduty/webhook"
SNOOZE_ROUTE = "/api/v1/incidents/{key}/snooze"
AUDIT_ROUTE = "/api/v1/incidents/{key}/audit"
SNOOZE_MAX = 604800  # seconds: PagerDuty's snooze limit (one week)
JSON = "application/json"


def settings_of(loaded: LoadedConfig) -> acksync.Settings:
    statuspage = loaded.config.integrations.statuspage
    return acksync.Settings(
        silence_max=loaded.config.ack_sync.silence_max, rest=bool(loaded.secrets.api_token),
        statuspage_min=None if statuspage is None else statuspage.min_severity,
    )


class AckSyncApi:
    """The handlers; ``config()`` is the config now in force, ``queued()`` wakes the outbox worker."""

    def __init__(
        self, store: Store, metrics: BridgeMetrics, *, config: Callable[[], LoadedConfig],
        authorized: Callable[[str], bool], queued: Callable[[], None], clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._config = config
        self._authorized = authorized
        self._queued = queued
        self._clock = clock

    async def pagerduty_webhook(self, request: web.Request) -> web.Response:
        loaded = self._config()
        limit = loaded.config.server.max_body_bytes
        body = await read_body(request, limit)
        if body is None:
            return self._webhook(413, "too_large", {"status": "error", "error": f"body over {limit} bytes"})
        try:
            pagerduty_webhook.verify(body, request.headers, loaded.secrets.webhook_secrets)
            event = pagerduty_webhook.parse(body, request.headers)
        except pagerduty_webhook.WebhookError as exc:
            result = {401: "unauthorized", 403: "bad_signature"}.get(exc.status, "bad_request")
            return self._webhook(exc.status, result, {"status": "error", "error": exc.reason})
        if not event.handled:
            log.info("pagerduty event type not synced: acknowledged and dropped",
                     extra={"kv": {"event_type": event.event_type, "webhook": event.webhook_id}})
            return self._webhook(202, "ignored", {"status": "ignored", "event_type": event.event_type})
        receipt = Receipt(source="pagerduty", body=body, received_at=self._clock())
        try:
            new = await self._store.record_pagerduty_webhook(receipt, event)
        except StoreError as exc:
            log.error("cannot store pagerduty webhook; answering 503 so PagerDuty retries",
                      extra={"kv": {"err": str(exc)}})
            return self._webhook(503, "store_error", {"status": "error", "error": "store unavailable, retry"})
        if new:
            self._queued()
        return self._webhook(202, "accepted" if new else "duplicate",
                             {"status": "accepted" if new else "duplicate", "webhook_id": event.webhook_id})

    def _webhook(self, status: int, result: str, body: dict[str, Any]) -> web.Response:
        self._metrics.webhook("pagerduty", result).inc()
        return _json(status, body)

    async def audit(self, request: web.Request) -> web.Response:
        """``GET /api/v1/incidents/{key}/audit``."""
        if not self._authorized(request.headers.get("Authorization", "")):
            return _json(401, {"status": "error", "error": "unauthorized"})
        key = request.match_info["key"]
        try:
            entries = await self._store.audit_trail(key, limit=500)
        except StoreError as exc:
            return _json(503, {"status": "error", "error": f"store unavailable: {exc}"})
        return _json(200, {"key": key, "audit": [dataclasses.asdict(e) for e in entries]})

    async def snooze(self, request: web.Request) -> web.Response:
        """``POST /api/v1/incidents/{key}/snooze?duration=``."""
        if not self._authorized(request.headers.get("Authorization", "")):
            return _json(401, {"status": "error", "error": "unauthorized"})
        try:
            return await self._snooze(request.match_info["key"], request)
        except StoreError as exc:
            return _json(503, {"status": "error", "error": f"store unavailable: {exc}"})

    async def _snooze(self, key: str, request: web.Request) -> web.Response:
        loaded = self._config()
        try:
            duration = parse_duration(request.query.get("duration", ""))
        except ValueError:
            duration = 0.0
        if not 1 <= duration <= SNOOZE_MAX:
            return _json(400, {"status": "error",
                               "error": f"duration: expected a duration from 1s to 7d (like 1h), got "
                                        f"{request.query.get('duration', '')!r}"})
        if not loaded.secrets.api_token:
            return _json(409, {"status": "error", "error": "snooze needs a PagerDuty REST API token "
                                                          "(integrations.pagerduty.api_token_file)"})
        actor = request.query.get("by") or _basic_user(request.headers.get("Authorization", "")) or "api"
        now, settings = self._clock(), settings_of(loaded)
        result = await self._store.sync(
            [key], lambda state: acksync.on_snooze(state, key, duration=duration, actor=actor, now=now,
                                                    settings=settings), now=now,
        )
        if isinstance(result, str):
            return _json(404 if result.startswith("no incident") else 409, {"status": "error", "error": result})
        self._queued()
        return _json(202, {"status": "accepted", "key": key, "until": acksync.iso(now + duration), "by": actor})


def _basic_user(header: str) -> str:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return ""


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return payload(json.dumps(body).encode(), JSON, status)

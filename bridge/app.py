"""The bridge's aiohttp application: the Alertmanager webhook, /metrics and the lifecycle routes.

``POST /api/v1/alerts/alertmanager`` answers only after the store committed the webhook and the events it
produced (fsync'd): 200 with a JSON summary; 401 without valid credentials; 413 over
``server.max_body_bytes``; 400/422 for a payload that can never be accepted (see
:mod:`bridge.alertmanager`); 503 when the store failed, so Alertmanager retries. The outbox worker runs
inside the app (``cleanup_ctx``) and is woken by every commit that queued events.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from bridge import alertmanager
from bridge.config import LoadedConfig, Server
from bridge.config import load as load_config
from bridge.decisions import Policy
from bridge.metrics import BridgeMetrics, OutboxCollector
from bridge.outbox import OutboxWorker
from bridge.sinks.base import Sink
from bridge.store.base import Receipt, Store, StoreError
from certpager.web import add_lifecycle_routes, metrics_handler

log = logging.getLogger(__name__)
ALERTMANAGER_PATH = "/api/v1/alerts/alertmanager"
_READ_CHUNK = 64 * 1024


class ConfigHolder:
    """The current config, swapped whole on reload; secrets are read again from their files."""

    def __init__(self, loaded: LoadedConfig, loader: Callable[[], LoadedConfig] | None = None) -> None:
        self.current = loaded
        self.policy = Policy.from_config(loaded.config)
        self._loader = loader or (lambda: load_config(self.current.path))

    def routing_key_for(self, route: str) -> str | None:
        """The routing key now in force (rotated keys apply to events already queued)."""
        return self.current.secrets.routing_key_for(route)

    def reload(self) -> None:
        """Load again; on any error keep the old config and raise (ConfigError names file and key)."""
        loaded = self._loader()
        old = self.current.config
        # Read once at start: a reload that changes them is logged as needing a restart.
        for name, before, after in (
            ("server.listen_address", old.server.listen_address, loaded.config.server.listen_address),
            ("store", old.store, loaded.config.store),
            ("outbox", old.outbox, loaded.config.outbox),
        ):
            if before != after:
                log.warning("config change needs a restart to apply", extra={"kv": {"key": name}})
        self.current = loaded
        self.policy = Policy.from_config(loaded.config)


HOLDER = web.AppKey("holder", ConfigHolder)
STORE = web.AppKey("store", Store)
WORKER = web.AppKey("worker", OutboxWorker)
METRICS = web.AppKey("metrics", BridgeMetrics)
SINKS: web.AppKey[tuple[str, ...]] = web.AppKey("sinks")
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
RELOAD: web.AppKey[Callable[[], Awaitable[None]]] = web.AppKey("reload")  # for SIGHUP, same as POST /-/reload


def create_app(
    config: ConfigHolder | LoadedConfig,
    *,
    store: Store,
    sinks: Mapping[str, Sink],
    clock: Callable[[], float] = time.time,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """Build the app; the store is opened and the outbox worker started by the app's cleanup context."""
    holder = config if isinstance(config, ConfigHolder) else ConfigHolder(config)
    registry = registry if registry is not None else CollectorRegistry()
    metrics = BridgeMetrics(registry)
    registry.register(OutboxCollector(store, sinks=sinks.keys(), clock=clock))
    settings = holder.current.config.outbox
    worker = OutboxWorker(
        store, sinks, clock=clock, metrics=metrics, max_in_flight=settings.max_in_flight,
        retry_initial=settings.retry_initial, retry_max=settings.retry_max, sweep_interval=settings.sweep_interval,
        retention=holder.current.config.store.retention,
    )
    app = web.Application()
    app[HOLDER], app[STORE], app[WORKER], app[METRICS] = holder, store, worker, metrics
    app[SINKS], app[CLOCK] = tuple(sinks), clock
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_post(ALERTMANAGER_PATH, alertmanager_webhook)
    app.router.add_get("/metrics", metrics_handler(registry))

    async def reload() -> None:
        try:
            holder.reload()
        except Exception:
            metrics.reload_ok.set(0)
            raise
        metrics.reload_ok.set(1)
        metrics.reload_time.set(time.time())
        log.info("config reloaded", extra={"kv": {"file": str(holder.current.path)}})

    app[RELOAD] = reload
    add_lifecycle_routes(app, ready=lambda: store.is_open and worker.running, reload=reload)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    store, worker = app[STORE], app[WORKER]
    await store.open()
    task = asyncio.create_task(worker.run(), name="certpager-outbox")
    try:
        yield
    finally:
        await worker.stop()
        await task
        await store.close()


def _challenge(server: Server) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    if server.auth.bearer_token is not None or server.auth.bearer_token_file is not None:
        headers.add("WWW-Authenticate", 'Bearer realm="certpager"')
    if server.auth.basic_auth is not None:
        headers.add("WWW-Authenticate", 'Basic realm="certpager"')
    return headers


def authorized(header: str, loaded: LoadedConfig) -> bool:
    """Whether an Authorization header matches the configured bearer token or basic auth (constant time)."""
    secrets, basic = loaded.secrets, loaded.config.server.auth.basic_auth
    if secrets.bearer_token is None and basic is None:
        return True  # no credentials configured: open (a warning is logged at start)
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and secrets.bearer_token is not None:
        return hmac.compare_digest(value.strip().encode(), secrets.bearer_token.encode())
    if scheme.lower() == "basic" and basic is not None and secrets.basic_password is not None:
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user_ok = hmac.compare_digest(user.encode(), basic.username.encode())
        return hmac.compare_digest(password.encode(), secrets.basic_password.encode()) and user_ok
    return False


def _answer(request: web.Request, status: int, result: str, body: dict[str, Any], **kw: Any) -> web.Response:
    request.app[METRICS].webhook("alertmanager", result).inc()
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json", **kw)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    if request.content_length is not None:
        # The HTTP parser stops at Content-Length, so one read is bounded.
        return None if request.content_length > limit else await request.content.read()
    body = bytearray()
    while chunk := await request.content.read(_READ_CHUNK):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def alertmanager_webhook(request: web.Request) -> web.Response:
    """Authenticate, parse, commit, then answer (see module docstring)."""
    app = request.app
    loaded = app[HOLDER].current
    if not authorized(request.headers.get("Authorization", ""), loaded):
        return _answer(request, 401, "unauthorized", {"status": "error", "error": "unauthorized"},
                       headers=_challenge(loaded.config.server))
    limit = loaded.config.server.max_body_bytes
    body = await _read_limited(request, limit)
    if body is None:
        return _answer(request, 413, "too_large", {"status": "error", "error": f"body over {limit} bytes"})
    try:
        notification = alertmanager.parse(body)
    except alertmanager.PayloadError as exc:
        result = "unprocessable" if exc.status == 422 else "bad_request"
        return _answer(request, exc.status, result, {"status": "error", "error": exc.reason})
    return await _commit(request, body, notification)


async def _commit(request: web.Request, body: bytes, notification: alertmanager.Notification) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    if notification.truncated_alerts:
        metrics.truncated.inc(notification.truncated_alerts)
        log.warning(
            "alertmanager left alerts out of a webhook (max_alerts): they are not seen until a later notification",
            extra={"kv": {"truncated_alerts": notification.truncated_alerts, "group_key": notification.group_key}},
        )
    receipt = Receipt(source="alertmanager", body=body, received_at=app[CLOCK]())
    sinks: tuple[str, ...] = app[SINKS]
    try:
        result = await app[STORE].ingest(receipt, notification, app[HOLDER].policy, sinks=sinks)
    except StoreError as exc:
        log.error("cannot commit webhook; answering 503 so alertmanager retries", extra={"kv": {"err": str(exc)}})
        return _answer(request, 503, "store_error", {"status": "error", "error": "store unavailable, retry"})
    if result.events:
        app[WORKER].wake()
    for verdict, count in (("new", result.new), ("duplicate", result.duplicates), ("stale", result.stale)):
        if count:
            metrics.transition(verdict).inc(count)
    for event in result.events:
        if event.action == "trigger":
            metrics.incident(event.event_class, event.group, event.severity.value).inc()
    return _answer(request, 200, "accepted", {
        "status": "accepted", "receipt": result.receipt_id, "alerts": len(notification.alerts), "new": result.new,
        "duplicates": result.duplicates, "stale": result.stale, "events": len(result.events),
    })

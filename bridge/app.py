"""The bridge's HTTP application: the Alertmanager webhook, /metrics and the lifecycle routes.

``POST /api/v1/alerts/alertmanager`` answers only after the store committed the webhook and the events it
produced (fsync'd): 200 with a JSON summary; 401 without valid credentials; 413 over
``server.max_body_bytes``; 400/422 for a payload that can never be accepted (see
:mod:`bridge.alertmanager`); 503 when the store failed, so Alertmanager retries. The outbox worker runs
for as long as the server does (the app's lifespan) and is woken by every commit that queued events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import httpx
from aiohttp import web
from prometheus_client import CollectorRegistry

from bridge import alertmanager
from bridge.ack_api import AUDIT_ROUTE, SNOOZE_ROUTE, WEBHOOK_PATH, AckSyncApi, settings_of
from bridge.audit import RESOLVE, AuditEntry
from bridge.config import BridgeConfig, LoadedConfig
from bridge.config import load as load_config
from bridge.decisions import Policy
from bridge.keys import CLASS_SHORT
from bridge.lifecycle import episode_of, is_ack, is_resolve
from bridge.metrics import BoundedLabel, BridgeMetrics, OutboxCollector
from bridge.outbox import OutboxWorker
from bridge.pagerduty_rest import PagerDutyRest
from bridge.poller import AlertmanagerPoller
from bridge.sinks.base import Sink
from bridge.sinks.pagerduty_rest import PagerDutyRestSink
from bridge.sinks.pagerduty_webhook import PagerDutyWebhookSink
from bridge.sinks.silences import SilenceSink
from bridge.sinks.statuspage import StatuspageSettings
from bridge.store.base import Receipt, Store, StoreError
from bridge.store.ingest import ACTIONS_SINK
from certpager.auth import Credentials
from certpager.tasks import TaskCollector, TaskSupervisor
from certpager.web import add_lifecycle_routes, application, metrics_handler, payload, read_body, text

EPISODE_LINES = 2000  # audit lines read back to find the page an ack or resolve answers
log = logging.getLogger(__name__)
ALERTMANAGER_PATH = "/api/v1/alerts/alertmanager"
JSON = "application/json"


class ConfigHolder:
    """The current config, swapped whole on reload; secrets are read again from their files."""

    def __init__(self, loaded: LoadedConfig, loader: Callable[[], LoadedConfig] | None = None) -> None:
        self.current = loaded
        self.policy = Policy.from_config(loaded.config)
        self._statuspage = self._settings(loaded)
        self._loader = loader or (lambda: load_config(self.current.path))

    def late_resolved(self) -> str:
        """``integrations.pagerduty.late_resolved`` now in force (a reload applies to queued triggers)."""
        return self.current.config.integrations.pagerduty.late_resolved

    def routing_key_for(self, route: str) -> str | None:
        """The routing key now in force (rotated keys apply to events already queued)."""
        return self.current.secrets.routing_key_for(route)

    def statuspage_token(self) -> str | None:
        """The Statuspage API token now in force (a rotated token applies to queued events)."""
        return self.current.secrets.statuspage_token

    def statuspage_settings(self) -> StatuspageSettings:
        """The Statuspage section now in force, with its component map (from the config, a variable or a file).

        A reload that removes the section keeps the last one (removing the sink needs a restart)."""
        if self._statuspage is None:
            raise RuntimeError("integrations.statuspage is not configured")
        return self._statuspage

    @staticmethod
    def _settings(loaded: LoadedConfig) -> StatuspageSettings | None:
        sp = loaded.config.integrations.statuspage
        if sp is None:
            return None
        return StatuspageSettings(
            page_id=sp.page_id,
            component_map=loaded.secrets.component_map,
            service_label=sp.service_label,
            min_severity=sp.min_severity,
            component_status={k: str(v) for k, v in sp.component_status.items()},
            templates=sp.templates.model_dump(),
            refresh_interval=sp.refresh_interval,
        )

    def reload(self) -> None:
        """Load again; on any error keep the old config and raise (ConfigError names file and key)."""
        loaded = self._loader()
        old = self.current.config
        # Read once at start: a reload that changes them is logged as needing a restart.
        for name, before, after in (
            ("server.listen_address", old.server.listen_address, loaded.config.server.listen_address),
            ("store", old.store, loaded.config.store),
            ("outbox", old.outbox, loaded.config.outbox),
            ("integrations.statuspage (present, api_url, requests_per_second)", _statuspage_start(old),
             _statuspage_start(loaded.config)),
            ("integrations.statuspage.api_token (dry-run or not)", self.current.secrets.statuspage_token is None,
             loaded.secrets.statuspage_token is None),
            # Ack sync's silence sink and poller exist only if Alertmanagers were listed at start; a changed
            # list applies at once.
            ("ack_sync.alertmanagers (empty or not)", bool(old.ack_sync.alertmanagers),
             bool(loaded.config.ack_sync.alertmanagers)),
            ("ack_sync.poll_interval", old.ack_sync.poll_interval, loaded.config.ack_sync.poll_interval),
        ):
            if before != after:
                log.warning("config change needs a restart to apply", extra={"kv": {"key": name}})
        self.current = loaded
        self.policy = Policy.from_config(loaded.config)
        if loaded.config.integrations.statuspage is not None:
            self._statuspage = self._settings(loaded)


def _statuspage_start(config: BridgeConfig) -> tuple[object, ...] | None:
    """What of the Statuspage section is read once, when the sink is built."""
    sp = config.integrations.statuspage
    return None if sp is None else (sp.api_url, sp.requests_per_second)


class Bridge:
    """The bridge's parts (config, store, outbox worker, metrics) and :attr:`app`, the HTTP app serving them.

    The app's lifespan opens the store and runs the outbox worker (and the Alertmanager poller when
    ``ack_sync.alertmanagers`` is set); :meth:`reload` is what both ``POST /-/reload`` and SIGHUP call.
    ``sinks`` are the incident sinks every Alertmanager transition is queued to; ack sync adds its own
    (``pagerduty_webhook``, ``pagerduty_rest``, ``alertmanager``), each with its own queue, using ``http``.
    ``actions_sink`` and ``pagerduty_sink`` build the sinks a reload can enable: the runbook actions' when
    the first action appears, PagerDuty's in place of the dry run when the first routing key does.
    """

    def __init__(
        self,
        config: ConfigHolder | LoadedConfig,
        *,
        store: Store,
        sinks: Mapping[str, Sink],
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
        http: httpx.AsyncClient | None = None,
        actions_sink: Callable[[], Sink] | None = None,
        pagerduty_sink: Callable[[], Sink] | None = None,
    ) -> None:
        self.holder = config if isinstance(config, ConfigHolder) else ConfigHolder(config)
        self.store, self.sinks, self.clock = store, tuple(sinks), clock
        self._observers: set[asyncio.Task[None]] = set()  # lifecycle observations in flight
        registry = registry if registry is not None else CollectorRegistry()
        self.metrics = BridgeMetrics(registry)
        self._classes = BoundedLabel(known_classes(self.holder.current.config))
        self._environments = BoundedLabel(known_environments(self.holder.current.config))
        self.http = http or httpx.AsyncClient(timeout=self.holder.current.config.ack_sync.timeout)
        self.poller: AlertmanagerPoller | None = None
        all_sinks = {**sinks, **self._ack_sync_sinks()}
        self.metrics.start_at_zero(all_sinks)
        self.metrics.start_pages_at_zero(self._environments.known)
        self._actions_sink = actions_sink
        self._pagerduty_sink = pagerduty_sink  # out of dry run when a reload adds the first routing key
        self._dry_run = not self.holder.current.secrets.has_pagerduty  # the PagerDuty sink is the dry run
        self._pagerduty_keys = not self._dry_run  # whether the last config had a routing key
        self._outbox_collector = OutboxCollector(store, sinks=all_sinks.keys(), clock=clock)
        registry.register(self._outbox_collector)
        settings = self.holder.current.config.outbox
        self.worker = OutboxWorker(
            store, all_sinks, clock=clock, metrics=self.metrics, max_in_flight=settings.max_in_flight,
            retry_initial=settings.retry_initial, retry_max=settings.retry_max,
            sweep_interval=settings.sweep_interval, lease=settings.lease,
            retention=self.holder.current.config.store.retention,
            audit_retention=self.holder.current.config.store.audit_retention,
        )
        # Background loops (the outbox worker, which also prunes) restart when they fail (certpager.tasks).
        self.tasks = TaskSupervisor()
        registry.register(TaskCollector(self.tasks, "certpager_bridge"))
        self.app = application()
        self.app.cleanup_ctx.append(self._running)
        self.app.router.add_post(ALERTMANAGER_PATH, self.alertmanager_webhook)
        self.app.router.add_get("/metrics", metrics_handler(registry))
        self.ack_api = AckSyncApi(
            store, self.metrics, config=lambda: self.holder.current, queued=self.wake, clock=clock,
            authorized=lambda header: credentials(self.holder.current).accepts(header),
        )
        self.app.router.add_post(WEBHOOK_PATH, self.ack_api.pagerduty_webhook)
        self.app.router.add_post(SNOOZE_ROUTE, self.ack_api.snooze)
        self.app.router.add_get(AUDIT_ROUTE, self.ack_api.audit)
        add_lifecycle_routes(self.app, unready=self.unready, reload=self.reload, reload_guard=self._reload_guard)

    def _reload_guard(self, request: web.Request) -> web.Response | None:
        """``server.reload``: the webhook's credentials (default), anyone, or nobody (SIGHUP only)."""
        loaded = self.holder.current
        mode = loaded.config.server.reload
        if mode == "disabled":
            return text("reload over HTTP is disabled (server.reload); send SIGHUP\n", 403)
        accepted = credentials(loaded)
        if mode == "authenticated" and not accepted.accepts(request.headers.get("Authorization", "")):
            return text("unauthorized\n", 401, accepted.challenges())
        return None

    def lifecycle(self, lines: Sequence[AuditEntry]) -> None:
        """Audit lines were written: observe the time to acknowledge or resolve of the acks and resolves among
        them (in the background: the trail is read for the page they answer; a failure is logged)."""
        marks = [(line.key, line.at) for line in lines if is_ack(line) or is_resolve(line)]
        if marks:
            task = asyncio.create_task(self._observe(marks))
            self._observers.add(task)
            task.add_done_callback(self._observers.discard)

    async def _observe(self, marks: Sequence[tuple[str, float]]) -> None:
        for key, at in marks:
            try:
                episode = episode_of(await self.store.audit_trail(key, limit=EPISODE_LINES), key)
            except Exception as exc:  # a metric is lost, nothing else
                log.warning("cannot read the audit trail for lifecycle metrics", extra={"kv": {"key": key,
                                                                                               "err": str(exc)}})
                continue
            if episode is None:
                continue
            labels = (self._classes(episode.event_class), self._environments(episode.environment))
            if episode.acknowledged_at == at and episode.time_to_acknowledge is not None:
                self.metrics.acknowledged(*labels).observe(max(episode.time_to_acknowledge, 0.0))
            if episode.resolved_at == at and episode.time_to_resolve is not None:
                self.metrics.resolved(*labels).observe(max(episode.time_to_resolve, 0.0))

    def wake(self) -> None:
        """Something was queued: let the outbox worker look now."""
        self.worker.wake()

    def _ack_sync_sinks(self) -> dict[str, Sink]:
        def current() -> LoadedConfig:  # read at each use: a reload applies at once
            return self.holder.current

        pd = current().config.integrations.pagerduty
        rest = PagerDutyRest(self.http, url=pd.api_url, token=lambda: current().secrets.api_token,
                             from_email=pd.from_email)
        sinks: dict[str, Sink] = {
            "pagerduty_webhook": PagerDutyWebhookSink(
                self.store, rest, settings=lambda: settings_of(current()), queued=self.wake, clock=self.clock,
                recorded=self.lifecycle,
            ),
            "pagerduty_rest": PagerDutyRestSink(rest),
        }
        ack_sync = current().config.ack_sync
        if ack_sync.alertmanagers:
            def urls() -> list[str]:
                return current().config.ack_sync.alertmanagers

            sinks["alertmanager"] = SilenceSink(self.http, alertmanagers=urls, store=self.store, clock=self.clock)
            self.poller = AlertmanagerPoller(
                self.store, self.http, alertmanagers=urls, interval=ack_sync.poll_interval,
                vanished_after=lambda: current().config.ack_sync.vanished_after, queued=self.wake,
                clock=self.clock, counter=self.metrics.poll, recorded=self.lifecycle,
            )
        return sinks

    def unready(self) -> list[str]:
        """Why the bridge is not ready, in words for ``/-/ready`` (empty when it is: the store is open and
        the outbox worker, restarted when it fails, runs)."""
        reasons = ([] if self.store.is_open else ["the store is not open"]) + self.tasks.unready()
        if not reasons and not self.worker.running:
            reasons.append("the outbox worker is not running")
        return reasons

    async def reload(self) -> None:
        """Load the config again (``POST /-/reload`` and SIGHUP); on error keep the old one and raise."""
        try:
            self.holder.reload()
        except Exception as exc:
            self.metrics.reload_ok.set(0)
            # Logged here, the one path of SIGHUP and POST /-/reload: a failed reload is never silent.
            log.error("config reload failed, keeping the old config",
                      extra={"kv": {"file": str(self.holder.current.path), "err": str(exc)}})
            raise
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(time.time())
        self._classes.known = frozenset(known_classes(self.holder.current.config))
        self._environments.known = frozenset(known_environments(self.holder.current.config))
        self.metrics.start_pages_at_zero(self._environments.known)
        self._enable_actions()
        self._enable_pagerduty()
        log.info("config reloaded", extra={"kv": {"file": str(self.holder.current.path)}})

    def _enable_pagerduty(self) -> None:
        """Out of dry run once a reload adds the first routing key: PagerDuty gets every event from then on
        (a restart did that before, and until then pages went to the log only)."""
        keys, had_keys = self.holder.current.secrets.has_pagerduty, self._pagerduty_keys
        self._pagerduty_keys = keys
        if not keys:
            if had_keys:  # every key removed: the events become dead letters naming their route (docs/bridge.md)
                log.warning("no PagerDuty routing key configured any more: events become dead letters until one is")
            return
        if not self._dry_run:
            return  # the PagerDuty sink reads the keys for each event
        if self._pagerduty_sink is None:  # built without a way to make it (tests): say so
            log.warning("config change needs a restart to apply",
                        extra={"kv": {"key": "integrations.pagerduty routing keys (dry-run or not)"}})
            return
        self.worker.add_sink("pagerduty", self._pagerduty_sink())
        self._dry_run = False
        log.info("PagerDuty delivery enabled: out of dry run")

    def _enable_actions(self) -> None:
        """The runbook actions' sink, once a reload adds the first action (queued from the next webhook)."""
        if not self.holder.current.config.actions or ACTIONS_SINK in self.sinks:
            return
        if self._actions_sink is None:  # built without a way to make it (tests): say so, as for other settings
            log.warning("config change needs a restart to apply", extra={"kv": {"key": "actions (none or some)"}})
            return
        self.worker.add_sink(ACTIONS_SINK, self._actions_sink())
        self.metrics.start_at_zero([ACTIONS_SINK])
        self._outbox_collector.add(ACTIONS_SINK)
        self.sinks = (*self.sinks, ACTIONS_SINK)
        names = ",".join(sorted(self.holder.current.config.actions))
        log.info("runbook actions enabled", extra={"kv": {"actions": names}})

    @contextlib.asynccontextmanager
    async def _running(self, _: web.Application) -> AsyncIterator[None]:
        await self.store.open()
        self.tasks.start("outbox", self.worker.run)
        if self.poller is not None:
            self.tasks.start("alertmanager-poller", self.poller.run)
        try:
            yield
        finally:
            self.tasks.closing()
            if self.poller is not None:
                self.poller.stop()
            await self.worker.stop()
            await self.tasks.stop(wait=True)
            if self._observers:  # they read the store: done before it closes
                await asyncio.wait(set(self._observers), timeout=5.0)
            await self.store.close()
            await self.http.aclose()

    async def alertmanager_webhook(self, request: web.Request) -> web.Response:
        """Authenticate, parse, commit, then answer (see module docstring)."""
        loaded = self.holder.current
        accepted = credentials(loaded)
        if not accepted.accepts(request.headers.get("Authorization", "")):
            return self._answer(401, "unauthorized", {"status": "error", "error": "unauthorized"},
                                accepted.challenges())
        limit = loaded.config.server.max_body_bytes
        body = await read_body(request, limit)
        if body is None:
            return self._answer(413, "too_large", {"status": "error", "error": f"body over {limit} bytes"})
        try:
            notification = alertmanager.parse(body)
        except alertmanager.PayloadError as exc:
            result = "unprocessable" if exc.status == 422 else "bad_request"
            return self._answer(exc.status, result, {"status": "error", "error": exc.reason})
        return await self._commit(body, notification, request.remote or "")

    async def _commit(self, body: bytes, notification: alertmanager.Notification, peer: str = "") -> web.Response:
        metrics = self.metrics
        if notification.truncated_alerts:
            metrics.truncated.inc(notification.truncated_alerts)
            log.warning(
                "alertmanager left alerts out of a webhook (max_alerts): they are not seen until a later "
                "notification",
                extra={"kv": {"truncated_alerts": notification.truncated_alerts, "group_key": notification.group_key}},
            )
        receipt = Receipt(
            source="alertmanager", body=body, received_at=self.clock(), rejected=notification.rejected, peer=peer
        )
        try:
            result = await self.store.ingest(receipt, notification, self.holder.policy, sinks=self.sinks)
        except StoreError as exc:
            log.error("cannot commit webhook; answering 503 so alertmanager retries", extra={"kv": {"err": str(exc)}})
            return self._answer(503, "store_error", {"status": "error", "error": "store unavailable, retry"})
        if result.events:
            self.worker.wake()
        for verdict, count in (("new", result.new), ("duplicate", result.duplicates), ("stale", result.stale)):
            if count:
                metrics.transition(verdict).inc(count)
        resolves: list[tuple[str, float]] = []
        for event in result.events:
            if event.action == "trigger" and not event.update:
                labels = (self._classes(event.event_class), self._environments(event.group), event.severity.value)
                metrics.incident(*labels).inc()
                off = self.holder.current.config.analytics.working().off_hours(receipt.received_at)
                metrics.page(labels[1], "true" if off else "false").inc()
            elif event.action == "resolve":
                resolves.append((event.key, receipt.received_at))
        if resolves:
            self.lifecycle([AuditEntry(at, key, "bridge", "certpager", RESOLVE) for key, at in resolves])
        summary = {
            "receipt": result.receipt_id, "alerts": len(notification.alerts), "new": result.new,
            "duplicates": result.duplicates, "stale": result.stale, "events": len(result.events),
        }
        if notification.rejected:
            return self._rejected(notification, summary)
        return self._answer(200, "accepted", {"status": "accepted", **summary})

    def _rejected(self, notification: alertmanager.Notification, summary: dict[str, Any]) -> web.Response:
        """400 naming every rejected alert; the valid ones (``alerts``) were stored and decided all the same."""
        rejected = notification.rejected
        for rejection in rejected:
            self.metrics.rejected_alert("alertmanager", rejection.kind).inc()
        log.warning(
            "webhook alerts rejected; the others were accepted",
            extra={"kv": {"rejected": len(rejected), "accepted": len(notification.alerts),
                          "first": rejected[0].reason, "group_key": notification.group_key}},
        )
        total = len(rejected) + len(notification.alerts)
        error = f"{len(rejected)} of {total} alerts rejected: {rejected[0].reason}"
        if len(rejected) > 1:
            error += f" (and {len(rejected) - 1} more)"
        result = "partial" if notification.alerts else "bad_request"
        return self._answer(400, result, {
            "status": "error", "error": error, "rejected": [r.to_json() for r in rejected], **summary,
        })

    def _answer(
        self, status: int, result: str, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()
    ) -> web.Response:
        self.metrics.webhook("alertmanager", result).inc()
        return payload(json.dumps(body).encode(), JSON, status, headers)


def known_classes(config: BridgeConfig) -> set[str]:
    """Alert classes the bridge and its config name: their incident counters keep their own label value."""
    return {*CLASS_SHORT, *config.integrations.pagerduty.severity_mapping, *config.automation,
            *config.grouping.correlation}


def known_environments(config: BridgeConfig) -> set[str]:
    """Environments the config names (routing keys, services), and no environment at all."""
    pd = config.integrations.pagerduty
    return {"", *pd.routing_keys, *pd.routing_key_files, *pd.services}


def credentials(loaded: LoadedConfig) -> Credentials:
    """What the webhook and ``POST /-/reload`` accept: ``server.auth``, its secrets read from their files."""
    basic = loaded.config.server.auth.basic_auth
    return Credentials(bearer_token=loaded.secrets.bearer_token, basic_password=loaded.secrets.basic_password,
                       basic_username=None if basic is None else basic.username)

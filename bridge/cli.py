"""``certpager bridge``: run the bridge, check its config, or send a test alert through it.

    certpager bridge --config.file F [--config.check] [--web.listen-address A] [--log.level L]
    certpager bridge test-alert --class certificate_expired --certificate example.com
                                [--environment production] [--url URL] [--resolve] [--config.file F]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvloop
from prometheus_client import CollectorRegistry

from bridge.alertmanager import label_fingerprint
from bridge.app import ALERTMANAGER_PATH, Bridge, ConfigHolder
from bridge.config import KNOWN_CLASSES, LoadedConfig, load
from bridge.metrics import StatuspageMetrics
from bridge.sinks.actions import ActionMetrics, ActionsSink
from bridge.sinks.base import Sink
from bridge.sinks.dryrun import DryRunSink, DryRunStatuspage
from bridge.sinks.pagerduty import PagerDutySink
from bridge.sinks.statuspage import HttpTransport, StatuspageSink, Transport
from bridge.store.base import Store, StoreError
from bridge.store.ingest import ACTIONS_SINK
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from certpager.errors import ConfigError
from certpager.logs import setup_logging
from certpager.runtime import tune_gc
from certpager.web import (
    ServerLimits,
    add_server_flags,
    listen_address_problem,
    serve,
    server_limits,
    split_listen_address,
)

log = logging.getLogger("bridge")
DEFAULT_CONFIG = "certpager-bridge.yml"
DEFAULT_URL = "http://127.0.0.1:9880"
PAGERDUTY_TIMEOUT = 10.0  # seconds per Events API request; a timeout is retried (dedup_key makes it safe)
STATUSPAGE_TIMEOUT = 10.0  # seconds per request; a timed-out write is checked against the page before a retry


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the bridge's flags and the ``test-alert`` action."""
    parser.add_argument("--config.file", dest="config_file", help=f"config file (default {DEFAULT_CONFIG})")
    parser.add_argument("--config.check", dest="config_check", action="store_true", help="validate the config, exit")
    parser.add_argument("--web.listen-address", dest="listen_address", help="override server.listen_address")
    add_server_flags(parser)
    parser.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log level (default info)")
    parser.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"],
                        help="log line format (default logfmt)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    alert = actions.add_parser("test-alert", help="send a synthetic Alertmanager alert through a running bridge")
    # A class outside rules/ would open a real incident nobody's runbook knows: only known ones.
    alert.add_argument("--class", dest="alert_class", default="certificate_expired", choices=KNOWN_CLASSES,
                       metavar="CLASS", help="alert class, one of: " + ", ".join(KNOWN_CLASSES)
                       + " (default certificate_expired)")
    alert.add_argument("--certificate", default="example.com",
                       help="certificate label: which certificate the incident is about (default example.com)")
    alert.add_argument("--environment", default="",
                       help="environment label; picks routing_keys.<environment> (default: none, the default key)")
    alert.add_argument("--severity", default="", choices=["", "critical", "error", "warning", "info"],
                       metavar="SEVERITY",
                       help="alert severity label (default: none, the mapping decides)")
    alert.add_argument("--url", default=None, help=f"bridge base URL (default from the config, else {DEFAULT_URL})")
    alert.add_argument("--resolve", action="store_true",
                       help="send the alert as resolved (closes the incident an earlier test-alert opened)")
    alert.add_argument("--config.file", dest="alert_config_file", default=None,
                       help="the bridge's config file, for its server.auth credentials "
                       "(default: --config.file given before test-alert)")
    alert.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the bridge (default 10)")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``certpager bridge``."""
    setup_logging(args.log_level, args.log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    if args.action == "test-alert":
        return test_alert(args)
    try:
        loaded = load(args.config_file or DEFAULT_CONFIG)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.config_check:
        print(f"{loaded.path}: config is valid; delivery: {delivery_modes(loaded)}")
        return 0
    if args.listen_address and (problem := listen_address_problem(args.listen_address)):
        print(problem, file=sys.stderr)
        return 2
    tune_gc()
    try:
        # uvloop: the event loop's own work (sockets, callbacks, the store's wake-ups) in C; measured
        # 13% less CPU per single-alert webhook than asyncio's loop (docs/performance-bridge.md).
        return uvloop.run(_serve(loaded, args.listen_address, limits=server_limits(args)))
    except StoreError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1


def delivery_modes(loaded: LoadedConfig) -> str:
    """What --config.check prints: where events go, per sink."""
    mode = "PagerDuty" if loaded.secrets.has_pagerduty else "dry-run (no routing key)"
    sp = loaded.config.integrations.statuspage
    if sp is not None:
        where = f"page {sp.page_id}" if loaded.secrets.statuspage_token else "dry-run (no API token)"
        count = len(loaded.secrets.component_map)
        mode += f"; Statuspage: {where}, {count} service{'s' if count != 1 else ''} mapped to components"
        if not count:
            mode += " (no alert can reach the page until component_map lists a service)"
    actions = loaded.config.actions
    if actions:
        mode += f"; runbook actions: {', '.join(f'{name} ({a.type})' for name, a in sorted(actions.items()))}"
    return mode


def make_sinks(holder: ConfigHolder, registry: CollectorRegistry, store: Store | None = None) -> dict[str, Sink]:
    """Every configured sink by name: PagerDuty (or its dry run), Statuspage when its section is present, and
    the runbook actions when ``actions:`` names any (their outcomes are audited in ``store``)."""
    sinks = {"pagerduty": make_sink(holder)}
    statuspage = make_statuspage_sink(holder, registry)
    if statuspage is not None:
        sinks["statuspage"] = statuspage
    if holder.current.config.actions and store is not None:
        sinks[ACTIONS_SINK] = make_actions_sink(holder, registry)
    return sinks


def make_actions_sink(holder: ConfigHolder, registry: CollectorRegistry) -> ActionsSink:
    """The runbook actions' sink: at start when ``actions:`` names any, else when a reload adds the first."""
    return ActionsSink(
        httpx.AsyncClient(), actions=lambda: holder.current.config.actions,
        secrets=lambda: holder.current.secrets.actions, metrics=ActionMetrics(registry),
    )


def make_statuspage_sink(holder: ConfigHolder, registry: CollectorRegistry) -> Sink | None:
    """The Statuspage sink (dry-run transport without a token), or None without ``integrations.statuspage``."""
    sp = holder.current.config.integrations.statuspage
    if sp is None:
        return None
    transport: Transport
    if holder.statuspage_token() is None:
        log.warning("no Statuspage API token configured: dry-run, Statuspage requests are logged and not sent")
        transport = DryRunStatuspage(logging.getLogger("bridge.dryrun"))
    else:
        client = httpx.AsyncClient(timeout=STATUSPAGE_TIMEOUT)
        transport = HttpTransport(client, url=sp.api_url, token=holder.statuspage_token)
    return StatuspageSink(
        transport, settings=holder.statuspage_settings, token=holder.statuspage_token,
        requests_per_second=sp.requests_per_second, metrics=StatuspageMetrics(registry),
    )


def make_sink(holder: ConfigHolder) -> Sink:
    """The PagerDuty sink, or the dry-run sink when no routing key is configured."""
    loaded = holder.current
    if not loaded.secrets.has_pagerduty:
        log.warning("no PagerDuty routing key configured: dry-run, events are logged and not sent")
        return DryRunSink(logging.getLogger("bridge.dryrun"), late_resolved=holder.late_resolved)
    pd = loaded.config.integrations.pagerduty
    client = httpx.AsyncClient(timeout=PAGERDUTY_TIMEOUT)
    return PagerDutySink(
        client,
        url=pd.events_url,
        routing_key_for=holder.routing_key_for,
        rate_limit_per_minute=pd.rate_limit_per_minute,
        late_resolved=holder.late_resolved,
    )


def make_store(loaded: LoadedConfig) -> Store:
    """PostgreSQL when ``store.url`` is set (replicas share it), else the SQLite file at ``store.path``."""
    settings = loaded.config.store
    if settings.url is not None:
        return PostgresStore(
            settings.url.get_secret_value(), password=loaded.secrets.store_password, pool_size=settings.pool_size
        )
    return SqliteStore(settings.path)


async def serve_config(
    config_file: str | Path, listen_address: str | None = None, *, stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
) -> int:
    """Run the bridge from ``config_file`` until SIGTERM/SIGINT or ``stop`` (the demo runs it); ConfigError if bad."""
    return await _serve(load(config_file), listen_address, stop=stop, started=started)


async def _serve(
    loaded: LoadedConfig, listen_address: str | None, *, stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None, limits: ServerLimits | None = None,
) -> int:
    holder = ConfigHolder(loaded)
    registry = CollectorRegistry()
    store = make_store(loaded)
    sinks = make_sinks(holder, registry, store)

    def enable_actions() -> Sink:  # kept in ``sinks``, so it is closed with the others
        sinks[ACTIONS_SINK] = make_actions_sink(holder, registry)
        return sinks[ACTIONS_SINK]

    def enable_pagerduty() -> Sink:  # replaces the dry run (nothing to close) in ``sinks``
        sinks["pagerduty"] = make_sink(holder)
        return sinks["pagerduty"]

    bridge = Bridge(holder, store=store, sinks=sinks, registry=registry, actions_sink=enable_actions,
                    pagerduty_sink=enable_pagerduty)
    auth = loaded.config.server.auth
    if auth.bearer_token is None and auth.bearer_token_file is None and auth.basic_auth is None:
        log.warning("server.auth is not configured: anyone who can reach the bridge can post alerts")
    stop = stop or asyncio.Event()
    bridge.tasks.on_failure(lambda _reason: stop.set())  # a background task gave up: exit 1, be restarted
    try:
        await serve(bridge.app, listen_address or loaded.config.server.listen_address, limits=limits,
                    reload=bridge.reload, stop=stop, started=started)
    finally:
        for sink in sinks.values():
            await sink.aclose()
    return 1 if bridge.tasks.failed else 0


def synthetic_payload(
    *, alert_class: str, certificate: str, environment: str, severity: str, resolve: bool, now: datetime
) -> dict[str, Any]:
    """An Alertmanager v4 webhook with one alert, as Alertmanager would send it."""
    labels = {"alertname": "CertpagerTestAlert", "class": alert_class, "certificate": certificate, "test": "true"}
    if environment:
        labels["environment"] = environment
    if severity:
        labels["severity"] = severity
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    status = "resolved" if resolve else "firing"
    alert = {
        "status": status,
        "labels": labels,
        "annotations": {"summary": f"certpager test alert for {certificate}", "description": "sent by test-alert"},
        # A resolve carries a later startsAt: it ends every earlier occurrence of this alert.
        "startsAt": stamp,
        "endsAt": stamp if resolve else "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": label_fingerprint(labels),
    }
    return {
        "version": "4", "groupKey": "{}:{alertname=\"CertpagerTestAlert\"}", "truncatedAlerts": 0, "status": status,
        "receiver": "certpager-test-alert", "groupLabels": {"alertname": "CertpagerTestAlert"},
        "commonLabels": labels, "commonAnnotations": alert["annotations"], "externalURL": "", "alerts": [alert],
    }


def _auth_header(config_file: str | None) -> tuple[dict[str, str], LoadedConfig | None]:
    if not config_file:
        return {}, None
    loaded = load(config_file)
    secrets, basic = loaded.secrets, loaded.config.server.auth.basic_auth
    if secrets.bearer_token:  # the first line: the token in force (a second one is a rotation's new token)
        return {"Authorization": f"Bearer {secrets.bearer_token.splitlines()[0].strip()}"}, loaded
    if basic is not None and secrets.basic_password is not None:
        token = base64.b64encode(f"{basic.username}:{secrets.basic_password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}, loaded
    return {}, loaded


def _base_url(args: argparse.Namespace, loaded: LoadedConfig | None) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    if loaded is None:
        return DEFAULT_URL
    host, port = split_listen_address(loaded.config.server.listen_address)
    host = host or "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def test_alert(args: argparse.Namespace) -> int:
    """POST one synthetic alert to a running bridge; print its answer."""
    try:
        headers, loaded = _auth_header(args.alert_config_file or args.config_file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    payload = synthetic_payload(
        alert_class=args.alert_class, certificate=args.certificate, environment=args.environment,
        severity=args.severity, resolve=args.resolve, now=datetime.fromtimestamp(time.time(), UTC),
    )
    url = _base_url(args, loaded) + ALERTMANAGER_PATH
    try:
        response = httpx.post(url, json=payload, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"cannot reach the bridge at {url}: {exc}", file=sys.stderr)
        return 1
    print(f"{response.status_code} {_pretty(response.text)}")
    if response.status_code == 401:
        print(_credentials_hint(loaded), file=sys.stderr)
    return 0 if response.status_code == 200 else 1


def _credentials_hint(loaded: LoadedConfig | None) -> str:
    """What to do about a 401 (never the credential itself)."""
    if loaded is None:
        return ("the bridge wants credentials: pass its config with --config.file FILE (before or after "
                "test-alert); its server.auth bearer token or basic auth is sent")
    return (f"the bridge refused the credentials of {loaded.path} (server.auth): is it the config the bridge "
            "runs with, and was the bridge reloaded after its token or password changed?")


def _pretty(text: str) -> str:
    try:
        data: Mapping[str, Any] = json.loads(text)
    except ValueError:
        return text.strip()
    return json.dumps(data, sort_keys=True)



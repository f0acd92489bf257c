"""``certpager demo``: the whole product on loopback, offline, in one command.

Every start regenerates the demo PKI (so "5 days left" always means five days from now), serves one
loopback TLS endpoint per demo certificate, runs the exporter and the bridge in this process through
their own entry points (``serve_config``) and, when ``prometheus`` and ``prometheus-alertmanager`` are on
PATH, runs both as child processes with configs generated from ``deploy/`` and ``rules/`` (shortened
``for:`` and group waits), so alerts flow endpoint -> exporter -> Prometheus -> Alertmanager -> bridge ->
dry-run PagerDuty events in the log within about a minute. docs/demo.md describes it for users.

Only this module and certpager/cli.py may import both the exporter and the bridge (DESIGN.md section 6).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from certpager import pki
from certpager.config import parse_duration
from certpager.demo_alerting import (
    DEMO_FOR,
    READY_TIMEOUT,
    REPO_ROOT,
    STOP_TIMEOUT,
    Addresses,
    AlertingPages,
    Child,
    DemoError,
    alerting_pages,
    connect_address,
    find_binaries,
    read_yaml,
    start_alerting,
    write_yaml,
)
from certpager.errors import ConfigError
from certpager.logs import setup_logging
from certpager.tlsserver import TLSServer
from certpager.web import split_listen_address

log = logging.getLogger("certpager.demo")

DEFAULT_DATA_DIR = "demo-data"
DEFAULT_EXPORTER = "127.0.0.1:9879"
DEFAULT_BRIDGE = "127.0.0.1:9880"
# Not 9090/9093: installing Debian's packages starts system instances there.
DEFAULT_PROMETHEUS = "127.0.0.1:19090"
DEFAULT_ALERTMANAGER = "127.0.0.1:19093"
PROBE_INTERVAL = "15s"  # exporter background probes
ENVIRONMENT = "demo"
DOMAIN = "certpager.test"  # reserved TLD: the demo names never resolve anywhere
# What the demo owns inside --data-dir and removes at every start (nothing else is touched).
OWNED = ("pki", "prometheus", "alertmanager", "exporter.yml", "bridge.yml", "bridge.token",
         "bridge.db", "bridge.db-wal", "bridge.db-shm", "bridge.db.lock")

LeafKind = Literal["chain", "self_signed", "wrong_name"]


@dataclass(frozen=True)
class LeafSpec:
    """One demo endpoint: how long its certificate has left and what is wrong with it."""

    name: str  # also the target's `service` label
    days_left: int
    validity_days: int
    kind: LeafKind
    shows: str  # what a newcomer should see for it

    @property
    def cn(self) -> str:
        return f"{self.name}.{DOMAIN}"


LEAVES: tuple[LeafSpec, ...] = (
    LeafSpec("valid", 400, 401, "chain", "verified, 400 days left, no alert"),
    LeafSpec("expiring-20d", 20, 90, "chain", "CertificateExpiring30Days + CertificateRenewalFailed"),
    LeafSpec("expiring-5d", 5, 90, "chain", "CertificateExpiring7Days + CertificateRenewalFailed"),
    LeafSpec("expired", -1, 90, "chain", "CertificateExpired (critical) + CertificateRenewalFailed"),
    LeafSpec("untrusted", 60, 90, "self_signed", "CertificateVerifyFailed (self-signed)"),
    LeafSpec("wrong-hostname", 60, 90, "wrong_name", "CertificateVerifyFailed (hostname_mismatch)"),
)


# Made-up Statuspage component ids for the demo's services (the targets' `service` labels).
DEMO_COMPONENTS = {spec.name: "demo" + spec.name.replace("-", "") for spec in LEAVES}


@dataclass(frozen=True)
class DemoLeaf:
    """A generated demo certificate and where its files are."""

    spec: LeafSpec
    files: pki.ChainFiles
    not_after: float


@dataclass(frozen=True)
class Options:
    """``certpager demo`` flags, validated."""

    data_dir: Path
    addresses: Addresses
    prometheus: bool = True
    duration: float | None = None


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the demo's flags."""
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help=f"where the demo writes (default ./{DEFAULT_DATA_DIR}; regenerated at every start)")
    parser.add_argument("--exporter-address", default=DEFAULT_EXPORTER, help=f"default {DEFAULT_EXPORTER}")
    parser.add_argument("--bridge-address", default=DEFAULT_BRIDGE, help=f"default {DEFAULT_BRIDGE}")
    parser.add_argument("--prometheus-address", default=DEFAULT_PROMETHEUS, help=f"default {DEFAULT_PROMETHEUS}")
    parser.add_argument("--alertmanager-address", default=DEFAULT_ALERTMANAGER, help=f"default {DEFAULT_ALERTMANAGER}")
    parser.add_argument("--no-prometheus", dest="prometheus", action="store_false",
                        help="do not start Prometheus and Alertmanager even when installed")
    parser.add_argument("--duration", type=_duration, default=None, metavar="DURATION",
                        help="stop after this long: seconds or a duration like 90s, 5m "
                             "(default: run until Ctrl-C or SIGTERM)")
    parser.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"])


def _duration(text: str) -> float:
    """--duration in the config's syntax (90, 90s, 5m); argparse makes an error of it a usage error (2)."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("expected a duration greater than 0")
    return seconds


def run(args: argparse.Namespace) -> int:
    """Entry point of ``certpager demo``."""
    setup_logging(args.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    flags = {"--exporter-address": args.exporter_address, "--bridge-address": args.bridge_address,
             "--prometheus-address": args.prometheus_address, "--alertmanager-address": args.alertmanager_address}
    for flag, address in flags.items():
        try:
            split_listen_address(address)
        except ValueError as exc:
            print(f"{flag}: {exc}", file=sys.stderr)
            return 2
    addresses = Addresses(args.exporter_address, args.bridge_address, args.prometheus_address,
                          args.alertmanager_address)
    options = Options(Path(args.data_dir).resolve(), addresses, args.prometheus, args.duration)
    try:
        return asyncio.run(run_demo(options))
    except DemoError as exc:
        print(f"certpager demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the demo's own handler was installed: nothing was started yet
        return 130


def check_ports_free(options: Options, *, alerting: bool) -> None:
    """DemoError naming the flag when a port is taken, before anything in the data dir is touched.

    A second demo on the same data dir would otherwise regenerate the running one's files first.
    """
    a = options.addresses
    flags = {"exporter": a.exporter, "bridge": a.bridge}
    if alerting:
        flags |= {"prometheus": a.prometheus, "alertmanager": a.alertmanager}
    for name, address in flags.items():
        host, port = split_listen_address(address)
        family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                sock.bind((host or "", port))
            except OSError as exc:
                raise DemoError(f"the {name} cannot listen on {address}: {exc.strerror or exc} "
                                f"(another demo running? pick another port with --{name}-address)") from exc


# --- files --------------------------------------------------------------------------------------------


def prepare_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` and remove what an earlier demo run left in it (only the demo's own files)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        path = data_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def generate_pki(directory: Path, now: dt.datetime | None = None) -> list[DemoLeaf]:
    """Write the demo root, intermediate and one chain per LEAVES entry into ``directory``."""
    now = now or pki.utcnow()
    root = pki.make_root("certpager Demo Root CA")
    intermediate = pki.make_intermediate(root, "certpager Demo Intermediate CA")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "root.crt").write_bytes(root.cert_pem)
    (directory / "intermediate.crt").write_bytes(intermediate.cert_pem)
    leaves = []
    for spec in LEAVES:
        not_after = now + dt.timedelta(days=spec.days_left)
        dates: dict[str, object] = {"not_before": not_after - dt.timedelta(days=spec.validity_days),
                                    "not_after": not_after}
        names = [spec.cn] if spec.kind == "wrong_name" else [spec.cn, "localhost", "127.0.0.1"]
        if spec.kind == "self_signed":
            chain = pki.self_signed_chain(names, **dates)
        else:
            chain = pki.build_chain(names, root=root, intermediate=intermediate, **dates)
        leaves.append(DemoLeaf(spec, chain.write(directory, spec.name), chain.leaf.not_after))
    return leaves


def exporter_config(endpoints: Mapping[str, str], ca_file: Path) -> dict[str, Any]:
    """The exporter config: one target per endpoint (service -> host:port), trusting the demo root."""
    return {
        "global": {"scrape_interval": PROBE_INTERVAL, "retry_backoff": "5s"},
        "modules": {"tls": {"kind": "tls", "timeout": "5s", "tls": {"ca_file": str(ca_file)}}},
        "targets": [{"target": address, "labels": {"environment": ENVIRONMENT, "service": name}}
                    for name, address in endpoints.items()],
    }


def bridge_config(base: Any, listen_address: str, token_file: Path, store_path: Path) -> dict[str, Any]:
    """deploy/bridge's example with the demo's address, token, store, and never a routing key (dry-run)."""
    config: dict[str, Any] = dict(base) if isinstance(base, dict) else {}
    integrations = dict(config.get("integrations") or {})
    pagerduty = {k: v for k, v in dict(integrations.get("pagerduty") or {}).items() if not k.startswith("routing_key")}
    integrations["pagerduty"] = pagerduty
    # Statuspage in dry-run (no token): each demo service is a component, so the log shows the requests.
    integrations["statuspage"] = {"page_id": "demo", "component_map": DEMO_COMPONENTS}
    config["integrations"] = integrations
    server = dict(config.get("server") or {})
    server["listen_address"] = listen_address
    server["auth"] = {"bearer_token_file": str(token_file)}
    config["server"] = server
    # The demo's own SQLite file, whatever store the copied config names (no PostgreSQL keys kept).
    store = {k: v for k, v in dict(config.get("store") or {}).items() if k == "retention"}
    config["store"] = {**store, "path": str(store_path)}
    return config


# --- in-process services ------------------------------------------------------------------------------

ServeFn = Callable[..., Coroutine[Any, Any, int]]


async def start_service(name: str, serve: ServeFn, *args: object, stop: asyncio.Event) -> asyncio.Task[int]:
    """Run ``serve(*args, stop=, started=)`` as a task; return once it listens, DemoError if it cannot."""
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_started(port: int) -> None:
        if not started.done():
            started.set_result(port)

    task = asyncio.create_task(serve(*args, stop=stop, started=on_started), name=f"demo-{name}")
    await asyncio.wait({task, started}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if started.done():
        return task
    if not task.done():
        task.cancel()
        raise DemoError(f"the {name} did not start listening within {READY_TIMEOUT:.0f}s")
    exc = task.exception()
    if isinstance(exc, OSError):
        raise DemoError(f"the {name} cannot listen on {args[1]}: {exc.strerror or exc} "
                        f"(pick another with --{name}-address)") from exc
    if isinstance(exc, ConfigError):
        raise DemoError(f"the {name}'s generated config is invalid: {exc}") from exc
    raise DemoError(f"the {name} stopped during start (exit code {None if exc else task.result()})") from exc


async def stop_services(tasks: Iterable[asyncio.Task[int]], stop: asyncio.Event) -> None:
    """Set ``stop`` and wait (bounded) for the services to close their listeners and stores."""
    stop.set()
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, late = await asyncio.wait(pending, timeout=STOP_TIMEOUT)
        for task in late:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


# --- the whole demo -----------------------------------------------------------------------------------


def _url(address: str) -> str:
    return f"http://{connect_address(address)}"


def banner(options: Options, leaves: list[DemoLeaf], endpoints: dict[str, str], pages: AlertingPages | None) -> str:
    """What is running where, and what to look at."""
    data, addresses = options.data_dir, options.addresses
    exporter, bridge = _url(addresses.exporter), _url(addresses.bridge)
    lines = [
        "", f"certpager demo: everything on loopback, files in {data} (regenerated at every start)", "",
        f"TLS endpoints (environment={ENVIRONMENT}; trusted root: {data / 'pki' / 'root.crt'}):",
    ]
    for leaf in leaves:
        lines.append(f"  {leaf.spec.name:<15} {endpoints[leaf.spec.name]:<16} {leaf.spec.cn:<30} {leaf.spec.shows}")
    first = endpoints[leaves[0].spec.name]
    lines += [
        "", f"  exporter      {exporter}/metrics",
        f"                {exporter}/probe?target={first}&module=tls",
        f"  bridge        {bridge}/metrics   (dry-run: PagerDuty events and Statuspage requests are logged, not sent)",
    ]
    if pages is not None:
        lines += [
            f"  prometheus    {pages.prometheus}   (log: {data}/prometheus/prometheus.log)",
            f"  alertmanager  {pages.alertmanager}   (log: {data}/alertmanager/alertmanager.log)",
            "", f"Alerts fire after {DEMO_FOR} (demo for:) and reach the bridge within about a minute: watch the log",
            'below for "dry-run: would send PagerDuty event" and "dry-run: would send Statuspage request".',
        ]
    lines += [
        "", f"Try:  certpager probe {endpoints['expired']} --cafile {data / 'pki' / 'root.crt'}",
        f"      certpager bridge test-alert --config.file {data / 'bridge.yml'} --class certificate_expired "
        f"--certificate test.{DOMAIN} --environment {ENVIRONMENT}",
        "Stop with Ctrl-C." if options.duration is None else f"Stopping after {options.duration:g} s (or Ctrl-C).",
        "",
    ]
    return "\n".join(lines)


NO_ALERTING = """\
Prometheus and Alertmanager are not on PATH, so alerts do not flow on their own. To see the whole path
(endpoints -> exporter -> Prometheus -> Alertmanager -> bridge -> PagerDuty events), install them and start
the demo again:
    apt-get install --no-install-recommends prometheus prometheus-alertmanager   (as root; or run scripts/demo as root)
Meanwhile, send a synthetic alert through the bridge from another terminal:
    certpager bridge test-alert --config.file {bridge_yml} \
        --class certificate_expired --certificate expired.{domain} --environment {env}
"""


async def run_demo(options: Options, *, stop: asyncio.Event | None = None, out: TextIO | None = None) -> int:
    """Run the demo until ``stop`` is set, SIGTERM/SIGINT, or ``options.duration``; stop all it started."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    timer = loop.call_later(options.duration, stop.set) if options.duration is not None else None
    try:
        # Imported after the signal handlers: a Ctrl-C during these imports is then a clean stop.
        from bridge.cli import serve_config as serve_bridge
        from exporter.cli import serve_config as serve_exporter

        return await _run(options, stop, out or sys.stdout, serve_exporter, serve_bridge)
    finally:
        if timer is not None:
            timer.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def _run(options: Options, stop: asyncio.Event, out: TextIO, serve_exporter: ServeFn,
               serve_bridge: ServeFn) -> int:
    binaries = _alerting_binaries(options)
    check_ports_free(options, alerting=binaries is not None)
    prepare_data_dir(options.data_dir)
    leaves = await asyncio.to_thread(generate_pki, options.data_dir / "pki")
    bridge_yml, token_file = write_bridge_files(options)
    services: list[asyncio.Task[int]] = []
    children: list[Child] = []
    async with contextlib.AsyncExitStack() as stack:
        servers = {leaf.spec.name: await stack.enter_async_context(TLSServer(leaf.files.cert_file, leaf.files.key_file))
                   for leaf in leaves}
        endpoints = {name: server.address for name, server in servers.items()}
        exporter_yml = write_yaml(options.data_dir / "exporter.yml",
                                  exporter_config(endpoints, options.data_dir / "pki" / "root.crt"),
                                  "Generated by certpager demo for its loopback endpoints. Rewritten at every start.")
        try:
            services.append(await start_service("exporter", serve_exporter, exporter_yml,
                                                options.addresses.exporter, stop=stop))
            services.append(await start_service("bridge", serve_bridge, bridge_yml, options.addresses.bridge,
                                                stop=stop))
            if binaries is not None:
                children = await _start_alerting_unless_stopped(options, binaries, token_file, stop)
            if not stop.is_set():
                pages = await alerting_pages(options.addresses) if children else None
                out.write(banner(options, leaves, endpoints, pages))
                if binaries is None and options.prometheus:
                    out.write(NO_ALERTING.format(bridge_yml=bridge_yml, domain=DOMAIN, env=ENVIRONMENT) + "\n")
                out.flush()
            await _wait_until_stopped(stop, services)
        finally:
            log.info("stopping the demo")
            await asyncio.gather(*(child.stop() for child in reversed(children)))
            await stop_services(services, stop)
    log.info("demo stopped")
    return 0


def write_bridge_files(options: Options) -> tuple[Path, Path]:
    """A fresh webhook bearer token (0600) and the bridge config; return (config, token) paths."""
    token_file = options.data_dir / "bridge.token"
    token_file.write_text(secrets.token_urlsafe(32) + "\n")
    token_file.chmod(0o600)
    base = read_yaml(path) if (path := REPO_ROOT / "deploy/bridge/certpager-bridge.yml").exists() else {}
    config = bridge_config(base, options.addresses.bridge, token_file, options.data_dir / "bridge.db")
    bridge_yml = write_yaml(options.data_dir / "bridge.yml", config,
                            f"Generated by certpager demo from {path}; no routing key: dry-run. Rewritten at start.")
    return bridge_yml, token_file


async def _start_alerting_unless_stopped(
    options: Options, binaries: tuple[str, str], token_file: Path, stop: asyncio.Event
) -> list[Child]:
    """start_alerting; a child that dies because Ctrl-C reached it too is a stop, not an error."""
    try:
        return await start_alerting(options.data_dir, options.addresses, binaries, token_file)
    except DemoError:
        if stop.is_set():
            return []
        raise


def _alerting_binaries(options: Options) -> tuple[str, str] | None:
    """Prometheus and Alertmanager to start, or None: not wanted, not installed, or no deploy/ to configure them."""
    binaries = find_binaries() if options.prometheus else None
    if binaries is not None and not all((REPO_ROOT / d).is_dir() for d in ("deploy", "rules")):
        log.warning("deploy/ and rules/ are not next to the package (not a checkout): Prometheus and Alertmanager "
                    "are not started", extra={"kv": {"looked_in": str(REPO_ROOT)}})
        return None
    return binaries


async def _wait_until_stopped(stop: asyncio.Event, services: list[asyncio.Task[int]]) -> None:
    """Wait for ``stop``; a service that ends on its own is an error (the demo would be half-alive)."""
    waiter = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({waiter, *services}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    ended = [task for task in services if task in done]
    if ended and not stop.is_set():
        name = ended[0].get_name().removeprefix("demo-")
        raise DemoError(f"the {name} stopped unexpectedly: {ended[0].exception() or ended[0].result()}")

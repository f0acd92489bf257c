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
import sys
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx
import yaml

from certpager import pki
from certpager.errors import CertpagerError, ConfigError
from certpager.logs import setup_logging
from certpager.tlsserver import TLSServer
from certpager.web import split_listen_address

log = logging.getLogger("certpager.demo")

REPO_ROOT = Path(__file__).resolve().parents[1]  # deploy/ and rules/ live here in a checkout
DEFAULT_DATA_DIR = "demo-data"
DEFAULT_EXPORTER = "127.0.0.1:9879"
DEFAULT_BRIDGE = "127.0.0.1:9880"
# Not 9090/9093: installing Debian's packages starts system instances there.
DEFAULT_PROMETHEUS = "127.0.0.1:19090"
DEFAULT_ALERTMANAGER = "127.0.0.1:19093"
PROBE_INTERVAL = "15s"  # exporter background probes
SCRAPE_INTERVAL = "5s"  # Prometheus scrapes and rule evaluations
DEMO_FOR = "10s"  # every alert's for: is cut to this (production: 5m to 1d)
GROUP_WAIT = "2s"  # Alertmanager group_wait on every route (production: 10s to 1m)
GROUP_INTERVAL = "10s"
ENVIRONMENT = "demo"
DOMAIN = "certpager.test"  # reserved TLD: the demo names never resolve anywhere
READY_TIMEOUT = 30.0  # seconds for a service or child process to come up
STOP_TIMEOUT = 10.0  # seconds a child process gets after SIGTERM before SIGKILL
# What the demo owns inside --data-dir and removes at every start (nothing else is touched).
OWNED = ("pki", "prometheus", "alertmanager", "exporter.yml", "bridge.yml", "bridge.token",
         "bridge.db", "bridge.db-wal", "bridge.db-shm")

LeafKind = Literal["chain", "self_signed", "wrong_name"]


class DemoError(CertpagerError):
    """The demo cannot start: a port is taken, a child process failed, a deploy file is missing."""


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
    exporter_address: str
    bridge_address: str
    prometheus_address: str
    alertmanager_address: str
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
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after this many seconds (default: run until Ctrl-C or SIGTERM)")
    parser.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    """Entry point of ``certpager demo``."""
    setup_logging(args.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    addresses = {"--exporter-address": args.exporter_address, "--bridge-address": args.bridge_address,
                 "--prometheus-address": args.prometheus_address, "--alertmanager-address": args.alertmanager_address}
    for flag, address in addresses.items():
        try:
            split_listen_address(address)
        except ValueError as exc:
            print(f"{flag}: {exc}", file=sys.stderr)
            return 2
    if args.duration is not None and not args.duration > 0:
        print(f"--duration: expected a positive number of seconds, got {args.duration}", file=sys.stderr)
        return 2
    options = Options(Path(args.data_dir).resolve(), args.exporter_address, args.bridge_address,
                      args.prometheus_address, args.alertmanager_address, args.prometheus, args.duration)
    try:
        return asyncio.run(run_demo(options))
    except DemoError as exc:
        print(f"certpager demo: {exc}", file=sys.stderr)
        return 1


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


def write_yaml(path: Path, data: object, header: str) -> Path:
    """Write ``data`` as YAML under a comment header (the generated files are meant to be read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    path.write_text(text + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    return path


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DemoError(f"cannot read {path}: {exc}") from exc


def _connect_address(address: str) -> str:
    """A listen address as something to connect to (``:9879`` -> ``127.0.0.1:9879``)."""
    host, port = split_listen_address(address)
    host = host or "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def exporter_config(leaves: Iterable[DemoLeaf], endpoints: dict[str, str], ca_file: Path) -> dict[str, Any]:
    """The exporter config: one target per endpoint, trusting the demo root."""
    return {
        "global": {"scrape_interval": PROBE_INTERVAL, "retry_backoff": "5s"},
        "modules": {"tls": {"kind": "tls", "timeout": "5s", "tls": {"ca_file": str(ca_file)}}},
        "targets": [
            {"target": endpoints[leaf.spec.name], "labels": {"environment": ENVIRONMENT, "service": leaf.spec.name}}
            for leaf in leaves
        ],
    }


def bridge_config(base: Any, options: Options, token_file: Path) -> dict[str, Any]:
    """deploy/bridge's example with the demo's address, token, store, and never a routing key (dry-run)."""
    config: dict[str, Any] = dict(base) if isinstance(base, dict) else {}
    integrations = dict(config.get("integrations") or {})
    pagerduty = {k: v for k, v in dict(integrations.get("pagerduty") or {}).items() if not k.startswith("routing_key")}
    integrations["pagerduty"] = pagerduty
    integrations.pop("statuspage", None)
    config["integrations"] = integrations
    server = dict(config.get("server") or {})
    server["listen_address"] = options.bridge_address
    server["auth"] = {"bearer_token_file": str(token_file)}
    config["server"] = server
    config["store"] = {**dict(config.get("store") or {}), "type": "sqlite", "path": str(options.data_dir / "bridge.db")}
    return config


def demo_rules(groups_doc: Any) -> Any:
    """A rules file with every alert's ``for:`` cut to DEMO_FOR (expressions untouched)."""
    for group in groups_doc.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" in rule and "for" in rule:
                rule["for"] = DEMO_FOR
    return groups_doc


def prometheus_config(base: Any, options: Options, rule_files: list[Path]) -> dict[str, Any]:
    """deploy/prometheus's config: 5 s scrapes and evaluations, the demo's rules, exporter and bridge."""
    config: dict[str, Any] = dict(base) if isinstance(base, dict) else {}
    config["global"] = {**dict(config.get("global") or {}), "scrape_interval": SCRAPE_INTERVAL,
                        "scrape_timeout": "4s", "evaluation_interval": SCRAPE_INTERVAL}
    config["rule_files"] = [str(p) for p in rule_files]
    config["alerting"] = {"alertmanagers": [{"static_configs": [
        {"targets": [_connect_address(options.alertmanager_address)]}]}]}
    jobs = {job.get("job_name"): job for job in config.get("scrape_configs") or []}
    scrape = []
    # The /probe (file_sd) job is left out: the demo shows background mode; both would page alike.
    for name, address in (("certpager", options.exporter_address), ("certpager-bridge", options.bridge_address)):
        job = {k: v for k, v in dict(jobs.get(name) or {"job_name": name}).items() if not k.endswith("_sd_configs")}
        job.update(static_configs=[{"targets": [_connect_address(address)]}], scrape_interval=SCRAPE_INTERVAL)
        job.pop("scrape_timeout", None)
        scrape.append(job)
    config["scrape_configs"] = scrape
    return config


def _shorten_route(route: dict[str, Any], *, root: bool = True) -> None:
    # Child routes inherit the root's waits; only the ones that set their own are overridden.
    for key, value in (("group_wait", GROUP_WAIT), ("group_interval", GROUP_INTERVAL)):
        if root or key in route:
            route[key] = value
    for child in route.get("routes") or []:
        _shorten_route(child, root=False)


def alertmanager_config(base: Any, options: Options, token_file: Path) -> dict[str, Any]:
    """deploy/alertmanager's route with short waits; every webhook goes to the demo bridge with its token."""
    if not isinstance(base, dict) or not isinstance(base.get("route"), dict):
        raise DemoError("deploy/alertmanager/alertmanager.yml has no route")
    config: dict[str, Any] = base
    _shorten_route(config["route"])
    url = f"http://{_connect_address(options.bridge_address)}/api/v1/alerts/alertmanager"
    hooks = [hook for receiver in config.get("receivers") or [] for hook in receiver.get("webhook_configs") or []]
    if not hooks:
        raise DemoError("deploy/alertmanager/alertmanager.yml has no webhook receiver for the bridge")
    for hook in hooks:
        hook["url"] = url
        hook["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}
    return config


# --- child processes ----------------------------------------------------------------------------------


def find_binaries() -> tuple[str, str] | None:
    """Paths of prometheus and Alertmanager (Debian names it prometheus-alertmanager), or None."""
    prometheus = shutil.which("prometheus")
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    return (prometheus, alertmanager) if prometheus and alertmanager else None


@dataclass
class Child:
    """A child process the demo started, with its log file."""

    name: str
    process: asyncio.subprocess.Process
    log_file: Path

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self) -> None:
        """SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL; always reaps the process."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("child did not stop on SIGTERM, killing it", extra={"kv": {"name": self.name}})
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        log.info("child stopped", extra={"kv": {"name": self.name, "exit_code": self.process.returncode}})


async def start_child(name: str, argv: list[str], log_file: Path, ready_url: str) -> Child:
    """Start ``argv`` with output to ``log_file``; return once ``ready_url`` answers 200."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as out:
        process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                       stderr=asyncio.subprocess.STDOUT)
    child = Child(name, process, log_file)
    log.info("child started", extra={"kv": {"name": name, "pid": process.pid, "log": str(log_file)}})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    async with httpx.AsyncClient(timeout=2.0) as client:
        while loop.time() < deadline:
            if process.returncode is not None:
                raise DemoError(f"{name} exited with code {process.returncode}; last lines of {log_file}:\n"
                                + child.tail())
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(ready_url)).status_code == 200:
                    return child
            await asyncio.sleep(0.25)
    await child.stop()
    raise DemoError(f"{name} was not ready at {ready_url} within {READY_TIMEOUT:.0f}s; see {log_file}")


def _repo_file(relative: str) -> Path:
    path = REPO_ROOT / relative
    if not path.exists():
        raise DemoError(f"{path} not found: run the demo from a certpager checkout (scripts/demo)")
    return path


def write_alerting_configs(options: Options, token_file: Path) -> tuple[Path, Path]:
    """Generate the Prometheus config (with the demo rules) and the Alertmanager config; return their paths."""
    rule_sources = sorted(_repo_file("rules").glob("*.rules.yml"))
    if not rule_sources:
        raise DemoError(f"no rules in {REPO_ROOT / 'rules'}")
    prom_dir, am_dir = options.data_dir / "prometheus", options.data_dir / "alertmanager"
    note = f"Generated by certpager demo from {{}}: for: {DEMO_FOR}, {SCRAPE_INTERVAL} intervals; rewritten at start."
    rule_files = [write_yaml(prom_dir / src.name, demo_rules(_read_yaml(src)), note.format(src))
                  for src in rule_sources]
    prom_src = _repo_file("deploy/prometheus/prometheus.yml")
    prom = write_yaml(prom_dir / "prometheus.yml", prometheus_config(_read_yaml(prom_src), options, rule_files),
                      note.format(prom_src))
    am_src = _repo_file("deploy/alertmanager/alertmanager.yml")
    am = write_yaml(am_dir / "alertmanager.yml", alertmanager_config(_read_yaml(am_src), options, token_file),
                    note.format(am_src) + f"\ngroup_wait {GROUP_WAIT}, group_interval {GROUP_INTERVAL}.")
    return prom, am


async def start_alerting(options: Options, binaries: tuple[str, str], token_file: Path) -> list[Child]:
    """Start Alertmanager, then Prometheus; return them once both answer /-/ready."""
    prom_config, am_config = write_alerting_configs(options, token_file)
    prom_dir, am_dir = prom_config.parent, am_config.parent
    am_url = f"http://{_connect_address(options.alertmanager_address)}"
    prom_url = f"http://{_connect_address(options.prometheus_address)}"
    children: list[Child] = []
    try:
        children.append(await start_child("alertmanager", [
            binaries[1], f"--config.file={am_config}", f"--storage.path={am_dir / 'data'}",
            f"--web.listen-address={options.alertmanager_address}",
            "--cluster.listen-address=",  # no HA gossip: a lone instance notifies at once
            f"--web.external-url={am_url}/",  # links in the events point here, not at the hostname
        ], am_dir / "alertmanager.log", am_url + "/-/ready"))
        children.append(await start_child("prometheus", [
            binaries[0], f"--config.file={prom_config}", f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--web.listen-address={options.prometheus_address}", "--storage.tsdb.retention.time=1d",
            f"--web.external-url={prom_url}/",
        ], prom_dir / "prometheus.log", prom_url + "/-/ready"))
    except BaseException:
        await asyncio.gather(*(c.stop() for c in children))
        raise
    return children


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
    return f"http://{_connect_address(address)}"


def banner(options: Options, leaves: list[DemoLeaf], endpoints: dict[str, str], alerting: bool) -> str:
    """What is running where, and what to look at."""
    data, exporter, bridge = options.data_dir, _url(options.exporter_address), _url(options.bridge_address)
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
        f"  bridge        {bridge}/metrics   (dry-run: PagerDuty events are logged, not sent)",
    ]
    if alerting:
        lines += [
            f"  prometheus    {_url(options.prometheus_address)}/alerts   (log: {data}/prometheus/prometheus.log)",
            f"  alertmanager  {_url(options.alertmanager_address)}/   (log: {data}/alertmanager/alertmanager.log)",
            "", f"Alerts fire after {DEMO_FOR} (demo for:) and reach the bridge within about a minute: watch the log",
            'below for "dry-run: would send PagerDuty event".',
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
    sudo apt-get install prometheus prometheus-alertmanager     (or: sudo scripts/install-system-deps)
Meanwhile, send a synthetic alert through the bridge from another terminal:
    certpager bridge test-alert --config.file {bridge_yml} \
        --class certificate_expired --certificate expired.{domain} --environment {env}
"""


async def run_demo(options: Options, *, stop: asyncio.Event | None = None, out: TextIO | None = None) -> int:
    """Run the demo until ``stop`` is set, SIGTERM/SIGINT, or ``options.duration``; stop all it started."""
    from bridge.cli import serve_config as serve_bridge
    from exporter.cli import serve_config as serve_exporter

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    timer = loop.call_later(options.duration, stop.set) if options.duration is not None else None
    try:
        return await _run(options, stop, out or sys.stdout, serve_exporter, serve_bridge)
    finally:
        if timer is not None:
            timer.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def _run(options: Options, stop: asyncio.Event, out: TextIO, serve_exporter: ServeFn,
               serve_bridge: ServeFn) -> int:
    prepare_data_dir(options.data_dir)
    leaves = await asyncio.to_thread(generate_pki, options.data_dir / "pki")
    token_file = options.data_dir / "bridge.token"
    token_file.write_text(secrets.token_urlsafe(32) + "\n")
    token_file.chmod(0o600)
    bridge_base = _read_yaml(path) if (path := REPO_ROOT / "deploy/bridge/certpager-bridge.yml").exists() else {}
    bridge_yml = write_yaml(options.data_dir / "bridge.yml", bridge_config(bridge_base, options, token_file),
                            "Generated by certpager demo (no routing key: dry-run). Rewritten at every start.")
    services: list[asyncio.Task[int]] = []
    children: list[Child] = []
    async with contextlib.AsyncExitStack() as stack:
        servers = {leaf.spec.name: await stack.enter_async_context(TLSServer(leaf.files.cert_file, leaf.files.key_file))
                   for leaf in leaves}
        endpoints = {name: server.address for name, server in servers.items()}
        exporter_yml = write_yaml(options.data_dir / "exporter.yml",
                                  exporter_config(leaves, endpoints, options.data_dir / "pki" / "root.crt"),
                                  "Generated by certpager demo for its loopback endpoints. Rewritten at every start.")
        try:
            services.append(await start_service("exporter", serve_exporter, exporter_yml, options.exporter_address,
                                                stop=stop))
            services.append(await start_service("bridge", serve_bridge, bridge_yml, options.bridge_address, stop=stop))
            binaries = find_binaries() if options.prometheus else None
            if binaries is not None:
                children = await start_alerting(options, binaries, token_file)
            out.write(banner(options, leaves, endpoints, alerting=binaries is not None))
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

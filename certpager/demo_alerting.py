"""Prometheus and Alertmanager for ``certpager demo``: configs generated from deploy/ and rules/, child processes.

The generated configs are the shipped ones with demo timings: 5 s scrapes and rule evaluations, every
alert's ``for:`` cut to 10 s, Alertmanager group_wait 2 s / group_interval 10 s, and the webhook pointed
at the demo bridge with its bearer token. A child process is started with its output in a log file and
counts as started once its ``/-/ready`` answers; stopping it is SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from certpager.errors import CertpagerError
from certpager.web import split_listen_address

log = logging.getLogger("certpager.demo")

REPO_ROOT = Path(__file__).resolve().parents[1]  # deploy/ and rules/ live here in a checkout
SCRAPE_INTERVAL = "5s"  # Prometheus scrapes and rule evaluations (deploy/: 60s)
DEMO_FOR = "10s"  # every alert's for: is cut to this (rules/: 5m to 1d)
GROUP_WAIT = "2s"  # Alertmanager group_wait on the root route and every route that sets one (deploy/: 10s-1m)
GROUP_INTERVAL = "10s"
READY_TIMEOUT = 30.0  # seconds for a service or child process to come up
STOP_TIMEOUT = 10.0  # seconds a child process gets after SIGTERM before SIGKILL


class DemoError(CertpagerError):
    """The demo cannot start: a port is taken, a child process failed, a deploy file is missing."""


@dataclass(frozen=True)
class Addresses:
    """Where the demo's four services listen (host:port)."""

    exporter: str
    bridge: str
    prometheus: str
    alertmanager: str


def write_yaml(path: Path, data: object, header: str) -> Path:
    """Write ``data`` as YAML under a comment header (the generated files are meant to be read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    path.write_text(text + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    return path


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; DemoError naming the file if it cannot be read."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DemoError(f"cannot read {path}: {exc}") from exc


def connect_address(address: str) -> str:
    """A listen address as something to connect to (``:9879`` -> ``127.0.0.1:9879``)."""
    host, port = split_listen_address(address)
    host = host or "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def demo_rules(groups_doc: Any) -> Any:
    """A rules file with every alert's ``for:`` cut to DEMO_FOR (expressions untouched)."""
    for group in groups_doc.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" in rule and "for" in rule:
                rule["for"] = DEMO_FOR
    return groups_doc


def prometheus_config(base: Any, addresses: Addresses, rule_files: list[Path]) -> dict[str, Any]:
    """deploy/prometheus's config: 5 s scrapes and evaluations, the demo's rules, exporter and bridge."""
    config: dict[str, Any] = dict(base) if isinstance(base, dict) else {}
    config["global"] = {**dict(config.get("global") or {}), "scrape_interval": SCRAPE_INTERVAL,
                        "scrape_timeout": "4s", "evaluation_interval": SCRAPE_INTERVAL}
    config["rule_files"] = [str(p) for p in rule_files]
    config["alerting"] = {"alertmanagers": [{"static_configs": [
        {"targets": [connect_address(addresses.alertmanager)]}]}]}
    jobs = {job.get("job_name"): job for job in config.get("scrape_configs") or []}
    scrape = []
    # The /probe (file_sd) job is left out: the demo shows background mode; both would page alike.
    for name, address in (("certpager", addresses.exporter), ("certpager-bridge", addresses.bridge)):
        job = {k: v for k, v in dict(jobs.get(name) or {"job_name": name}).items() if not k.endswith("_sd_configs")}
        job.update(static_configs=[{"targets": [connect_address(address)]}], scrape_interval=SCRAPE_INTERVAL)
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


def alertmanager_config(base: Any, addresses: Addresses, token_file: Path) -> dict[str, Any]:
    """deploy/alertmanager's route with short waits; every webhook goes to the demo bridge with its token."""
    if not isinstance(base, dict) or not isinstance(base.get("route"), dict):
        raise DemoError("deploy/alertmanager/alertmanager.yml has no route")
    config: dict[str, Any] = base
    _shorten_route(config["route"])
    url = f"http://{connect_address(addresses.bridge)}/api/v1/alerts/alertmanager"
    hooks = [hook for receiver in config.get("receivers") or [] for hook in receiver.get("webhook_configs") or []]
    if not hooks:
        raise DemoError("deploy/alertmanager/alertmanager.yml has no webhook receiver for the bridge")
    for hook in hooks:
        hook["url"] = url
        hook["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}
    # The demo reaches no SaaS: the fallback receiver's PagerDuty integration is dropped (a receiver with no
    # integration is valid; its alerts still show in Alertmanager's API).
    for receiver in config.get("receivers") or []:
        receiver.pop("pagerduty_configs", None)
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
                raise DemoError(f"{name} exited with code {process.returncode} (port taken? see --{name}-address); "
                                f"last lines of {log_file}:\n{child.tail()}")
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


def write_alerting_configs(data_dir: Path, addresses: Addresses, token_file: Path) -> tuple[Path, Path]:
    """Generate the Prometheus config (with the demo rules) and the Alertmanager config; return their paths."""
    rule_sources = sorted(_repo_file("rules").glob("*.rules.yml"))
    if not rule_sources:
        raise DemoError(f"no rules in {REPO_ROOT / 'rules'}")
    prom_dir, am_dir = data_dir / "prometheus", data_dir / "alertmanager"
    note = "Generated by certpager demo from {} (rewritten at every start):\n{}"
    rule_files = [write_yaml(prom_dir / src.name, demo_rules(read_yaml(src)),
                             note.format(src, f"every alert's for: set to {DEMO_FOR}."))
                  for src in rule_sources]
    prom_src = _repo_file("deploy/prometheus/prometheus.yml")
    prom = write_yaml(prom_dir / "prometheus.yml", prometheus_config(read_yaml(prom_src), addresses, rule_files),
                      note.format(prom_src, f"{SCRAPE_INTERVAL} scrapes and evaluations, demo addresses."))
    am_src = _repo_file("deploy/alertmanager/alertmanager.yml")
    am = write_yaml(am_dir / "alertmanager.yml", alertmanager_config(read_yaml(am_src), addresses, token_file),
                    note.format(am_src, f"group_wait {GROUP_WAIT}, group_interval {GROUP_INTERVAL}, webhook to the "
                                        "demo bridge."))
    return prom, am


async def start_alerting(
    data_dir: Path, addresses: Addresses, binaries: tuple[str, str], token_file: Path
) -> list[Child]:
    """Start Alertmanager, then Prometheus; return them once both answer /-/ready."""
    prom_config, am_config = write_alerting_configs(data_dir, addresses, token_file)
    prom_dir, am_dir = prom_config.parent, am_config.parent
    am_url = f"http://{connect_address(addresses.alertmanager)}"
    prom_url = f"http://{connect_address(addresses.prometheus)}"
    children: list[Child] = []
    try:
        children.append(await start_child("alertmanager", [
            binaries[1], f"--config.file={am_config}", f"--storage.path={am_dir / 'data'}",
            f"--web.listen-address={addresses.alertmanager}",
            "--cluster.listen-address=",  # no HA gossip: a lone instance notifies at once
            f"--web.external-url={am_url}/",  # links in the events point here, not at the hostname
        ], am_dir / "alertmanager.log", am_url + "/-/ready"))
        children.append(await start_child("prometheus", [
            binaries[0], f"--config.file={prom_config}", f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--web.listen-address={addresses.prometheus}", "--storage.tsdb.retention.time=1d",
            f"--web.external-url={prom_url}/",
        ], prom_dir / "prometheus.log", prom_url + "/-/ready"))
    except BaseException:
        await asyncio.gather(*(c.stop() for c in children))
        raise
    return children


@dataclass(frozen=True)
class AlertingPages:
    """The pages the banner points at, as this machine's Prometheus and Alertmanager serve them."""

    prometheus: str
    alertmanager: str


async def alerting_pages(addresses: Addresses) -> AlertingPages:
    """The first page of each list that answers 200 here.

    Debian's prometheus package ships only the classic UI (``/alerts`` is 404, ``/classic/alerts``
    works) and its prometheus-alertmanager has no web UI at all (its API answers): the banner must
    print what works on the machine the README names, and upstream builds serve the first candidates.
    """
    prom = f"http://{connect_address(addresses.prometheus)}"
    am = f"http://{connect_address(addresses.alertmanager)}"
    async with httpx.AsyncClient(timeout=2.0) as client:
        return AlertingPages(
            prometheus=await _first_ok(client, [(f"{prom}/alerts",) * 2, (f"{prom}/classic/alerts",) * 2]),
            # The UI's alerts view is a fragment of "/", and Debian's "/" answers 200 with a page saying
            # there is no UI: the UI's own script tells whether it is there.
            alertmanager=await _first_ok(client, [(f"{am}/#/alerts", f"{am}/script.js"),
                                                  (f"{am}/api/v2/alerts",) * 2]),
        )


async def _first_ok(client: httpx.AsyncClient, pages: list[tuple[str, str]]) -> str:
    """The first (page, URL that proves it is served) whose URL answers 200; else the last page."""
    for page, check in pages:
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(check)).status_code == 200:
                return page
    return pages[-1][0]


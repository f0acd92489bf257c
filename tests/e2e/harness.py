"""The end-to-end harness: real programs as subprocesses, loopback servers on a loop thread, config rendering.

The TLS endpoints and the webhook receiver run on an asyncio loop in a background thread, so the
fixtures and tests stay synchronous and every component can outlive a single test (the dashboard test
queries the same Prometheus the alert test drove).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_PATH = "/api/v1/alerts/alertmanager"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the programs bind it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 2.0) -> bytes | None:
    """GET ``url``; the body on 200, None on any error (the program may not be up yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read()) if response.status == 200 else None
    except (OSError, urllib.error.URLError):
        return None


class LoopThread:
    """An asyncio loop running in a daemon thread; ``run`` executes a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="e2e-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class Receiver:
    """Alertmanager's webhook target: checks the bearer token and records every payload in order."""

    token: str
    payloads: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(WEBHOOK_PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.rejected += 1
            return web.Response(status=401, text="bad or missing bearer token")
        self.payloads.append(await request.json())
        return web.Response(status=200)

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification, in arrival order."""
        return [alert for payload in list(self.payloads) for alert in payload["alerts"]]


class Program:
    """A subprocess with its output in a log file; ``stop`` terminates it (then kills) and closes the log."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(list(argv), stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=log_dir)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} (exit {self.process.poll()}) ---\n" + "\n".join(text[-lines:])

    def assert_running(self) -> None:
        assert self.process.poll() is None, self.log_tail()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@contextlib.contextmanager
def running(name: str, argv: Sequence[str], log_dir: Path) -> Iterator[Program]:
    program = Program(name, argv, log_dir)
    try:
        yield program
    finally:
        program.stop()


# --- config rendering ---------------------------------------------------------------------------------

_FOR_RE = re.compile(r"^(\s+for:) \S+$", re.MULTILINE)
_RANGE_RE = re.compile(r"\[(\d+[smhdwy])\]")


def render_rules(source: Path, dest: Path, *, for_: str, window: str) -> None:
    """Copy the rules with every ``for:`` set to ``for_`` and every range selector (the smoothing window)
    set to ``window``: the same expressions, on a time scale a test can wait for (docs/rules.md)."""
    text = source.read_text()
    text, n_for = _FOR_RE.subn(rf"\1 {for_}", text)
    text, n_range = _RANGE_RE.subn(f"[{window}]", text)
    assert n_for >= 9 and n_range >= 10, (n_for, n_range)
    dest.write_text(text)


def render_prometheus(
    source: Path, dest: Path, *, exporter: str, alertmanager: str, rule_file: Path, targets_file: Path
) -> None:
    """deploy/prometheus/prometheus.yml with 1s intervals and its two exporter jobs pointed at the test's
    exporter: background /metrics, and /probe with file_sd from ``targets_file`` (relabelling unchanged)."""
    config = yaml.safe_load(source.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    background, probe = jobs["certpager"], jobs["certpager-probe"]
    background["static_configs"] = [{"targets": [exporter]}]
    probe.update(scrape_interval="1s", scrape_timeout="1s")
    probe["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "1s"}]
    (last,) = [r for r in probe["relabel_configs"] if r.get("target_label") == "__address__"]
    last["replacement"] = exporter
    config["scrape_configs"] = [background, probe]
    config["rule_files"] = [str(rule_file)]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    dest.write_text(yaml.safe_dump(config, sort_keys=False))


def render_alertmanager(source: Path, dest: Path, *, url: str, token_file: Path) -> None:
    """deploy/alertmanager/alertmanager.yml with second-scale timings and the receiver pointed at the test."""
    config = yaml.safe_load(source.read_text())

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", "1s"), ("group_interval", "2s"), ("repeat_interval", "1h")):
            if key in route:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    for receiver in config["receivers"]:
        receiver.pop("pagerduty_configs", None)  # the fallback receiver: no traffic off loopback
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = url
            webhook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    dest.write_text(yaml.safe_dump(config, sort_keys=False))

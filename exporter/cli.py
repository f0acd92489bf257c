"""``certpager exporter``: run the exporter, or validate its config with ``--config.check``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import uvloop

from certpager.cli import plural
from certpager.errors import ConfigError
from certpager.logs import setup_logging
from certpager.runtime import tune_gc
from certpager.web import ServerLimits, add_server_flags, listen_address_problem, serve, server_limits
from exporter.config import Config, load

DEFAULT_CONFIG = "certpager-exporter.yml"
DEFAULT_LISTEN = ":9879"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the exporter's flags (Prometheus-style dotted names)."""
    parser.add_argument("--config.file", dest="config_file", default=DEFAULT_CONFIG,
                        help=f"exporter config file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--config.check", dest="config_check", action="store_true",
                        help="validate the config and its target files, print a summary and exit")
    parser.add_argument("--web.listen-address", dest="listen_address", default=DEFAULT_LISTEN,
                        help=f"address to listen on (default: {DEFAULT_LISTEN})")
    add_server_flags(parser)
    parser.add_argument("--log.level", dest="log_level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])


def run(args: argparse.Namespace) -> int:
    """Entry point of the subcommand; returns the exit code."""
    setup_logging(args.log_level, args.log_format)
    if args.config_check:
        return check_config(Path(args.config_file), sys.stdout, sys.stderr)
    if problem := listen_address_problem(args.listen_address):
        print(problem, file=sys.stderr)
        return 2
    tune_gc()
    # uvloop: the event loop's own work (sockets, timers, callbacks) in C, as in the bridge.
    return uvloop.run(serve_config(Path(args.config_file), args.listen_address, limits=server_limits(args)))


async def serve_config(
    config_file: Path, address: str, *, stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None, limits: ServerLimits | None = None,
) -> int:
    """Run the exporter from ``config_file`` on ``address`` until SIGTERM/SIGINT or ``stop`` (the demo runs it)."""
    # Imported here so --config.check stays light (no HTTP server, no probe engine).
    from exporter.app import Exporter
    from exporter.web import create_app

    try:
        exporter = Exporter(config_file)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"error loading config: {line}", file=sys.stderr)
        return 1
    stop = stop or asyncio.Event()
    exporter.tasks.on_failure(lambda _reason: stop.set())  # a background task gave up: exit 1, be restarted
    await serve(create_app(exporter), address, limits=limits, reload=exporter.reload, stop=stop, started=started)
    return 1 if exporter.tasks.failed else 0


def check_config(path: Path, out: TextIO, err: TextIO) -> int:
    """Validate ``path`` and the target files it names; 0 if valid, 1 with the errors otherwise."""
    try:
        config = load(path)
        config.web.auth.credentials(key="web.auth", config_path=path)  # the secret files, read as a start would
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"FAILED: {line}", file=err)
        return 1
    from exporter.targets import TargetFileWatcher, resolve_targets

    messages: list[str] = []
    watcher = TargetFileWatcher(config.target_files, base_dir=path.parent, clock=lambda: 0.0,
                                on_error=messages.append)
    watcher.poll(force=True)
    targets, warnings = resolve_targets(config, watcher.groups())
    for warning in warnings:
        print(f"WARNING: {warning}", file=err)
    for message in messages:
        for line in message.splitlines():
            print(f"FAILED: {line}", file=err)
    if messages:
        return 1
    print(_summary(path, config, len(watcher.file_status()), len(targets)), file=out)
    return 0


def _summary(path: Path, config: Config, files: int, targets: int) -> str:
    return (
        f"{path}: OK: {plural(len(config.all_modules), 'module')}, {plural(len(config.targets), 'static target')}, "
        f"{plural(len(config.target_files), 'target_files entry', 'target_files entries')} "
        f"({plural(files, 'file')}), {plural(targets, 'target')} in total"
    )

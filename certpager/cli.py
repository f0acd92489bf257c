"""The ``certpager`` command: dispatches to the subcommand's module.

Each subcommand lives in the package it belongs to and exposes two functions:
``configure(parser: argparse.ArgumentParser) -> None`` and ``run(args: argparse.Namespace) -> int``.
Only the chosen subcommand's module is imported, so the exporter never loads the bridge and back.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from certpager import __version__


class Command(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


# name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "exporter": ("exporter.cli", "run the TLS certificate exporter"),
    "probe": ("exporter.probe_cli", "probe one endpoint and print its chain, trust and policy verdicts"),
    "bridge": ("bridge.cli", "run the Alertmanager to PagerDuty/Statuspage bridge"),
    "history": ("bridge.history", "every decision the bridge made about a certificate, in order (did we page?)"),
    "report": ("bridge.report", "incident analytics from the bridge's store: MTTA, MTTR, on-call burden"),
    "demo": ("certpager.demo", "start demo TLS endpoints, the exporter and the bridge, all on loopback"),
}


def _load(name: str) -> Command:
    return cast(Command, importlib.import_module(COMMANDS[name][0]))


DESCRIPTION = """\
certpager watches TLS certificates and pages your on-call rota before they break: an exporter that
probes endpoints and certificate files for Prometheus, a bridge from Alertmanager to PagerDuty and
Statuspage, and the same probe for a person at a terminal."""

EPILOG = """\
examples:
  certpager probe example.com:443                    check one endpoint now
  certpager exporter --config.file exporter.yml      serve /metrics and /probe on :9879
  certpager bridge --config.file bridge.yml          receive Alertmanager webhooks on :9880
  certpager history --certificate example.com        did we page for it, and why (not)?
  certpager report --since 30d                       MTTA, MTTR and on-call burden of the last 30 days
  certpager demo                                     everything on loopback, with generated certificates

Run 'certpager COMMAND --help' for the options of a command."""


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 day``, ``2 days``, ``0 days`` (``words`` when adding an s is not the plural)."""
    return f"{count} {word if count == 1 else words or word + 's'}"


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certpager", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"certpager {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for name, (_, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            _load(name).configure(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(args_list)
    return _load(args.command).run(args)


if __name__ == "__main__":
    raise SystemExit(main())

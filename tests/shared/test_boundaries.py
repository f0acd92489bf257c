"""Architecture boundaries that DESIGN.md section 6 fixes: exporter and bridge never import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from certpager.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


def imported_top_levels(package: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update((str(path.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


@pytest.mark.parametrize(("package", "forbidden"), [("exporter", "bridge"), ("bridge", "exporter")])
def test_services_do_not_import_each_other(package: str, forbidden: str) -> None:
    offenders = sorted(path for path, mod in imported_top_levels(package) if mod == forbidden)
    assert offenders == []


def test_shared_package_imports_services_only_from_cli_and_demo() -> None:
    allowed = {"certpager/cli.py", "certpager/demo.py"}
    offenders = sorted(
        path for path, mod in imported_top_levels("certpager") if mod in {"exporter", "bridge"} and path not in allowed
    )
    assert offenders == []


@pytest.mark.parametrize("argv", [*(["certpager", name] for name in COMMANDS), ["exporter"], ["bridge"]])
def test_every_command_starts_in_a_fresh_interpreter(argv: list[str]) -> None:
    # The test process has imported everything in some order already; a command imports in its own, where
    # an import cycle shows (`certpager probe` once died on one: trust -> probes -> tls -> certs -> trust).
    done = subprocess.run([sys.executable, "-m", *argv, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert "usage:" in done.stdout

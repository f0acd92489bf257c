"""`certpager exporter --config.check` and the command's argument handling."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import check_config
from tests.exporter.service_fixtures import write

DEPLOY_EXAMPLE = Path(__file__).parents[2] / "deploy" / "exporter" / "certpager-exporter.yml"


def run_check(path):
    out, err = io.StringIO(), io.StringIO()
    code = check_config(Path(path), out, err)
    return code, out.getvalue(), err.getvalue()


def test_check_valid_config_prints_summary(tmp_path):
    write(tmp_path / "sd" / "a.yml", "- targets: [x.test:443, y.test:443]\n")
    path = write(tmp_path / "c.yml", "modules: {quick: {timeout: 2s}}\ntargets: [{target: a.test:443}]\n"
                                     "target_files: [{files: [sd/*.yml]}]\n")
    code, out, err = run_check(path)
    assert (code, err) == (0, "")
    assert out == (f"{path}: OK: 2 modules, 1 static target, 1 target_files entry (1 file), "
                   "3 targets in total\n")


def test_check_invalid_config_names_file_key_and_expectation(tmp_path):
    path = write(tmp_path / "c.yml", "global: {scrape_interval: soon}\n")
    code, out, err = run_check(path)
    assert (code, out) == (1, "")
    assert err == f"FAILED: {path}: global.scrape_interval: expected a duration like 30s, 5m, 7d\n"


def test_check_reports_broken_target_file(tmp_path):
    write(tmp_path / "sd" / "a.json", "[{\"targets\": [\"x.test:443\"], \"labels\": {\"target\": \"x\"}}]")
    path = write(tmp_path / "c.yml", "target_files: [{files: [sd/*.json]}]\n")
    code, out, err = run_check(path)
    assert (code, out) == (1, "")
    assert err.startswith(f"FAILED: {tmp_path / 'sd' / 'a.json'}: [0].labels: label name 'target' is reserved")


def test_check_warns_about_duplicate_targets(tmp_path):
    write(tmp_path / "a.yml", "- targets: [a.test:443]\n")
    path = write(tmp_path / "c.yml", "targets: [{target: a.test:443}]\ntarget_files: [{files: [a.yml]}]\n")
    code, _, err = run_check(path)
    assert code == 0
    assert "WARNING: " in err and "'a.test:443' is already defined by config" in err


def test_command_line_check_exit_codes(tmp_path):
    good = subprocess.run([sys.executable, "-m", "certpager", "exporter", "--config.check", "--config.file",
                           str(DEPLOY_EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert ": OK: 6 modules, 4 static targets" in good.stdout
    bad_path = write(tmp_path / "bad.yml", "modules: {m: {kind: carrier-pigeon}}\n")
    bad = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(bad_path)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert f"{bad_path}: modules.m.kind: Input should be 'tls', 'starttls' or 'file'" in bad.stderr


def test_bad_listen_address_and_missing_config_fail_fast(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(tmp_path / "none.yml"),
                          "--web.listen-address", "nowhere"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "--web.listen-address: expected a listen address like :9879" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(tmp_path / "none.yml"),
                              "--web.listen-address", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert f"error loading config: {tmp_path / 'none.yml'}: cannot read file" in missing.stderr


def test_certpager_help_speaks_to_users(capsys):
    from certpager import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and "dispatches" not in text and "module" not in text  # not the docstring
    assert "certpager watches TLS certificates" in text
    assert "certpager probe example.com:443" in text and "certpager COMMAND --help" in text



@pytest.mark.parametrize(("content", "expected"), [
    ("- targets: ['']\n- targets: [a.test:443]\n  labels: {target: x}\n- {}\n", [
        "[0].targets: targets must be non-empty strings",
        "[1].labels: label name 'target' is reserved for the exporter's own labels",
        "[2].targets: required key is missing",
    ]),
    ("- targets: [a.test:443]\n  labels: {n: " + "9" * 5000 + "}\n",
     ["invalid YAML: line 2, column 15: integer with too many digits"]),
    ("x: " + "[" * 1000 + "]" * 1000 + "\n", ["invalid YAML: nested too deeply"]),
    ("- targets: [a.test:443]\n  targets: [b.test:443]\n", ["invalid YAML: line 2, column 3: duplicate key 'targets'"]),
])
def test_check_reports_every_target_file_problem_on_its_own_line(tmp_path, content, expected):
    sd = write(tmp_path / "sd" / "a.yml", content)
    path = write(tmp_path / "c.yml", "target_files: [{files: [sd/*.yml]}]\n")
    code, out, err = run_check(path)
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"FAILED: {sd}: {line}" for line in expected]

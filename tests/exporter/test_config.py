"""Config loading: one invalid file per error (blackbox's TestLoadBadConfigs), plus the good paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from certpager.errors import ConfigError
from exporter.config import DEFAULT_THRESHOLDS, load

DEPLOY_EXAMPLE = Path(__file__).parents[2] / "deploy" / "exporter" / "certpager-exporter.yml"

TESTDATA = Path(__file__).parent / "testdata"

# file -> the message after "<file>: " (key path and expectation)
BAD_CONFIGS = {
    "invalid-unknown-top-key.yml": "scrape_interval: unknown key",
    "invalid-unknown-module-key.yml": "modules.tls_fast.timout: unknown key",
    "invalid-bad-duration.yml": "global.scrape_interval: expected a duration like 30s, 5m, 7d",
    "invalid-zero-interval.yml": "global.scrape_interval: expected a duration greater than 0",
    "invalid-zero-timeout.yml": "modules.fast.timeout: expected a duration greater than 0",
    "invalid-bad-kind.yml": "modules.m.kind: Input should be 'tls', 'starttls' or 'file'",
    "invalid-starttls-missing.yml": "modules.smtp: kind starttls needs a starttls: {protocol: ...} section",
    "invalid-starttls-bad-protocol.yml": "modules.smtp.starttls.protocol: Input should be 'smtp', 'lmtp'",
    "invalid-starttls-on-tls.yml": "modules.m: starttls settings given for kind tls",
    "invalid-client-cert-without-key.yml": "modules.m.tls: cert_file and key_file must be set together",
    "invalid-tls-versions-inverted.yml": "modules.m.tls: min_version TLS1.3 is above max_version TLS1.2",
    "invalid-bad-tls-version.yml": (
        "modules.m.tls.min_version: Input should be 'TLS1.0', 'TLS1.1', 'TLS1.2' or 'TLS1.3'"),
    "invalid-proxy-not-http.yml": "modules.m.proxy.url: expected an http://host:port proxy URL (HTTP CONNECT)",
    "invalid-bad-source-ip.yml": "modules.m.source_ip_address: '10.0.0.300' does not appear to be an IPv4 or IPv6",
    "invalid-bad-ip-protocol.yml": "modules.m.ip_protocol: Input should be 'ip4' or 'ip6'",
    "invalid-unknown-target-module.yml": "targets[0].module: unknown module 'smtp'",
    "invalid-duplicate-target.yml": "targets[1].target: duplicate target 'a.example.com:443' (names must be unique)",
    "invalid-target-without-port.yml": "targets[0].target: expected host:port or [ipv6]:port, got 'a.example.com'",
    "invalid-target-bad-port.yml": "targets[0].target: expected host:port or [ipv6]:port, got 'a.example.com:99999'",
    "invalid-target-ipv6-without-brackets.yml": "targets[0].target: IPv6 addresses need brackets: [addr]:port",
    "invalid-target-bad-address.yml": "targets[0].address: expected host:port or [ipv6]:port, got '127.0.0.1'",
    "invalid-target-missing.yml": "targets[0].target: required key is missing",
    "invalid-reserved-label.yml": "targets[0].labels: label name 'target' is reserved for the exporter's own labels",
    "invalid-bad-label-name.yml": "targets[0].labels: label name 'team-name' is not a valid Prometheus label name",
    "invalid-label-not-string.yml": "targets[0].labels.team: Input should be a valid string",
    "invalid-bad-threshold.yml": "thresholds.certificate_expiring_30_days: expected a duration like 30s, 5m, 7d",
    "invalid-unknown-threshold-class.yml": "thresholds.certificate_expiring_1_day: unknown key",
    "invalid-target-unknown-threshold-class.yml": "targets[0].thresholds.certificate_expiring_14_days: unknown key",
    "invalid-threshold-group-bad-label.yml": "threshold_groups[0].match: label name '__name__' is not a valid",
    "invalid-target-files-empty.yml": "target_files[0].files: List should have at least 1 item",
    "invalid-target-files-unknown-module.yml": "target_files[0].module: unknown module 'smtp'",
    "invalid-target-files-zero-refresh.yml": "target_files[0].refresh_interval: expected a duration greater than 0",
    "invalid-concurrency-zero.yml": "global.concurrency: Input should be greater than or equal to 1",
    "invalid-jitter-too-big.yml": "global.jitter: Input should be less than or equal to 1",
    "invalid-policy-unknown-key.yml": "policies.min_dsa_bits: unknown key",
    "invalid-policy-bad-type.yml": "policies.min_rsa_bits: Input should be a valid integer",
    "invalid-metrics-unknown-key.yml": "metrics.cert_info_serial: unknown key",
    "invalid-duplicate-key.yml": "invalid YAML: line 3, column 1: duplicate key 'global'",
    "invalid-yaml-syntax.yml": "invalid YAML: line 3, column 1: while parsing a flow sequence; expected ',' or ']'",
    "invalid-top-level-list.yml": "expected a mapping at the top level",
}


def test_every_invalid_file_has_an_expected_message():
    assert sorted(p.name for p in TESTDATA.glob("invalid-*.yml")) == sorted(BAD_CONFIGS)


@pytest.mark.parametrize(("name", "message"), sorted(BAD_CONFIGS.items()))
def test_load_bad_configs(name, message):
    path = TESTDATA / name
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path / "nope.yml")
    assert str(err.value) == f"{tmp_path / 'nope.yml'}: cannot read file: No such file or directory"


def test_empty_file_is_all_defaults(tmp_path):
    path = tmp_path / "empty.yml"
    path.write_text("")
    config = load(path)
    assert config.targets == [] and list(config.all_modules) == ["tls"]
    assert config.global_.scrape_interval == 300.0
    assert config.thresholds.as_dict() == dict(DEFAULT_THRESHOLDS)


def test_ipv6_and_file_targets_are_accepted(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(
        "modules:\n  files: {kind: file}\n"
        "targets:\n  - target: '[::1]:443'\n  - target: /etc/ssl/certs/*.pem\n    module: files\n"
    )
    config = load(path)
    assert [t.target for t in config.targets] == ["[::1]:443", "/etc/ssl/certs/*.pem"]


def test_deploy_example_is_valid():
    config = load(DEPLOY_EXAMPLE)
    assert config.targets and config.target_files and config.modules


@pytest.mark.parametrize(("text", "message"), [
    ("global: {scrape_interval: 0}\n", "global.scrape_interval: expected a duration greater than 0"),
    ("global: {retry_backoff: 0}\n", "global.retry_backoff: expected a duration greater than 0"),
    ("global: {scrape_interval: -5}\n", "global.scrape_interval: expected a non-negative duration"),
    ("global: {scrape_interval: .inf}\n", "global.scrape_interval: expected a finite duration"),
    ("global: {scrape_interval: .nan}\n", "global.scrape_interval: expected a finite duration"),
    ("global: {jitter: .nan}\n", "global.jitter: "),
    ("global: {scrape_interval: " + "9" * 400 + "}\n", "global.scrape_interval: expected a duration of at most"),
    ("global: {scrape_interval: -" + "9" * 400 + "}\n", "global.scrape_interval: expected a non-negative duration"),
    ("global: {scrape_interval: '" + "9" * 300 + "s'}\n", "global.scrape_interval: expected a duration of at most"),
    ("global: {concurrency: " + "9" * 5000 + "}\n", "invalid YAML: line 1, column 23: integer with too many digits"),
    ("modules: {m: {timeout: .inf}}\n", "modules.m.timeout: expected a finite duration"),
    ("modules: {m: {timeout: 2h}}\n", "modules.m.timeout: expected a duration of at most 1h"),
    ("modules: {m: {proxy: {url: 'http://proxy:99999'}}}\n", "modules.m.proxy.url: expected an http://host:port"),
    ("modules: {m: {proxy: {url: 'http://proxy:8a'}}}\n", "modules.m.proxy.url: expected an http://host:port"),
    ("modules: {m: {tls: {server_name: \"a\\r\\nb\"}}}\n", "modules.m.tls.server_name: expected a host name"),
    ("modules: {m: {kind: starttls, starttls: {protocol: smtp, hello_name: \"a\\nMAIL FROM\"}}}\n",
     "modules.m.starttls.hello_name: expected a host name"),
    ("policies: {min_rsa_bits: -1}\n", "policies.min_rsa_bits: Input should be greater than or equal to 1"),
    ("policies: {max_validity_days: -1}\n", "policies.max_validity_days: Input should be greater than or equal to 1"),
    ("x: " + "[" * 1000 + "]" * 1000 + "\n", "invalid YAML: nested too deeply"),
    (b"global: {scrape_interval: \xff}\n", "invalid YAML: line 1: not valid UTF-8"),
])
def test_refused_at_load_what_breaks_at_run_time(tmp_path, text, message):
    path = tmp_path / "c.yml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file", "key_password_file"])
def test_files_a_module_reads_must_be_readable_at_load(tmp_path, key):
    present = tmp_path / "present.pem"
    present.write_text("x\n")
    files = {"cert_file": present, "key_file": present, key: tmp_path / "typo.pem"}
    tls = ", ".join(f"{k}: {v}" for k, v in files.items())
    path = tmp_path / "c.yml"
    path.write_text(f"modules: {{m: {{tls: {{{tls}}}}}}}\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    typo = tmp_path / "typo.pem"
    assert str(err.value) == f"{path}: modules.m.tls.{key}: cannot read {typo}: No such file or directory"
    (tmp_path / "typo.pem").write_text("x\n")
    assert load(path).modules["m"].tls.ca_file in (None, tmp_path / "typo.pem")


def test_every_bad_target_is_reported_on_its_own_line(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("targets: [{target: a}, {target: 'b:1', module: nope}, {target: c}]\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).splitlines() == [
        f"{path}: targets[0].target: expected host:port or [ipv6]:port, got 'a'",
        f"{path}: targets[1].module: unknown module 'nope'",
        f"{path}: targets[2].target: expected host:port or [ipv6]:port, got 'c'",
    ]


@pytest.mark.parametrize("text", [
    "global:\n  scrape_interval: 5m\n password: hunter2-secret\n",  # bad indentation on the secret's line
    "global: {scrape_interval: 'hunter2-secret\n",
    "global:\n\tpassword: hunter2-secret\n",
    "routes:\n  hunter2secret0123456789abcdef: a\n  hunter2secret0123456789abcdef: b\n",  # a duplicated key
])
def test_yaml_errors_give_line_and_column_never_the_line(tmp_path, text):
    path = tmp_path / "c.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: invalid YAML: line "), str(err.value)
    assert "hunter2" not in str(err.value)

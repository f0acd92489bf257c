"""Bridge config: one invalid file per error with its exact message, secrets, $VAR, *_file, rotation."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml

from bridge.app import ConfigHolder
from bridge.config import DEFAULT_EVENTS_URL, KNOWN_CLASSES, BridgeConfig, load
from bridge.decisions import Policy
from bridge.events import Severity
from certpager.errors import ConfigError

TESTDATA = Path(__file__).parent / "testdata"
REPO = Path(__file__).parents[2]
KEY_A = "A" * 32
KEY_B = "B" * 32
KEY_EXPECTED = "expected a 32-character PagerDuty integration key (letters and digits)"
CLASSES = ("certificate_expired, certificate_expiring_7_days, certificate_expiring_30_days, policy_violation, "
           "renewal_failed, deployment_failed, probe_failed, verify_failed")

INVALID = {
    "invalid-unknown-key.yml": "integrations.pagerduty.routing_kye: unknown key",
    "invalid-routing-key.yml": f"integrations.pagerduty.routing_key: {KEY_EXPECTED}",
    "invalid-routing-key-per-env.yml": f"integrations.pagerduty.routing_keys.production: {KEY_EXPECTED}",
    "invalid-bad-key-in-file.yml": f"integrations.pagerduty.routing_key_file: {KEY_EXPECTED}",
    "invalid-both-key-sources.yml": "integrations.pagerduty: routing_key and routing_key_file are mutually exclusive",
    "invalid-env-in-both.yml":
        "integrations.pagerduty: environment 'production' is in both routing_keys and routing_key_files",
    "invalid-severity.yml": "integrations.pagerduty.severity_mapping.certificate_expired: "
        "Input should be 'critical', 'error', 'warning' or 'info'",
    "invalid-class-name.yml": "integrations.pagerduty.severity_mapping: "
        f"unknown alert class 'certificate expired' in severity_mapping: expected one of {CLASSES}",
    "invalid-unknown-class.yml": "integrations.pagerduty.severity_mapping: "
        f"unknown alert class 'verify_faild' in severity_mapping: expected one of {CLASSES}",
    "invalid-unknown-correlation-class.yml":
        f"grouping.correlation: unknown alert class 'renewal_faild' in correlation: expected one of {CLASSES}",
    "invalid-secret-as-class.yml": "integrations.pagerduty.severity_mapping: "
        f"unknown alert class '<hidden key>' in severity_mapping: expected one of {CLASSES}",
    "invalid-secret-as-key.yml": f"integrations.pagerduty.routing_keys.<hidden key>: {KEY_EXPECTED}",
    "invalid-sweep-zero.yml": "outbox.sweep_interval: expected a duration of at least 100ms",
    "invalid-retry-inf.yml": "outbox.retry_initial: expected a finite duration\n{path}: outbox.retry_max: "
        "expected a finite duration",
    "invalid-link-typo.yml": "links.runbook: unknown placeholder '{{ lables.class }}': "
        "expected {{ labels.NAME }} or {{ annotations.NAME }}",
    "invalid-link-unclosed.yml": "links.dashboard: '{{' without a closing '}}'",
    "invalid-duration-secret.yml": "store.retention: expected a duration like 30s, 5m, 7d",
    "invalid-reload-mode.yml": "server.reload: Input should be 'authenticated', 'open' or 'disabled'",
    "invalid-events-url.yml": "integrations.pagerduty.events_url: expected an http:// or https:// base URL",
    "invalid-statuspage-token.yml": "integrations.statuspage: api_token and api_token_file are mutually exclusive",
    "invalid-component-map.yml": 'integrations.statuspage.component_map: '
        'expected a mapping or a JSON object like {"Gateway API": "<component id>"}',
    "invalid-statuspage-template.yml": "integrations.statuspage.templates.name: unknown placeholder {{ service }} "
        "(known: certificate, class, environment, services, severity, labels.NAME, annotations.NAME)",
    "invalid-component-id.yml": "integrations.statuspage.component_map: "
        "service 'Gateway API': expected a Statuspage component id (letters and digits)",
    "invalid-component-map-file.yml": "integrations.statuspage.component_map_file: "
        f"{TESTDATA / 'bad-component-map.json'}: "
        'expected a mapping or a JSON object like {"Gateway API": "<component id>"}',
    "invalid-component-status.yml": "integrations.statuspage.component_status: "
        "needs a component status for every severity; missing error, warning, info",
    "invalid-grouping-type.yml": "grouping.type: Input should be 'intelligent' or 'none'",
    "invalid-automation-action.yml": "automation.certificate_expired.actions: unknown action 'reboot_everything' "
        "(actions: trigger_renewal)",
    "invalid-action-template.yml": "actions.notify_stakeholders: text: unknown placeholder {{ certficate }} (known: "
        "action, certificate, class, dashboard_url, environment, issuer, key, members, runbook_url, services, "
        "severity, status, summary, labels.NAME, annotations.NAME)",
    "invalid-action-body-template.yml": "actions.trigger_renewal: body.issuer: unbalanced {{ or }}: a placeholder is "
        "written {{ name }}",
    "invalid-action-postmortem.yml": "actions.create_postmortem: a postmortem action needs exactly one of directory "
        "(write a file) and url (POST it)",
    "invalid-listen-address.yml": "server.listen_address: expected a listen address like :9880 or 127.0.0.1:9880",
    "invalid-basic-auth.yml": "server.auth.basic_auth: password or password_file is required",
    "invalid-max-body.yml": "server.max_body_bytes: Input should be greater than or equal to 1024",
    "invalid-store-url-password.yml":
        "store: the URL carries a password already: drop it or drop password/password_file",
    "invalid-store-url-scheme.yml": "store.url: expected a postgresql:// URL",
    "invalid-store-password-without-url.yml":
        "store: password and password_file are for PostgreSQL: set store.url too",
    "invalid-retry.yml": "outbox: need 0 < retry_initial <= retry_max",
    "invalid-link-template.yml": "links.dashboard: expected an http:// or https:// URL template",
    "invalid-unset-variable.yml":
        "integrations.pagerduty.routing_key: environment variable $CERTPAGER_TEST_UNSET_VARIABLE is not set",
    "invalid-missing-secret-file.yml": f"server.auth.bearer_token_file: cannot read secret file "
        f"{TESTDATA / 'does-not-exist.token'}: No such file or directory",
}
SECRETS_IN_TESTDATA = ("SECRETVALUE", "SHORTSECRET", "SECRET-in-file")


def test_every_invalid_file_has_an_expectation():
    assert sorted(p.name for p in TESTDATA.glob("invalid-*.yml")) == sorted(INVALID)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_config_names_file_key_and_expectation(name):
    path = TESTDATA / name
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(info.value) == f"{path}: {INVALID[name]}".replace("{path}", str(path))
    for secret in SECRETS_IN_TESTDATA:
        assert secret not in str(info.value)


def test_defaults(tmp_path):
    path = tmp_path / "bridge.yml"
    path.write_text("")
    loaded = load(path, env={})
    pd = loaded.config.integrations.pagerduty
    assert (pd.events_url, pd.default_severity, pd.rate_limit_per_minute) == (DEFAULT_EVENTS_URL, Severity.ERROR, 120)
    assert loaded.config.server.listen_address == ":9880"
    assert loaded.config.store.path == Path("certpager-bridge.db")
    assert not loaded.secrets.has_pagerduty


def test_env_expansion_and_file_secrets(tmp_path):
    (tmp_path / "staging.key").write_text(KEY_B + "\n")
    (tmp_path / "token").write_text("s3cret-token\n")
    path = tmp_path / "bridge.yml"
    path.write_text(
        "integrations:\n  pagerduty:\n    routing_key: $PD_KEY\n    routing_key_files: {staging: staging.key}\n"
        "    events_url: http://127.0.0.1:1/\nserver:\n  auth:\n    bearer_token_file: token\n"
        "    basic_auth: {username: am, password: '${AM_PASS}$$'}\n"
    )
    loaded = load(path, env={"PD_KEY": KEY_A, "AM_PASS": "pw"})
    secrets = loaded.secrets
    assert secrets.routing_key_for("production") == KEY_A  # no own key: the default
    assert secrets.routing_key_for("staging") == KEY_B
    assert (secrets.bearer_token, secrets.basic_password) == ("s3cret-token", "pw$")
    assert loaded.config.integrations.pagerduty.events_url == "http://127.0.0.1:1"
    for text in (repr(loaded), repr(secrets), str(loaded.config)):
        assert KEY_A not in text and KEY_B not in text and "s3cret" not in text


def test_postgresql_store_password_from_a_file_or_the_environment(tmp_path):
    (tmp_path / "pg.password").write_text("pg-SECRET-in-file\n")
    path = tmp_path / "bridge.yml"
    url = "postgresql://certpager@db.example:5432/certpager"
    path.write_text(f"store:\n  url: {url}\n  password_file: pg.password\n  pool_size: 4\n")
    loaded = load(path, env={})
    assert (loaded.config.store.url.get_secret_value(), loaded.config.store.pool_size) == (url, 4)
    assert loaded.secrets.store_password == "pg-SECRET-in-file"
    path.write_text(f"store:\n  url: {url}\n  password: $PGPASS\n")
    loaded = load(path, env={"PGPASS": "pg-SECRET-env"})
    assert loaded.secrets.store_password == "pg-SECRET-env"
    for text in (repr(loaded), repr(loaded.secrets), str(loaded.config)):
        assert "pg-SECRET" not in text
    # A Secret holding the whole URL (as PostgreSQL operators generate them) works too, and is never shown.
    path.write_text("store:\n  url: $PG_URL\n")
    loaded = load(path, env={"PG_URL": "postgresql://certpager:pg-SECRET-url@db.example/certpager"})
    assert "pg-SECRET" not in repr(loaded) + str(loaded.config)


def test_reload_rereads_secret_files_and_keeps_the_old_config_on_error(tmp_path, caplog):
    key_file = tmp_path / "pd.key"
    key_file.write_text(KEY_A)
    path = tmp_path / "bridge.yml"
    path.write_text("integrations:\n  pagerduty:\n    routing_key_file: pd.key\n")
    holder = ConfigHolder(load(path, env={}), loader=lambda: load(path, env={}))
    assert holder.routing_key_for("production") == KEY_A
    key_file.write_text(KEY_B)  # rotation: same config, new file content
    holder.reload()
    assert holder.routing_key_for("production") == KEY_B
    key_file.write_text("SECRET-but-malformed")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError, match=re.escape(f"routing_key_file: {KEY_EXPECTED}")):
        holder.reload()
    assert holder.routing_key_for("production") == KEY_B
    assert "SECRET-but-malformed" not in caplog.text


def test_example_config_in_deploy_is_valid():
    loaded = load(REPO / "deploy" / "bridge" / "certpager-bridge.yml", env={})
    assert loaded.config.integrations.pagerduty.severity_mapping == {}  # the rules' severity label decides
    assert not loaded.secrets.has_pagerduty  # ships in dry-run mode


def shipped_bridge_configs() -> dict[str, BridgeConfig]:
    """Every bridge config the project ships: the example, the Kustomize base and overlay, the chart's values."""
    configs = {}
    for path in (REPO / "deploy" / "bridge" / "certpager-bridge.yml", REPO / "deploy" / "kubernetes" / "base" /
                 "bridge.yml", REPO / "deploy" / "kubernetes" / "overlays" / "postgresql" / "bridge.yml"):
        data = yaml.safe_load(path.read_text())
        data.pop("store", None)  # the store (a $VAR URL in the overlay) has nothing to do with severity
        configs[str(path.relative_to(REPO))] = BridgeConfig.model_validate(data)
    values = yaml.safe_load((REPO / "deploy" / "helm" / "certpager" / "values.yaml").read_text())
    configs["deploy/helm/certpager/values.yaml"] = BridgeConfig.model_validate(values["bridge"]["config"])
    return configs


def test_severity_has_one_source_of_truth_the_rules():
    """Every class of rules/ reaches PagerDuty with the severity the rule gives it, whichever shipped config."""
    rules = yaml.safe_load((REPO / "rules" / "certpager.rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r and "class" in r.get("labels", {})]
    assert {a["labels"]["class"] for a in alerts} == set(KNOWN_CLASSES)  # the bridge knows every class, no more
    for name, config in shipped_bridge_configs().items():
        policy = Policy.from_config(config)
        for rule in alerts:
            labels = rule["labels"]
            assert policy.severity_for(labels["class"], labels).value == labels["severity"], (name, rule["alert"])


def test_statuspage_token_and_component_map_from_files_and_variables(tmp_path):
    (tmp_path / "sp.token").write_text("sp-SECRETVALUE\n")
    (tmp_path / "map.json").write_text('{"Gateway API": "gw0000000001", "Web": "web000000001"}')
    path = tmp_path / "bridge.yml"
    path.write_text("integrations:\n  statuspage:\n    api_token_file: sp.token\n    page_id: $SP_PAGE\n"
                    "    component_map_file: map.json\n")
    loaded = load(path, env={"SP_PAGE": "page01"})
    assert loaded.secrets.statuspage_token == "sp-SECRETVALUE"
    assert dict(loaded.secrets.component_map) == {"Gateway API": "gw0000000001", "Web": "web000000001"}
    assert "SECRETVALUE" not in repr(loaded)
    holder = ConfigHolder(loaded, loader=lambda: load(path, env={"SP_PAGE": "page01"}))
    (tmp_path / "map.json").write_text('{"Web": "web000000002"}')  # the map is read again on reload
    holder.reload()
    assert dict(holder.statuspage_settings().component_map) == {"Web": "web000000002"}
    path.write_text("integrations:\n  statuspage:\n    page_id: page01\n    component_map: $SP_MAP\n")
    env = {"SP_MAP": '{"Gateway API": "gw0000000001"}'}
    assert dict(load(path, env=env).secrets.component_map) == {"Gateway API": "gw0000000001"}
    assert load(path, env=env).secrets.statuspage_token is None  # no token: dry-run


def test_empty_sections_mean_defaults(tmp_path):
    path = tmp_path / "bridge.yml"
    path.write_text("server:\n  auth:\nstore:\n")
    assert load(path, env={}).config.server.auth.bearer_token is None


def test_a_reload_applies_the_statuspage_map_and_says_what_needs_a_restart(tmp_path, caplog):
    path = tmp_path / "bridge.yml"
    path.write_text("integrations:\n  statuspage:\n    page_id: page01\n    component_map: {Web: web000000001}\n")
    holder = ConfigHolder(load(path, env={}), loader=lambda: load(path, env={}))
    path.write_text("integrations:\n  statuspage:\n    page_id: page01\n    component_map: {Web: web000000002}\n"
                    "    requests_per_second: 2\n")
    caplog.set_level(logging.WARNING)
    holder.reload()
    assert dict(holder.statuspage_settings().component_map) == {"Web": "web000000002"}  # applied
    restart = [r.kv["key"] for r in caplog.records if hasattr(r, "kv")]  # type: ignore[attr-defined]
    assert restart == ["integrations.statuspage (present, api_url, requests_per_second)"]
    path.write_text("integrations: {}\n")  # the section removed: the running sink keeps its last settings
    holder.reload()
    assert dict(holder.statuspage_settings().component_map) == {"Web": "web000000002"}

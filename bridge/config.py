"""The bridge's config schema (DESIGN.md section 4) and its loading with secrets resolved.

Every model is strict (unknown keys are errors) and frozen. Secrets are ``SecretStr`` and every one has
a ``*_file`` variant; files are read by :func:`load` (relative paths from the config file's directory)
and read again on every reload, so a key is rotated by rewriting its file and sending SIGHUP.
See docs/bridge.md for the user-facing reference; keep both in step.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import time as dt_time
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from bridge.events import Severity
from bridge.keys import CLASS_SHORT
from bridge.templates import DEFAULT_TEMPLATES, template_problem
from bridge.workhours import WEEKDAYS, WorkingHours
from certpager.config import Duration, StrictModel, load_config, read_secret_file, shown_key
from certpager.errors import ConfigError

DEFAULT_EVENTS_URL = "https://events.pagerduty.com"
DEFAULT_API_URL = "https://api.pagerduty.com"
DEFAULT_STATUSPAGE_URL = "https://api.statuspage.io"
STATUSPAGE_ID_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")
COMPONENT_MAP_EXPECTATION = 'expected a mapping or a JSON object like {"Gateway API": "<component id>"}'
ComponentStatus = Literal["degraded_performance", "partial_outage", "major_outage", "under_maintenance"]
DEFAULT_COMPONENT_STATUS: dict[Severity, ComponentStatus] = {
    Severity.CRITICAL: "major_outage",
    Severity.ERROR: "partial_outage",
    Severity.WARNING: "degraded_performance",
    Severity.INFO: "degraded_performance",
}
DEFAULT_LISTEN_ADDRESS = ":9880"
DEFAULT_ROUTE = "default"
ROUTING_KEY_RE = re.compile(r"^[A-Za-z0-9]{32}$")
KEY_EXPECTATION = "expected a 32-character PagerDuty integration key (letters and digits)"
KNOWN_CLASSES: tuple[str, ...] = tuple(CLASS_SHORT)  # the classes rules/ gives its alerts
TEMPLATE_PLACEHOLDER_RE = re.compile(r"\{\{\s*(labels|annotations)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
MIN_SWEEP = 0.1  # seconds; a shorter sweep spins the worker (0 took 86% of a core while idle)
ACTION_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


class Section(StrictModel):
    """A config section; a key left empty in YAML (``auth:`` with everything commented out) means its default."""

    @model_validator(mode="before")
    @classmethod
    def _empty_means_default(cls, data: object) -> object:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


def _check_routing_key(value: SecretStr) -> SecretStr:
    # The message never contains the value: the key is a secret even when it is malformed.
    if not ROUTING_KEY_RE.match(value.get_secret_value()):
        raise ValueError(KEY_EXPECTATION)
    return value


RoutingKey = Annotated[SecretStr, AfterValidator(_check_routing_key)]


def _exclusive(model: object, pairs: tuple[tuple[str, str], ...]) -> None:
    for direct, from_file in pairs:
        if getattr(model, direct) is not None and getattr(model, from_file) is not None:
            raise ValueError(f"{direct} and {from_file} are mutually exclusive")


class Links(Section):
    """URL templates; ``{{ labels.NAME }}`` / ``{{ annotations.NAME }}`` are replaced (URL-quoted)."""

    dashboard: str | None = None
    runbook: str | None = None  # used when the alert has no runbook_url annotation

    @field_validator("dashboard", "runbook")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL template")
        # What is left once the known placeholders are gone must hold no braces: a typo
        # ({{ lables.class }}) or an unclosed {{ would otherwise go out literally in every page.
        rest = TEMPLATE_PLACEHOLDER_RE.sub("", value)
        start = rest.find("{{")
        if start >= 0:
            end = rest.find("}}", start)
            if end < 0:
                raise ValueError("'{{' without a closing '}}'")
            raise ValueError(
                f"unknown placeholder {rest[start : end + 2][:80]!r}: expected {{{{ labels.NAME }}}} or "
                "{{ annotations.NAME }}"
            )
        if "}}" in rest:
            raise ValueError("'}}' without an opening '{{'")
        return value


def check_classes(names: Iterable[str], what: str) -> None:
    """Raise ValueError when ``names`` holds a class no alert of rules/ has (a typo would never match)."""
    unknown = [shown_key(name) for name in names if name not in KNOWN_CLASSES]
    if unknown:
        raise ValueError(
            f"unknown alert class {', '.join(repr(n) for n in unknown)} in {what}: expected one of "
            + ", ".join(KNOWN_CLASSES)
        )


class PagerDutyConfig(Section):
    """PagerDuty: Events API v2 delivery, Webhooks v3 signature secrets and the REST API token."""

    routing_key: RoutingKey | None = None
    routing_key_file: Path | None = None
    routing_keys: dict[str, RoutingKey] = Field(default_factory=dict)  # per environment
    routing_key_files: dict[str, Path] = Field(default_factory=dict)  # per environment, from files
    severity_mapping: dict[str, Severity] = Field(default_factory=dict)  # alert class -> severity
    default_severity: Severity = Severity.ERROR
    services: dict[str, str] = Field(default_factory=dict)  # environment -> PagerDuty service id (later)
    # Webhooks v3 signature secrets: several at once while a subscription's secret rotates.
    webhook_secrets: list[SecretStr] = Field(default_factory=list)
    webhook_secret_file: Path | None = None  # one secret per line
    api_token: SecretStr | None = None  # REST API token: incident look-ups, priority, snooze
    api_token_file: Path | None = None
    api_url: str = DEFAULT_API_URL
    from_email: str | None = None  # REST writes with an account token need a From: user email
    events_url: str = DEFAULT_EVENTS_URL
    rate_limit_per_minute: int = Field(default=120, ge=1, le=1_000_000)
    # A trigger whose resolve is already queued when it could go out (the problem started and ended while
    # PagerDuty was unreachable or rate limited): recorded as a Change Event (never pages), paged anyway,
    # or dropped. Its resolve is sent in every case (harmless without an open alert).
    late_resolved: Literal["change_event", "page", "drop"] = "change_event"

    @field_validator("severity_mapping")
    @classmethod
    def _classes(cls, value: dict[str, Severity]) -> dict[str, Severity]:
        check_classes(value, "severity_mapping")
        return value

    @field_validator("events_url", "api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// base URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _sources(self) -> Self:
        _exclusive(self, (("routing_key", "routing_key_file"), ("api_token", "api_token_file")))
        both = sorted(set(self.routing_keys) & set(self.routing_key_files))
        if both:
            raise ValueError(f"environment {both[0]!r} is in both routing_keys and routing_key_files")
        return self


class StatuspageTemplates(Section):
    """Customer-facing text; ``{{ services }}``, ``{{ certificate }}``, ``{{ environment }}``, ``{{ severity }}``,
    ``{{ class }}``, ``{{ labels.NAME }}`` and ``{{ annotations.NAME }}`` are replaced (see docs/statuspage.md)."""

    name: str = DEFAULT_TEMPLATES["name"]
    body: str = DEFAULT_TEMPLATES["body"]
    update: str = DEFAULT_TEMPLATES["update"]  # posted when an alert joins or leaves an open incident
    resolved: str = DEFAULT_TEMPLATES["resolved"]

    @field_validator("name", "body", "update", "resolved")
    @classmethod
    def _template(cls, value: str) -> str:
        problem = template_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class StatuspageConfig(Section):
    """Atlassian Statuspage: incidents and component status for the alerts customers would notice."""

    api_token: SecretStr | None = None  # neither token: dry-run, the requests are logged and not sent
    api_token_file: Path | None = None
    page_id: str
    api_url: str = DEFAULT_STATUSPAGE_URL
    component_map: dict[str, str] | None = None  # service name -> component id
    component_map_file: Path | None = None  # the same, as a JSON object in a file (read again on reload)
    service_label: str = "service"  # the alert label naming the affected service(s), comma-separated
    min_severity: Severity = Severity.CRITICAL  # alerts below it never reach the status page
    component_status: dict[Severity, ComponentStatus] = Field(default_factory=lambda: dict(DEFAULT_COMPONENT_STATUS))
    templates: StatuspageTemplates = StatuspageTemplates()
    requests_per_second: float = Field(default=1.0, gt=0, le=100)  # Statuspage: 1 request/s per token
    refresh_interval: Duration = 60.0  # how old the bridge's view of open incidents and maintenance may be

    @field_validator("component_map", mode="before")
    @classmethod
    def _json_map(cls, value: object) -> object:
        # Allowed as a JSON string so it can come from one environment variable.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError(COMPONENT_MAP_EXPECTATION) from None
        return value

    @field_validator("component_map")
    @classmethod
    def _component_ids(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            check_component_map(value)
        return value

    @field_validator("page_id")
    @classmethod
    def _page_id(cls, value: str) -> str:
        if not STATUSPAGE_ID_RE.match(value):
            raise ValueError("expected a Statuspage page id (letters and digits)")
        return value

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// base URL")
        return value.rstrip("/")

    @field_validator("component_status")
    @classmethod
    def _statuses(cls, value: dict[Severity, ComponentStatus]) -> dict[Severity, ComponentStatus]:
        missing = [s.value for s in Severity if s not in value]
        if missing:
            raise ValueError(f"needs a component status for every severity; missing {', '.join(missing)}")
        return value

    @model_validator(mode="after")
    def _sources(self) -> Self:
        _exclusive(self, (("api_token", "api_token_file"), ("component_map", "component_map_file")))
        return self


def check_component_map(value: Mapping[str, object]) -> None:
    """Raise ValueError unless ``value`` maps service names to Statuspage component ids."""
    for service, component in value.items():
        if not service.strip():
            raise ValueError("a service name is empty")
        if not isinstance(component, str) or not STATUSPAGE_ID_RE.match(component):
            raise ValueError(f"service {service!r}: expected a Statuspage component id (letters and digits)")


class Integrations(Section):
    pagerduty: PagerDutyConfig = PagerDutyConfig()
    statuspage: StatuspageConfig | None = None


class Grouping(Section):
    """Alert grouping: the correlated classes' alerts sharing ``fields`` are one incident (bridge.decisions)."""

    type: Literal["intelligent", "none"] = "none"
    fields: list[str] = Field(default_factory=lambda: ["environment", "issuer"])
    time_window: Duration = 300.0
    correlation: list[str] = Field(default_factory=list)  # alert classes

    @field_validator("correlation")
    @classmethod
    def _classes(cls, value: list[str]) -> list[str]:
        check_classes(value, "correlation")
        return value


class Automation(Section):
    """Runbook actions for one class: names of ``actions:``, run in order when its incident (or group) opens,
    and ``on_resolve`` when it resolves."""

    actions: list[str] = Field(default_factory=list)
    on_resolve: list[str] = Field(default_factory=list)


class ActionConfig(Section):
    """One named runbook action (``actions.<name>``); which keys apply depends on ``type``."""

    type: Literal["http", "notify", "postmortem", "pagerduty"]
    url: SecretStr | None = None  # http, notify (an incoming-webhook URL is a secret), postmortem (POST)
    url_file: Path | None = None
    method: Literal["POST", "PUT", "PATCH"] = "POST"  # http
    headers: dict[str, str] = Field(default_factory=dict)  # http: plain headers
    header_files: dict[str, Path] = Field(default_factory=dict)  # http: headers whose values are secrets in files
    body: dict[str, object] = Field(default_factory=dict)  # http: JSON body; its strings are templates
    format: Literal["slack", "teams"] = "slack"  # notify
    text: str = "{{ summary }}"  # notify: the message (a template)
    directory: Path | None = None  # postmortem: write the document here (else POST it to url)
    template: str | None = None  # postmortem: Markdown template (default: a postmortem skeleton)
    routing_key: SecretStr | None = None  # pagerduty: the other service's integration key
    routing_key_file: Path | None = None
    severity: Severity = Severity.CRITICAL  # pagerduty
    events_url: str = DEFAULT_EVENTS_URL  # pagerduty
    timeout: Duration = 10.0  # seconds per request

    @model_validator(mode="after")
    def _by_type(self) -> Self:
        _exclusive(self, (("url", "url_file"), ("routing_key", "routing_key_file")))
        has_url = self.url is not None or self.url_file is not None
        if self.type in ("http", "notify") and not has_url:
            raise ValueError(f"a {self.type} action needs url or url_file")
        if self.type == "postmortem" and has_url == (self.directory is not None):
            raise ValueError("a postmortem action needs exactly one of directory (write a file) and url (POST it)")
        if self.type == "pagerduty" and self.routing_key is None and self.routing_key_file is None:
            raise ValueError("a pagerduty action needs routing_key or routing_key_file")
        if self.routing_key is not None and not ROUTING_KEY_RE.match(self.routing_key.get_secret_value()):
            raise ValueError(f"routing_key: {KEY_EXPECTATION}")
        if not 0 < self.timeout <= 300:
            raise ValueError("timeout: expected a duration above 0 and at most 5m")
        for where, text in action_templates(self):
            if (problem := template_problem(text, ACTION_TEMPLATE_NAMES)) is not None:
                raise ValueError(f"{where}: {problem}")
        return self


ACTION_TEMPLATE_NAMES = frozenset({
    "key", "summary", "status", "severity", "class", "certificate", "environment", "issuer", "services",
    "action", "members", "runbook_url", "dashboard_url",
})


def action_templates(action: ActionConfig) -> list[tuple[str, str]]:
    """(where, template) for every template of ``action``."""
    found: list[tuple[str, str]] = []

    def walk(value: object, where: str) -> None:
        if isinstance(value, str):
            found.append((where, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for n, v in enumerate(value):
                walk(v, f"{where}[{n}]")

    walk(action.body, "body")
    if action.type == "notify":
        found.append(("text", action.text))
    if action.template is not None:
        found.append(("template", action.template))
    return found


class BasicAuth(Section):
    username: str
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _password(self) -> Self:
        _exclusive(self, (("password", "password_file"),))
        if self.password is None and self.password_file is None:
            raise ValueError("password or password_file is required")
        return self


class Auth(Section):
    """How Alertmanager authenticates: a bearer token or basic auth (both may be set)."""

    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    basic_auth: BasicAuth | None = None

    @model_validator(mode="after")
    def _sources(self) -> Self:
        _exclusive(self, (("bearer_token", "bearer_token_file"),))
        return self


class Server(Section):
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    auth: Auth = Auth()
    # POST /-/reload: "authenticated" takes the webhook's credentials (open only when server.auth is
    # empty), "open" takes any request (a sidecar on localhost), "disabled" leaves SIGHUP only.
    reload: Literal["authenticated", "open", "disabled"] = "authenticated"
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)

    @field_validator("listen_address")
    @classmethod
    def _address(cls, value: str) -> str:
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError("expected a listen address like :9880 or 127.0.0.1:9880")
        return value


class Store(Section):
    """SQLite at ``path``, or PostgreSQL when ``url`` is set (several replicas share it)."""

    path: Path = Path("certpager-bridge.db")
    # postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE; a secret (it may hold the password): never printed.
    url: SecretStr | None = None
    password: SecretStr | None = None  # e.g. $PGPASSWORD; unset: password_file, the URL's, libpq's PGPASSWORD
    password_file: Path | None = None
    pool_size: int = Field(default=8, ge=1, le=100)  # connections per replica (PostgreSQL)
    retention: Duration = 7 * 86400.0  # how long receipts, resolved occurrences and dead letters are kept
    # How long the audit trail is kept: certpager history and certpager report read it (a quarter by default).
    audit_retention: Duration = 90 * 86400.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        # The messages never repeat the URL: it may carry a password.
        url = value.get_secret_value()
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a postgresql:// URL")
        try:
            parts = urlsplit(url)
            _ = parts.port
        except ValueError:
            raise ValueError("expected a postgresql://USER@HOST:PORT/DATABASE URL") from None
        if not parts.hostname or not parts.path.strip("/"):
            raise ValueError("expected a postgresql://USER@HOST:PORT/DATABASE URL (host and database)")
        return value

    @model_validator(mode="after")
    def _password(self) -> Self:
        _exclusive(self, (("password", "password_file"),))
        given = self.password is not None or self.password_file is not None
        if self.url is None and given:
            raise ValueError("password and password_file are for PostgreSQL: set store.url too")
        if self.url is not None and given and urlsplit(self.url.get_secret_value()).password is not None:
            raise ValueError("the URL carries a password already: drop it or drop password/password_file")
        return self


class Outbox(Section):
    max_in_flight: int = Field(default=16, ge=1, le=1024)  # deliveries at once, across ordering keys
    retry_initial: Duration = 1.0  # first backoff when the sink gives no Retry-After
    retry_max: Duration = 300.0  # backoff cap
    sweep_interval: Duration = 5.0  # look for due retries at least this often
    # A claimed item is handed to another replica when its delivery has not reported back by then (the
    # replica died): keep it well above a delivery's timeout, or a slow delivery is sent twice.
    lease: Duration = Field(default=60.0, ge=1.0)

    @field_validator("retry_initial", "retry_max", "sweep_interval")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):  # .inf in YAML: an item retried "never" is an item lost
            raise ValueError("expected a finite duration")
        return value

    @field_validator("sweep_interval")
    @classmethod
    def _sweep(cls, value: float) -> float:
        if value < MIN_SWEEP:
            raise ValueError("expected a duration of at least 100ms")
        return value

    @model_validator(mode="after")
    def _backoff(self) -> Self:
        if self.retry_initial <= 0 or self.retry_max < self.retry_initial:
            raise ValueError("need 0 < retry_initial <= retry_max")
        return self


class AckSync(Section):
    """Acknowledgement sync with Alertmanager (docs/ack-sync.md); off while ``alertmanagers`` is empty."""

    alertmanagers: list[str] = Field(default_factory=list)  # an HA pair: read from any, write each silence to one
    poll_interval: Duration = 30.0  # how often /api/v2/alerts and /api/v2/silences are read
    silence_max: Duration = 86400.0  # an ack's silence ends at the ack timeout, never later than this
    vanished_after: Duration = 300.0  # a suppressed alert gone this long from every Alertmanager is resolved
    timeout: Duration = 10.0  # per Alertmanager request

    @field_validator("alertmanagers")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r}: expected an http:// or https:// Alertmanager base URL")
        return [url.rstrip("/") for url in value]

    @model_validator(mode="after")
    def _positive(self) -> Self:
        if min(self.poll_interval, self.silence_max, self.timeout) <= 0 or self.vanished_after < 0:
            raise ValueError("poll_interval, silence_max and timeout must be positive, vanished_after not negative")
        return self


class Analytics(Section):
    """Working hours for off-hours pages (certpager_bridge_pages_total, certpager report)."""

    timezone: str = "UTC"  # an IANA zone name (zoneinfo): daylight saving is the zone's own
    working_hours: str = "09:00-17:00"  # local start-end, end exclusive
    working_days: list[str] = Field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"])

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}: expected an IANA name such as Europe/Berlin") from None
        return value

    @field_validator("working_hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        parse_hours(value)
        return value

    @field_validator("working_days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        unknown = [d for d in value if d.lower() not in WEEKDAYS]
        if unknown:
            raise ValueError(f"unknown day {unknown[0]!r}: expected some of {', '.join(WEEKDAYS)}")
        return [d.lower() for d in value]

    def working(self) -> WorkingHours:
        start, end = parse_hours(self.working_hours)
        days = frozenset(WEEKDAYS.index(d) for d in self.working_days)
        return WorkingHours(ZoneInfo(self.timezone), start, end, days)


def parse_hours(value: str) -> tuple[dt_time, dt_time]:
    """``09:00-17:00`` -> (09:00, 17:00); the start must come before the end."""
    try:
        first, second = value.split("-")
        start, end = dt_time.fromisoformat(first.strip()), dt_time.fromisoformat(second.strip())
    except ValueError:
        raise ValueError(f"expected HH:MM-HH:MM such as 09:00-17:00, got {value!r}") from None
    if not start < end:
        raise ValueError(f"expected the start before the end, got {value!r}")
    return start, end


class BridgeConfig(Section):
    """The whole bridge config file."""

    integrations: Integrations = Integrations()
    grouping: Grouping = Grouping()
    automation: dict[str, Automation] = Field(default_factory=dict)  # alert class -> actions
    actions: dict[str, ActionConfig] = Field(default_factory=dict)  # action name -> what it does

    @field_validator("automation")
    @classmethod
    def _classes(cls, value: dict[str, Automation]) -> dict[str, Automation]:
        check_classes(value, "automation")
        return value

    @field_validator("actions")
    @classmethod
    def _action_names(cls, value: dict[str, ActionConfig]) -> dict[str, ActionConfig]:
        for name in value:
            if not ACTION_NAME_RE.match(name):
                raise ValueError(f"action name {name!r}: expected letters, digits, _ and - (at most 64)")
        return value

    @model_validator(mode="after")
    def _known_actions(self) -> Self:
        for event_class, automation in self.automation.items():
            for phase, names in (("actions", automation.actions), ("on_resolve", automation.on_resolve)):
                for name in names:
                    if name not in self.actions:
                        known = ", ".join(sorted(self.actions)) or "none defined"
                        raise ValueError(
                            f"automation.{event_class}.{phase}: unknown action {name!r} (actions: {known})"
                        )
        return self

    server: Server = Server()
    store: Store = Store()
    outbox: Outbox = Outbox()
    links: Links = Links()
    ack_sync: AckSync = AckSync()
    analytics: Analytics = Analytics()


@dataclass(frozen=True)
class ActionSecrets:
    """One action's URL, header values and routing key, read from the config or their files."""

    url: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # plain headers and header_files
    routing_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Secrets:
    """Secrets (and the component map) resolved from the config and its ``*_file`` variants; ``repr`` never
    shows the secrets."""

    routing_key: str | None = field(default=None, repr=False)
    routing_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    bearer_token: str | None = field(default=None, repr=False)
    basic_password: str | None = field(default=None, repr=False)
    statuspage_token: str | None = field(default=None, repr=False)
    component_map: Mapping[str, str] = field(default_factory=dict)  # service name -> Statuspage component id
    store_password: str | None = field(default=None, repr=False)
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)  # PagerDuty Webhooks v3
    api_token: str | None = field(default=None, repr=False)  # PagerDuty REST
    actions: Mapping[str, ActionSecrets] = field(default_factory=dict, repr=False)  # action name -> its secrets

    def routing_key_for(self, route: str) -> str | None:
        """The routing key for an environment, falling back to the default key."""
        return self.routing_keys.get(route) or self.routing_key

    @property
    def has_pagerduty(self) -> bool:
        return bool(self.routing_key or self.routing_keys)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config, where it came from, and its resolved secrets."""

    config: BridgeConfig
    path: Path
    secrets: Secrets = field(repr=False)


def _file(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def _secret(value: SecretStr | None, path: Path | None, *, key: str, config_path: Path) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    return read_secret_file(_file(path, config_path.parent), key=key, config_path=config_path)


def resolve_secrets(config: BridgeConfig, config_path: Path) -> Secrets:
    """Read every ``*_file`` secret now (called at load and at every reload)."""
    pd = config.integrations.pagerduty
    base = "integrations.pagerduty"
    keys = {env: key.get_secret_value() for env, key in pd.routing_keys.items()}
    for env, path in pd.routing_key_files.items():
        where = f"{base}.routing_key_files.{env}"
        raw = _secret(None, path, key=where, config_path=config_path)
        value = _checked_key(raw, key=where, config_path=config_path)
        if value is not None:
            keys[env] = value
    default = _secret(pd.routing_key, pd.routing_key_file, key=f"{base}.routing_key_file", config_path=config_path)
    if pd.routing_key_file is not None:
        default = _checked_key(default, key=f"{base}.routing_key_file", config_path=config_path)
    auth = config.server.auth
    basic = auth.basic_auth
    webhook = [s.get_secret_value() for s in pd.webhook_secrets]
    from_file = _secret(None, pd.webhook_secret_file, key=f"{base}.webhook_secret_file", config_path=config_path)
    if from_file is not None:
        webhook.extend(line.strip() for line in from_file.splitlines() if line.strip())
    sp = config.integrations.statuspage
    return Secrets(
        webhook_secrets=tuple(webhook),
        api_token=_secret(pd.api_token, pd.api_token_file, key=f"{base}.api_token_file", config_path=config_path),
        statuspage_token=None if sp is None else _secret(
            sp.api_token, sp.api_token_file, key="integrations.statuspage.api_token_file", config_path=config_path
        ),
        component_map=_component_map(sp, config_path),
        routing_key=default,
        routing_keys=keys,
        bearer_token=_secret(
            auth.bearer_token, auth.bearer_token_file, key="server.auth.bearer_token_file", config_path=config_path
        ),
        basic_password=None
        if basic is None
        else _secret(
            basic.password, basic.password_file, key="server.auth.basic_auth.password_file", config_path=config_path
        ),
        store_password=_secret(
            config.store.password, config.store.password_file, key="store.password_file", config_path=config_path
        ),
        actions={name: _action_secrets(name, a, config_path) for name, a in config.actions.items()},
    )


def _action_secrets(name: str, action: ActionConfig, config_path: Path) -> ActionSecrets:
    where = f"actions.{name}"
    headers = dict(action.headers)
    for header, path in action.header_files.items():
        value = _secret(None, path, key=f"{where}.header_files.{header}", config_path=config_path)
        if value is not None:
            headers[header] = value
    routing_key = _secret(action.routing_key, action.routing_key_file, key=f"{where}.routing_key_file",
                          config_path=config_path)
    if action.routing_key_file is not None:
        routing_key = _checked_key(routing_key, key=f"{where}.routing_key_file", config_path=config_path)
    url = _secret(action.url, action.url_file, key=f"{where}.url_file", config_path=config_path)
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        problem = "expected an http:// or https:// URL (value hidden: a secret)"
        raise ConfigError(config_path, [(f"{where}.url", problem)])
    return ActionSecrets(url=url, headers=headers, routing_key=routing_key)


def _component_map(sp: StatuspageConfig | None, config_path: Path) -> Mapping[str, str]:
    if sp is None:
        return {}
    if sp.component_map_file is None:
        return dict(sp.component_map or {})
    key = "integrations.statuspage.component_map_file"
    path = _file(sp.component_map_file, config_path.parent)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(config_path, [(key, f"cannot read {path}: {exc.strerror or exc}")]) from exc
    except ValueError as exc:
        raise ConfigError(config_path, [(key, f"{path} is not JSON: {exc}; {COMPONENT_MAP_EXPECTATION}")]) from exc
    if not isinstance(data, dict):
        raise ConfigError(config_path, [(key, f"{path}: {COMPONENT_MAP_EXPECTATION}")])
    try:
        check_component_map(data)
    except ValueError as exc:
        raise ConfigError(config_path, [(key, f"{path}: {exc}")]) from exc
    return {str(k): str(v) for k, v in data.items()}


def _checked_key(value: str | None, *, key: str, config_path: Path) -> str | None:
    if value is not None and not ROUTING_KEY_RE.match(value):
        raise ConfigError(config_path, [(key, KEY_EXPECTATION)])
    return value


def load(path: Path | str, *, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load, validate and resolve secrets (raises certpager.errors.ConfigError)."""
    config_path = Path(path)
    config = load_config(BridgeConfig, config_path, env=os.environ if env is None else env)
    return LoadedConfig(config=config, path=config_path, secrets=resolve_secrets(config, config_path))

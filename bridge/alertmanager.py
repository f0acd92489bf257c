"""Parsing Alertmanager webhook payloads (``version: "4"``) into :class:`Notification`.

Unknown fields are ignored (Alertmanager adds some in most releases). Bad input is a
:class:`PayloadError` carrying the HTTP status to answer and a reason naming the bad part:

    400  the body is not JSON, not an object, or a required field is missing or has the wrong type
         (a bad alert names its index: ``alerts[3].labels: expected an object of strings``)
    422  well-formed JSON in a version this bridge does not speak (only "4" exists today)

Alertmanager treats every 4xx as permanent, which is right: resending the same bytes cannot help.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

SUPPORTED_VERSION = "4"
Status = Literal["firing", "resolved"]


class PayloadError(ValueError):
    """The webhook body cannot be accepted; ``status`` is the HTTP answer, ``str()`` the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert of a notification: one transition of one occurrence (fingerprint + startsAt)."""

    status: Status
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str  # normalised: UTC, microseconds, "Z" (sorts like time)
    ends_at: str
    generator_url: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Notification:
    """One Alertmanager webhook."""

    receiver: str
    status: Status
    group_key: str
    external_url: str
    truncated_alerts: int
    alerts: tuple[Alert, ...]


def normalise_time(value: str) -> str:
    """RFC 3339 -> ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (raises ValueError)."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no time zone")
    if parsed.year <= 1:  # Go's zero time: "not set"; astimezone would underflow
        return "0001-01-01T00:00:00.000000Z"
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """A stable 16-hex fingerprint of a label set, used when a payload template omits ``fingerprint``."""
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse(body: bytes) -> Notification:
    """Parse and check one webhook body (raises PayloadError)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(400, f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError(400, "body is not a JSON object")
    version = data.get("version")
    if version is None:
        raise PayloadError(400, "version: required field is missing")
    if version != SUPPORTED_VERSION:
        raise PayloadError(422, f"version: unsupported webhook version {version!r}, expected {SUPPORTED_VERSION!r}")
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError(400, "alerts: " + ("required field is missing" if alerts is None else "expected a list"))
    truncated = data.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise PayloadError(400, "truncatedAlerts: expected a non-negative integer")
    return Notification(
        receiver=_opt_str(data, "receiver", ""),
        status=_status(data.get("status", "firing"), "status"),
        group_key=_opt_str(data, "groupKey", ""),
        external_url=_opt_str(data, "externalURL", ""),
        truncated_alerts=truncated,
        alerts=tuple(_alert(item, i) for i, item in enumerate(alerts)),
    )


def _opt_str(data: Mapping[str, Any], key: str, default: str, where: str = "") -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise PayloadError(400, f"{where}{key}: expected a string")
    return value


def _status(value: object, where: str) -> Status:
    if value == "firing":
        return "firing"
    if value == "resolved":
        return "resolved"
    raise PayloadError(400, f"{where}: expected \"firing\" or \"resolved\"")


def _str_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise PayloadError(400, f"{where}: expected an object of strings")
    return value


def _time(value: object, where: str, *, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise PayloadError(400, f"{where}: required field is missing")
        return "0001-01-01T00:00:00.000000Z"
    if not isinstance(value, str):
        raise PayloadError(400, f"{where}: expected an RFC 3339 timestamp")
    try:
        return normalise_time(value)
    except ValueError:
        raise PayloadError(400, f"{where}: expected an RFC 3339 timestamp") from None


def _alert(item: object, index: int) -> Alert:
    where = f"alerts[{index}]"
    if not isinstance(item, dict):
        raise PayloadError(400, f"{where}: expected an object")
    labels = _str_map(item.get("labels"), f"{where}.labels")
    if not labels:
        raise PayloadError(400, f"{where}.labels: an alert needs at least one label")
    fingerprint = _opt_str(item, "fingerprint", "", f"{where}.") or label_fingerprint(labels)
    return Alert(
        status=_status(item.get("status"), f"{where}.status"),
        labels=labels,
        annotations=_str_map(item.get("annotations"), f"{where}.annotations"),
        starts_at=_time(item.get("startsAt"), f"{where}.startsAt", required=True),
        ends_at=_time(item.get("endsAt"), f"{where}.endsAt", required=False),
        generator_url=_opt_str(item, "generatorURL", "", f"{where}."),
        fingerprint=fingerprint,
    )

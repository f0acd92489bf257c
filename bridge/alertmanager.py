"""Parsing Alertmanager webhook payloads (``version: "4"``) into :class:`Notification`.

Unknown fields are ignored (Alertmanager adds some in most releases). A webhook that cannot be read at
all is a :class:`PayloadError` carrying the HTTP status to answer and a reason naming the bad part:

    400  the body is not JSON (nested too deeply included), not an object, or a top-level field is missing
         or has the wrong type
    422  well-formed JSON in a version this bridge does not speak (only "4" exists today)

One bad alert never blocks the good ones sent with it: an alert that cannot be accepted (a missing or
mistyped field, a timestamp out of range, labels or fingerprint that are not valid Unicode) becomes a
:class:`Rejection` naming its index and the reason, and the notification carries the valid alerts. The
caller stores those and answers 400 with the rejections. Alertmanager treats every 4xx as permanent,
which is right: resending the same bytes cannot help.

Text Python can hold but UTF-8 cannot (a lone surrogate from a ``"\\ud800"`` escape) is refused where it is
identity (labels, fingerprint) and replaced with U+FFFD where it is only shown (annotations, URLs, the
receiver and group key), so it never reaches the store as an encoding error.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

SUPPORTED_VERSION = "4"
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
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
class Rejection:
    """One alert of a webhook that was not accepted, and why."""

    index: int  # position in the webhook's ``alerts``
    reason: str  # e.g. ``alerts[3].startsAt: timestamp out of range``
    kind: str  # bounded, for the metric: invalid_field, invalid_timestamp, invalid_unicode

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "error": self.reason}


@dataclass(frozen=True, slots=True)
class Notification:
    """One Alertmanager webhook: its valid alerts, and the ones rejected."""

    receiver: str
    status: Status
    group_key: str
    external_url: str
    truncated_alerts: int
    alerts: tuple[Alert, ...]
    rejected: tuple[Rejection, ...] = ()


class _AlertError(ValueError):
    """One alert cannot be accepted; ``kind`` is the bounded reason class."""

    def __init__(self, reason: str, kind: str = "invalid_field") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def normalise_time(value: str) -> str:
    """RFC 3339 -> ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (raises ValueError, also when out of range)."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no time zone")
    if parsed.year <= 1:  # Go's zero time: "not set"; astimezone would underflow
        return "0001-01-01T00:00:00.000000Z"
    try:
        return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is in year 10000 in UTC
        raise ValueError("timestamp out of range") from None


def valid_unicode(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def repair_unicode(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD."""
    if valid_unicode(text):
        return text
    return _SURROGATE_RE.sub("\ufffd", text)


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
    except RecursionError:  # the parser recurses per level: 1,000 nested brackets are not a webhook
        raise PayloadError(400, "body is not JSON this bridge accepts: nested too deeply") from None
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
    try:
        status = _status(data.get("status", "firing"), "status")
        top = {key: repair_unicode(_opt_str(data, key, "")) for key in ("receiver", "groupKey", "externalURL")}
    except _AlertError as exc:
        raise PayloadError(400, exc.reason) from None
    accepted: list[Alert] = []
    rejected: list[Rejection] = []
    for i, item in enumerate(alerts):
        try:
            accepted.append(_alert(item, i))
        except _AlertError as exc:
            rejected.append(Rejection(i, exc.reason, exc.kind))
    return Notification(
        receiver=top["receiver"],
        status=status,
        group_key=top["groupKey"],
        external_url=top["externalURL"],
        truncated_alerts=truncated,
        alerts=tuple(accepted),
        rejected=tuple(rejected),
    )


def _opt_str(data: Mapping[str, Any], key: str, default: str, where: str = "") -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _AlertError(f"{where}{key}: expected a string")
    return value


def _status(value: object, where: str) -> Status:
    if value == "firing":
        return "firing"
    if value == "resolved":
        return "resolved"
    raise _AlertError(f"{where}: expected \"firing\" or \"resolved\"")


def _str_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _AlertError(f"{where}: expected an object of strings")
    return value


def _identity_map(value: object, where: str) -> dict[str, str]:
    # Labels are what an alert is: replacing a character would change which incident it belongs to.
    labels = _str_map(value, where)
    for name, text in labels.items():
        if not (valid_unicode(name) and valid_unicode(text)):
            raise _AlertError(f"{where}: a label is not valid Unicode (lone surrogate)", "invalid_unicode")
    return labels


def _shown_map(value: object, where: str) -> dict[str, str]:
    return {repair_unicode(k): repair_unicode(v) for k, v in _str_map(value, where).items()}


def _time(value: object, where: str, *, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise _AlertError(f"{where}: required field is missing")
        return "0001-01-01T00:00:00.000000Z"
    if not isinstance(value, str):
        raise _AlertError(f"{where}: expected an RFC 3339 timestamp", "invalid_timestamp")
    try:
        return normalise_time(value)
    except ValueError as exc:
        detail = "timestamp out of range" if "out of range" in str(exc) else "expected an RFC 3339 timestamp"
        raise _AlertError(f"{where}: {detail}", "invalid_timestamp") from None


def _alert(item: object, index: int) -> Alert:
    where = f"alerts[{index}]"
    if not isinstance(item, dict):
        raise _AlertError(f"{where}: expected an object")
    labels = _identity_map(item.get("labels"), f"{where}.labels")
    if not labels:
        raise _AlertError(f"{where}.labels: an alert needs at least one label")
    fingerprint = _opt_str(item, "fingerprint", "", f"{where}.")
    if not valid_unicode(fingerprint):
        raise _AlertError(f"{where}.fingerprint: not valid Unicode (lone surrogate)", "invalid_unicode")
    return Alert(
        status=_status(item.get("status"), f"{where}.status"),
        labels=labels,
        annotations=_shown_map(item.get("annotations"), f"{where}.annotations"),
        starts_at=_time(item.get("startsAt"), f"{where}.startsAt", required=True),
        ends_at=_time(item.get("endsAt"), f"{where}.endsAt", required=False),
        generator_url=repair_unicode(_opt_str(item, "generatorURL", "", f"{where}.")),
        fingerprint=fingerprint or label_fingerprint(labels),
    )

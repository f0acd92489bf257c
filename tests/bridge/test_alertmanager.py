"""Parsing the Alertmanager webhook corpus: accepted shapes and the exact 4xx reasons for garbage."""

from __future__ import annotations

import pytest

from bridge.alertmanager import PayloadError, label_fingerprint, normalise_time, parse
from tests.bridge.conftest import PAYLOADS


def test_firing_payload_parses_every_field():
    n = parse((PAYLOADS / "firing.json").read_bytes())
    assert (n.receiver, n.status, n.truncated_alerts) == ("certpager", "firing", 0)
    assert n.group_key == '{}/{severity="critical"}:{alertname="CertificateExpired"}'
    assert n.external_url == "http://alertmanager.example:9093"
    first, second = n.alerts
    assert first.fingerprint == "a1b2c3d4e5f60718"
    assert first.starts_at == "2026-11-20T10:00:00.123456Z"  # nanoseconds cut to microseconds
    assert first.ends_at == "0001-01-01T00:00:00.000000Z"
    assert first.labels["certificate"] == "api.example.com"
    assert first.annotations["runbook_url"] == "https://runbooks.example/cert-expired"
    assert second.starts_at == "2026-11-20T10:00:00.000000Z"  # +01:00 normalised to UTC


def test_resolved_and_mixed():
    resolved = parse((PAYLOADS / "resolved.json").read_bytes())
    assert [a.status for a in resolved.alerts] == ["resolved", "resolved"]
    mixed = parse((PAYLOADS / "mixed.json").read_bytes())
    assert [a.status for a in mixed.alerts] == ["firing", "resolved"]


def test_truncated_alerts_count_is_kept():
    n = parse((PAYLOADS / "truncated.json").read_bytes())
    assert n.truncated_alerts == 3
    assert len(n.alerts) == 1


def test_unknown_fields_are_tolerated():
    n = parse((PAYLOADS / "unknown_fields.json").read_bytes())
    assert len(n.alerts) == 2
    assert n.alerts[0].fingerprint == "a1b2c3d4e5f60718"


@pytest.mark.parametrize(
    ("name", "status", "reason"),
    [
        ("garbage-not-json.txt", 400, "body is not JSON: Expecting value: line 1 column 1 (char 0)"),
        ("garbage-array.json", 400, "body is not a JSON object"),
        ("garbage-wrong-version.json", 422, "version: unsupported webhook version '3', expected '4'"),
        ("garbage-missing-alerts.json", 400, "alerts: required field is missing"),
        ("garbage-bad-labels.json", 400, "alerts[1].labels: expected an object of strings"),
        ("garbage-bad-starts-at.json", 400, "alerts[0].startsAt: expected an RFC 3339 timestamp"),
        ("garbage-bad-status.json", 400, 'alerts[1].status: expected "firing" or "resolved"'),
    ],
)
def test_garbage_is_refused_with_a_specific_reason(name, status, reason):
    with pytest.raises(PayloadError) as info:
        parse((PAYLOADS / name).read_bytes())
    assert (info.value.status, info.value.reason) == (status, reason)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b'{"version": "4", "alerts": "x"}', "alerts: expected a list"),
        (b'{"alerts": []}', "version: required field is missing"),
        (b'{"version": "4", "alerts": [1]}', "alerts[0]: expected an object"),
        (b'{"version": "4", "alerts": [], "truncatedAlerts": -1}', "truncatedAlerts: expected a non-negative integer"),
        (b'{"version": "4", "alerts": [{"status": "firing", "labels": {}, "startsAt": "2026-01-01T00:00:00Z"}]}',
         "alerts[0].labels: an alert needs at least one label"),
        (b'{"version": "4", "alerts": [{"status": "firing", "labels": {"a": "b"}}]}',
         "alerts[0].startsAt: required field is missing"),
        (b'{"version": "\xff"}',
         "body is not JSON: 'utf-8' codec can't decode byte 0xff in position 13: invalid start byte"),
    ],
)
def test_more_bad_shapes(text, reason):
    with pytest.raises(PayloadError) as info:
        parse(text)
    assert (info.value.status, info.value.reason) == (400, reason)


def test_missing_fingerprint_falls_back_to_a_stable_label_hash():
    raw = (b'{"version": "4", "alerts": [{"status": "firing", "labels": {"b": "2", "a": "1"},'
           b' "startsAt": "2026-01-01T00:00:00Z"}]}')
    (a,) = parse(raw).alerts
    assert a.fingerprint == label_fingerprint({"a": "1", "b": "2"})
    assert len(a.fingerprint) == 16


def test_normalise_time_rejects_naive_timestamps():
    with pytest.raises(ValueError):
        normalise_time("2026-01-01T00:00:00")

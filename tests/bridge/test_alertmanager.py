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
    ],
)
def test_garbage_is_refused_with_a_specific_reason(name, status, reason):
    with pytest.raises(PayloadError) as info:
        parse((PAYLOADS / name).read_bytes())
    assert (info.value.status, info.value.reason) == (status, reason)


@pytest.mark.parametrize(
    ("name", "index", "reason", "kept"),
    [
        ("garbage-bad-labels.json", 1, "alerts[1].labels: expected an object of strings", 1),
        ("garbage-bad-starts-at.json", 0, "alerts[0].startsAt: expected an RFC 3339 timestamp", 1),
        ("garbage-bad-status.json", 1, 'alerts[1].status: expected "firing" or "resolved"', 1),
    ],
)
def test_a_bad_alert_is_rejected_alone(name, index, reason, kept):
    n = parse((PAYLOADS / name).read_bytes())
    assert [(r.index, r.reason) for r in n.rejected] == [(index, reason)]
    assert len(n.alerts) == kept


def _one(alert_json: str) -> bytes:
    good = '{"status": "firing", "labels": {"a": "good"}, "startsAt": "2026-01-01T00:00:00Z"}'
    return ('{"version": "4", "alerts": [' + good + ", " + alert_json + "]}").encode()


@pytest.mark.parametrize(
    ("alert_json", "reason", "kind"),
    [
        ('{"status": "firing", "labels": {"a": "\\ud800"}, "startsAt": "2026-01-01T00:00:00Z"}',
         "alerts[1].labels: a label is not valid Unicode (lone surrogate)", "invalid_unicode"),
        ('{"status": "firing", "labels": {"\\udfff": "x"}, "startsAt": "2026-01-01T00:00:00Z"}',
         "alerts[1].labels: a label is not valid Unicode (lone surrogate)", "invalid_unicode"),
        ('{"status": "firing", "labels": {"a": "b"}, "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "\\ud800"}',
         "alerts[1].fingerprint: not valid Unicode (lone surrogate)", "invalid_unicode"),
        ('{"status": "firing", "labels": {"a": "b"}, "startsAt": "9999-12-31T23:59:59-01:00"}',
         "alerts[1].startsAt: timestamp out of range", "invalid_timestamp"),
        ('{"status": "resolved", "labels": {"a": "b"}, "startsAt": "2026-01-01T00:00:00Z",'
         ' "endsAt": "9999-12-31T23:59:59-23:59"}', "alerts[1].endsAt: timestamp out of range", "invalid_timestamp"),
        ('[]', "alerts[1]: expected an object", "invalid_field"),
    ],
)
def test_poison_alerts_are_rejected_and_the_good_one_kept(alert_json, reason, kind):
    n = parse(_one(alert_json))
    assert [(r.index, r.reason, r.kind) for r in n.rejected] == [(1, reason, kind)]
    assert [a.labels for a in n.alerts] == [{"a": "good"}]


def test_shown_text_with_a_lone_surrogate_is_repaired_not_refused():
    raw = (b'{"version": "4", "groupKey": "\\ud800", "alerts": [{"status": "firing", "labels": {"a": "b"},'
           b' "annotations": {"description": "x\\ud800y"}, "generatorURL": "http://p/\\udc00",'
           b' "startsAt": "2026-01-01T00:00:00Z"}]}')
    n = parse(raw)
    (a,) = n.alerts
    assert (n.rejected, n.group_key) == ((), "\ufffd")
    assert (a.annotations["description"], a.generator_url) == ("x\ufffdy", "http://p/\ufffd")


def test_deeply_nested_json_is_a_400_not_a_crash():
    deep = b'{"version": "4", "alerts": [], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(PayloadError) as info:
        parse(deep)
    assert (info.value.status, info.value.reason) == (400, "body is not JSON this bridge accepts: nested too deeply")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b'{"version": "4", "alerts": "x"}', "alerts: expected a list"),
        (b'{"alerts": []}', "version: required field is missing"),
        (b'{"version": "4", "alerts": [], "truncatedAlerts": -1}', "truncatedAlerts: expected a non-negative integer"),
        (b'{"version": "\xff"}',
         "body is not JSON: 'utf-8' codec can't decode byte 0xff in position 13: invalid start byte"),
    ],
)
def test_more_bad_shapes(text, reason):
    with pytest.raises(PayloadError) as info:
        parse(text)
    assert (info.value.status, info.value.reason) == (400, reason)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b'{"version": "4", "alerts": [1]}', "alerts[0]: expected an object"),
        (b'{"version": "4", "alerts": [{"status": "firing", "labels": {}, "startsAt": "2026-01-01T00:00:00Z"}]}',
         "alerts[0].labels: an alert needs at least one label"),
        (b'{"version": "4", "alerts": [{"status": "firing", "labels": {"a": "b"}}]}',
         "alerts[0].startsAt: required field is missing"),
    ],
)
def test_more_bad_alerts(text, reason):
    n = parse(text)
    assert (n.alerts, [r.reason for r in n.rejected]) == ((), [reason])


def test_missing_fingerprint_falls_back_to_a_stable_label_hash():
    raw = (b'{"version": "4", "alerts": [{"status": "firing", "labels": {"b": "2", "a": "1"},'
           b' "startsAt": "2026-01-01T00:00:00Z"}]}')
    (a,) = parse(raw).alerts
    assert a.fingerprint == label_fingerprint({"a": "1", "b": "2"})
    assert len(a.fingerprint) == 16


def test_normalise_time_rejects_naive_timestamps():
    with pytest.raises(ValueError):
        normalise_time("2026-01-01T00:00:00")

"""IncidentEvent -> Events v2 body: fields per action, limits fitted, local validation."""

from __future__ import annotations

import json

import pytest

from bridge.events import Action, Link, Severity
from bridge.sinks.pagerduty import (
    BODY_MAX_BYTES,
    FIELD_MAX,
    build_body,
    check_body,
    encode_body,
    fit_dedup_key,
    fit_summary,
    parse_retry_after,
)
from tests.bridge_sinks.conftest import ROUTING_KEY, followup, trigger
from tests.fakes.pagerduty import check_alert_event


def test_trigger_body_is_the_design_example():
    assert build_body(trigger(), ROUTING_KEY) == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "cert-api-example-com-expired",
        "payload": {
            "summary": "CRITICAL: Certificate Expired - api.example.com",
            "source": "certpager",
            "severity": "critical",
            "timestamp": "2026-11-22T08:00:00Z",
            "component": "api.example.com",
            "group": "production",
            "class": "certificate_expired",
            "custom_details": {
                "certificate_name": "api.example.com",
                "issuer": "Example CA",
                "environment": "production",
            },
        },
        "links": [
            {"href": "https://grafana.example.com/d/certs", "text": "Dashboard"},
            {"href": "https://runbooks.example.com/x"},
        ],
        "client": "certpager",
        "client_url": "https://prometheus.example.com/graph",
    }


@pytest.mark.parametrize("action", [Action.ACKNOWLEDGE, Action.RESOLVE])
def test_acknowledge_and_resolve_send_only_the_keys(action):
    # Even when the event carries a summary and links, PagerDuty needs (and gets) only the keys.
    event = trigger(action=action, note="superseded by certificate_expired")
    assert build_body(event, ROUTING_KEY) == {
        "routing_key": ROUTING_KEY,
        "event_action": action.value,
        "dedup_key": "cert-api-example-com-expired",
    }
    assert build_body(followup(action), ROUTING_KEY)["event_action"] == action.value


def test_empty_optional_fields_are_left_out_and_note_goes_to_custom_details():
    event = trigger(
        component="",
        group="",
        event_class="",
        timestamp=None,
        custom_details={},
        links=(),
        client="",
        client_url=None,
        note="stale snapshot replaced",
    )
    body = build_body(event, ROUTING_KEY)
    assert body["payload"] == {
        "summary": "CRITICAL: Certificate Expired - api.example.com",
        "source": "certpager",
        "severity": "critical",
        "custom_details": {"note": "stale snapshot replaced"},
    }
    assert set(body) == {"routing_key", "event_action", "dedup_key", "payload"}


def test_links_without_href_are_dropped_and_no_images_are_sent():
    body = build_body(trigger(links=(Link(""), Link("https://a", ""), Link("https://b", "B"))), ROUTING_KEY)
    assert body["links"] == [{"href": "https://a"}, {"href": "https://b", "text": "B"}]
    assert "images" not in body


def test_malformed_timestamp_is_dropped_not_sent():
    assert "timestamp" not in build_body(trigger(timestamp="yesterday"), ROUTING_KEY)["payload"]
    assert build_body(trigger(timestamp="2026-11-22T08:00:00+01:00"), ROUTING_KEY)["payload"]["timestamp"] == (
        "2026-11-22T08:00:00+01:00"
    )


@pytest.mark.parametrize(
    ("length", "expected_length", "cut"),
    [(1023, 1023, False), (1024, 1024, False), (1025, 1024, True), (5000, 1024, True)],
)
def test_summary_fits_1024_characters_exactly(length, expected_length, cut):
    summary = "é" * length  # two bytes each: the limit counts characters, not bytes
    fitted = fit_summary(summary)
    assert len(fitted) == expected_length
    assert fitted == ("é" * 1023 + "…" if cut else summary)
    body = build_body(trigger(summary=summary), ROUTING_KEY)
    assert body["payload"]["summary"] == fitted
    assert check_body(body) == [] and check_alert_event(body) == []


def test_long_dedup_key_becomes_a_stable_255_character_key():
    long_key = "cert-" + "x" * 300
    fitted = fit_dedup_key(long_key)
    assert len(fitted) == 255
    assert fitted == fit_dedup_key(long_key)  # trigger and resolve meet at the same alert
    assert fitted != fit_dedup_key(long_key + "y")
    assert fitted.startswith("cert-xxx")
    assert fit_dedup_key("k" * 255) == "k" * 255
    assert build_body(followup(Action.RESOLVE, key=long_key), ROUTING_KEY)["dedup_key"] == fitted


def test_oversized_custom_details_are_replaced_by_a_notice():
    event = trigger(custom_details={"firing": "x" * 600_000})
    body = build_body(event, ROUTING_KEY)
    original = len(encode_body({**body, "payload": {**body["payload"], "custom_details": dict(event.custom_details)}}))
    assert body["payload"]["custom_details"] == {
        "error": f"custom_details removed: the event was {original} bytes, over PagerDuty's limit of 512000 bytes"
    }
    assert body["payload"]["summary"] == "CRITICAL: Certificate Expired - api.example.com"
    assert len(encode_body(body)) < BODY_MAX_BYTES
    assert check_body(body) == []


def test_body_just_under_the_limit_is_kept_whole():
    base = len(encode_body(build_body(trigger(custom_details={"blob": ""}), ROUTING_KEY)))
    event = trigger(custom_details={"blob": "x" * (BODY_MAX_BYTES - base)})
    body = build_body(event, ROUTING_KEY)
    assert len(encode_body(body)) == BODY_MAX_BYTES
    assert body["payload"]["custom_details"] == dict(event.custom_details)


def test_oversize_body_is_caught_by_the_local_check():
    body = build_body(trigger(), ROUTING_KEY)
    body["payload"]["component"] = "c" * 600_000
    size = len(encode_body(body))
    assert check_body(body) == [f"event is {size} bytes, over PagerDuty's limit of 512000"]


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("component", {"component": "c" * 1_000_000}),  # a 1 MB certificate label
        ("class", {"event_class": "k" * 1_000_000}),
        ("group", {"group": "g" * 600_000, "custom_details": {}}),
    ],
)
def test_a_huge_label_is_cut_and_the_page_still_goes_out(field, overrides):
    body = build_body(trigger(**overrides), ROUTING_KEY)
    assert check_body(body) == []
    assert len(body["payload"][field]) == FIELD_MAX and body["payload"][field].endswith("…")
    assert f"payload.{field} cut to {FIELD_MAX} characters" in body["payload"]["custom_details"]["error"]
    assert body["payload"]["summary"] == "CRITICAL: Certificate Expired - api.example.com"


def test_a_huge_generator_url_is_dropped_and_the_page_still_goes_out():
    huge = "https://prometheus.example/graph?g0.expr=" + "x" * 1_000_000
    links = (Link("https://grafana.example.com/d/certs", "Dashboard"), Link(huge, "Alert source"))
    body = build_body(trigger(links=links, client_url=huge), ROUTING_KEY)
    assert check_body(body) == []
    assert body["links"] == [{"href": "https://grafana.example.com/d/certs", "text": "Dashboard"}]
    assert "client_url" not in body
    notice = body["payload"]["custom_details"]["error"]
    assert "link 'Alert source' dropped: URL over 2048 characters" in notice
    assert "client_url dropped: over 2048 characters" in notice


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"routing_key": ""}, "routing_key is empty"),
        ({"event_action": "open"}, "event_action 'open' is not one of ['acknowledge', 'resolve', 'trigger']"),
        ({"dedup_key": ""}, "dedup_key is empty: acknowledge and resolve could never find the alert"),
        ({"dedup_key": "d" * 256}, "dedup_key is 256 characters, over 255"),
        ({"payload": None}, "payload is required for trigger"),
        ({"payload": {"summary": "", "source": "certpager", "severity": "info"}}, "payload.summary is empty"),
        ({"payload": {"summary": "s", "source": " ", "severity": "info"}}, "payload.source is empty"),
        (
            {"payload": {"summary": "s" * 1025, "source": "x", "severity": "info"}},
            "payload.summary is over 1024 characters",
        ),
        (
            {"payload": {"summary": "s", "source": "x", "severity": "high"}},
            "payload.severity 'high' is not one of ['critical', 'error', 'info', 'warning']",
        ),
        (
            {"payload": {"summary": "s", "source": "x", "severity": "info", "custom_details": "text"}},
            "payload.custom_details is not an object",
        ),
        ({"links": [{"text": "no href"}]}, "a link has no href"),
    ],
)
def test_local_check_names_each_problem(change, problem):
    body = {**build_body(trigger(), ROUTING_KEY), **change}
    assert check_body(body) == [problem]
    # The fake (independent code, PagerDuty's rules) rejects the same bodies, except an empty dedup_key on
    # a trigger: PagerDuty would invent one, and the resolve could never find the alert, so we refuse it.
    stricter_than_pagerduty = change == {"dedup_key": ""}
    assert (check_alert_event(json.loads(json.dumps(body))) == []) is stricter_than_pagerduty


def test_every_severity_translates_and_passes():
    for severity in Severity:
        body = build_body(trigger(severity=severity), ROUTING_KEY)
        assert body["payload"]["severity"] == severity.value
        assert check_body(body) == [] and check_alert_event(body) == []


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("17", 17.0),
        (" 0 ", 0.0),
        ("soon", None),
        ("Sun, 22 Nov 2026 21:00:30 GMT", 30.0),
        ("Sun, 22 Nov 2026 20:00:00 GMT", 0.0),
    ],
)
def test_retry_after_header(header, seconds):
    now = 1_795_381_200.0  # 2026-11-22T21:00:00Z
    assert parse_retry_after(header, now=now) == seconds

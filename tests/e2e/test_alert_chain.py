"""End to end through the real programs: which alerts reach the webhook, with which labels, and the resolve.

Endpoints: ``expired`` (expired a day ago; its renewal sits in a file target, not deployed), ``soon`` (5 days
left), ``fine`` (400 days left), ``weak`` (RSA-1024 under policy min_rsa_bits), ``selfsigned`` (untrusted), and a
configured port nobody listens on. The rules run with for: 2s and a 4s smoothing window (harness.render_rules).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

from tests.e2e.conftest import Stack
from tests.e2e.harness import wait_until

ISSUER = "certpager Test Intermediate"
Key = tuple[str, str]  # (alertname, target)


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def latest(stack: Stack) -> dict[Key, dict[str, Any]]:
    """The last state the receiver saw of each alert."""
    return {(a["labels"]["alertname"], a["labels"]["target"]): a for a in stack.receiver.alerts()}


def in_state(stack: Stack, keys: Iterable[Key], status: str) -> dict[Key, dict[str, Any]] | None:
    """The receiver's latest states once every alert in ``keys`` is in ``status``, else None."""
    state = latest(stack)
    return state if all(state.get(k, {}).get("status") == status for k in keys) else None


def firing_in_prometheus(stack: Stack) -> set[Key]:
    answer = stack.query('ALERTS{alertstate="firing"}')
    assert answer["status"] == "success", answer
    return {(r["metric"]["alertname"], r["metric"]["target"]) for r in answer["data"]["result"]}


def leaf_labels(stack: Stack, name: str, alertname: str, cls: str, severity: str) -> dict[str, str]:
    leaf = stack.endpoints[name].chain.leaf
    cn = f"{name}.certpager.test"
    return {
        "alertname": alertname, "class": cls, "severity": severity, "certificate": cn, "issuer": ISSUER,
        "target": stack.endpoints[name].server.address, "environment": "e2e", "service": f"svc-{name}",
        "instance": stack.exporter_address, "job": "certpager", "position": "leaf", "index": "0",
        "subject_cn": cn, "issuer_cn": ISSUER, "serial": format(leaf.cert.serial_number, "x"),
    }


def expected_alerts(stack: Stack) -> dict[Key, tuple[dict[str, str], dict[str, str]]]:
    expired, soon = stack.endpoints["expired"], stack.endpoints["soon"]
    exp_at, soon_at = rfc3339(expired.chain.leaf.not_after), rfc3339(soon.chain.leaf.not_after)
    exp_serial = format(expired.chain.leaf.cert.serial_number, "x")
    soon_serial = format(soon.chain.leaf.cert.serial_number, "x")
    return {
        ("CertificateExpired", expired.server.address): (
            leaf_labels(stack, "expired", "CertificateExpired", "certificate_expired", "critical"),
            {"summary": f"Certificate expired.certpager.test expired on {exp_at[:10]}",
             "description": f"{expired.server.address} presents the leaf certificate CN=expired.certpager.test "
                            f"(serial {exp_serial}, issued by {ISSUER}) which expired at {exp_at}.",
             "runbook_url": "docs/runbooks.md#certificate_expired", "expires_at": exp_at},
        ),
        ("CertificateRenewalFailed", expired.server.address): (
            leaf_labels(stack, "expired", "CertificateRenewalFailed", "renewal_failed", "critical"),
            {"summary": "Certificate expired.certpager.test was not renewed: less than 1/3 of its validity is left",
             "description": f"{expired.server.address} still presents the leaf CN=expired.certpager.test "
                            f"(serial {exp_serial}, issued by {ISSUER}) expiring at {exp_at} although less than "
                            "a third of its validity has been left for over a day.",
             "runbook_url": "docs/runbooks.md#renewal_failed", "expires_at": exp_at},
        ),
        **target_level_alerts(stack),
        ("CertificateDeploymentFailed", expired.server.address): (
            {"alertname": "CertificateDeploymentFailed", "class": "deployment_failed", "severity": "error",
             "certificate": "expired.certpager.test", "issuer": ISSUER, "target": expired.server.address,
             "environment": "e2e", "service": "svc-expired", "instance": stack.exporter_address,
             "job": "certpager", "position": "leaf", "index": "0", "subject_cn": "expired.certpager.test",
             "issuer_cn": ISSUER, "serial": exp_serial},
            {"summary": f"Certificate expired.certpager.test was renewed but {expired.server.address} still serves "
                        "the old one",
             "description": f"{expired.server.address} presents a certificate expiring at {exp_at} while a renewed "
                            "certificate named expired.certpager.test exists (cert-manager or a certificate file): "
                            "reload or redeploy the endpoint.",
             "runbook_url": "docs/runbooks.md#deployment_failed", "expires_at": exp_at},
        ),
        ("CertificateExpiring7Days", soon.server.address): (
            leaf_labels(stack, "soon", "CertificateExpiring7Days", "certificate_expiring_7_days", "error"),
            {"summary": f"Certificate soon.certpager.test expires on {soon_at[:10]} (7-day threshold)",
             "description": f"{soon.server.address} presents the leaf certificate CN=soon.certpager.test "
                            f"(serial {soon_serial}, issued by {ISSUER}) which expires at {soon_at}, inside the "
                            "target's certificate_expiring_7_days threshold.",
             "runbook_url": "docs/runbooks.md#certificate_expiring_7_days", "expires_at": soon_at},
        ),
    }


def target_level_alerts(stack: Stack) -> dict[Key, tuple[dict[str, str], dict[str, str]]]:
    """verify_failed (self-signed endpoint; RSA-1024 endpoint at security level 2), probe_failed (port nobody
    listens on), policy_violation (RSA-1024)."""
    selfsigned, down, weak = stack.endpoints["selfsigned"], stack.down_address, stack.endpoints["weak"]
    address, cn = selfsigned.server.address, "selfsigned.certpager.test"
    common = {"environment": "e2e", "instance": stack.exporter_address, "job": "certpager"}
    return {
        ("CertificateVerifyFailed", address): (
            {"alertname": "CertificateVerifyFailed", "class": "verify_failed", "severity": "critical",
             "certificate": cn, "issuer": cn, "target": address, "service": "svc-selfsigned",
             "reason": "self_signed", **common},
            {"summary": f"Certificate {cn} on {address} does not verify (self_signed)",
             "description": f"Clients connecting to {address} reject its certificate: self_signed. "
                            f"Run `certpager probe {address}` to see the chain as presented.",
             "runbook_url": "docs/runbooks.md#verify_failed",
             "expires_at": rfc3339(selfsigned.chain.leaf.not_after)},
        ),
        ("CertificateProbeFailed", down): (
            {"alertname": "CertificateProbeFailed", "class": "probe_failed", "severity": "warning",
             "certificate": down, "issuer": "unknown", "target": down, "service": "svc-down",
             "reason": "refused", **common},
            {"summary": f"Cannot probe {down} (refused)",
             "description": f"Every probe of {down} for 10 minutes failed with refused; its certificate cannot "
                            f"be checked. Run `certpager probe {down}` from the exporter's host.",
             "runbook_url": "docs/runbooks.md#probe_failed", "expires_at": ""},
        ),
        # An OpenSSL client at its default security level refuses an RSA-1024 leaf too.
        ("CertificateVerifyFailed", weak.server.address): (
            {"alertname": "CertificateVerifyFailed", "class": "verify_failed", "severity": "critical",
             "certificate": "weak.certpager.test", "issuer": ISSUER, "target": weak.server.address,
             "service": "svc-weak", "reason": "weak_key", **common},
            {"summary": f"Certificate weak.certpager.test on {weak.server.address} does not verify (weak_key)",
             "description": f"Clients connecting to {weak.server.address} reject its certificate: weak_key. "
                            f"Run `certpager probe {weak.server.address}` to see the chain as presented.",
             "runbook_url": "docs/runbooks.md#verify_failed",
             "expires_at": rfc3339(weak.chain.leaf.not_after)},
        ),
        ("CertificatePolicyViolation", weak.server.address): (
            {"alertname": "CertificatePolicyViolation", "class": "policy_violation", "severity": "error",
             "certificate": "weak.certpager.test", "issuer": ISSUER, "target": weak.server.address,
             "service": "svc-weak", "policy": "min_rsa_bits", **common},
            {"summary": f"Certificate weak.certpager.test on {weak.server.address} violates policy min_rsa_bits",
             "description": f"{weak.server.address} fails the configured policy min_rsa_bits (see the exporter's "
                            f"policies: section and `certpager probe {weak.server.address}` for the measured value).",
             "runbook_url": "docs/runbooks.md#policy_violation", "expires_at": rfc3339(weak.chain.leaf.not_after)},
        ),
    }


def test_alerts_reach_the_webhook_and_a_renewed_certificate_resolves(stack: Stack) -> None:
    started = time.monotonic()
    expected = expected_alerts(stack)
    try:
        firing = wait_until("the eight alerts at the receiver", lambda: in_state(stack, expected, "firing"), 40)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; received {sorted(latest(stack))}\n{stack.logs()}") from None
    first_page = time.monotonic() - started

    # Exactly these, nothing else: no 30-day alert beside the 7-day one, no verify_failed(expired) beside
    # certificate_expired, nothing for the healthy endpoints.
    assert set(firing) == set(expected)
    assert firing_in_prometheus(stack) == set(expected)
    for key, (labels, notes) in expected.items():
        assert firing[key]["labels"] == labels, key
        assert firing[key]["annotations"] == notes, key
        assert firing[key]["endsAt"] == "0001-01-01T00:00:00Z"
    _check_notifications(stack)

    # Deploy the renewed certificate (the one already on disk): the endpoint's three alerts resolve
    # (send_resolved), the others stay.
    old = {k: firing[k] for k in expected if k[1] == stack.endpoints["expired"].server.address}
    assert len(old) == 3
    stack.swap_certificate("expired", stack.renewed)
    swapped = time.monotonic()
    resolved = wait_until("resolved notifications for the renewed certificate",
                          lambda: in_state(stack, old, "resolved"), 40)
    resolve_delay = time.monotonic() - swapped

    for key, alert in old.items():
        assert resolved[key]["labels"] == alert["labels"]
        assert resolved[key]["fingerprint"] == alert["fingerprint"]
        assert resolved[key]["startsAt"] == alert["startsAt"]
        assert resolved[key]["endsAt"] > resolved[key]["startsAt"]
    still = set(expected) - set(old)
    assert {k for k in still if resolved[k]["status"] == "firing"} == still
    assert set(resolved) == set(expected)  # the renewed certificate raised nothing new
    assert firing_in_prometheus(stack) == still
    _check_notifications(stack)
    print(f"e2e: first notification after {first_page:.1f}s, resolve {resolve_delay:.1f}s after the renewal")


def _check_notifications(stack: Stack) -> None:
    """Every notification came with the bearer token, in webhook format 4, grouped per certificate."""
    assert stack.receiver.rejected == 0
    assert stack.receiver.payloads
    for payload in stack.receiver.payloads:
        assert payload["version"] == "4"
        assert payload["receiver"] == "certpager-bridge"
        assert set(payload["groupLabels"]) == {"class", "certificate", "environment"}
        for alert in payload["alerts"]:
            assert {k: alert["labels"][k] for k in payload["groupLabels"]} == payload["groupLabels"]

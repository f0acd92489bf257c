"""deploy/prometheus's multi-target job: file_sd + relabelling drive the exporter's /probe for real."""

from __future__ import annotations

from tests.e2e.conftest import PROBE_LABELS, Stack
from tests.e2e.harness import wait_until


def test_file_sd_target_is_probed_through_the_exporter(stack: Stack) -> None:
    probed = stack.endpoints["probed"]
    address = probed.server.address
    result = wait_until(
        "the /probe job's first scrape",
        lambda: stack.query('tls_cert_not_after_timestamp_seconds{job="certpager-probe",position="leaf"}')
        ["data"]["result"],
        timeout=20,
    )
    assert len(result) == 1
    labels = result[0]["metric"]
    leaf = probed.chain.leaf
    assert labels == {
        "__name__": "tls_cert_not_after_timestamp_seconds", "job": "certpager-probe", "instance": address,
        "target": address, **PROBE_LABELS, "position": "leaf", "index": "0",
        "subject_cn": "probed.certpager.test", "issuer_cn": "certpager Test Intermediate",
        "serial": format(leaf.cert.serial_number, "x"),
    }
    assert float(result[0]["value"][1]) == leaf.not_after

    success = stack.query('tls_probe_success{job="certpager-probe"}')["data"]["result"]
    assert [(r["metric"]["instance"], r["value"][1]) for r in success] == [(address, "1")]
    # The probe ran on the probed endpoint itself, not on the exporter or on a configured target.
    up = stack.query('up{job="certpager-probe"}')["data"]["result"]
    assert [(r["metric"]["instance"], r["value"][1]) for r in up] == [(address, "1")]
    # The rules see the file_sd labels: the recorded identity uses them like any configured label.
    days = stack.query(f'certpager:cert_days_left{{target="{address}",position="leaf"}}')["data"]["result"]
    assert len(days) == 1
    assert days[0]["metric"]["certificate"] == "probed.certpager.test"
    assert days[0]["metric"]["environment"] == "e2e-probe"
    assert 59.9 < float(days[0]["value"][1]) <= 60.0

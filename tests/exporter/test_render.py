"""The metric renderer: exact values and labels, parsed back with prometheus_client's parser."""

from __future__ import annotations

import pytest

from exporter.config import Config, MetricsSettings, Module, Target
from exporter.probes.base import Phase, Reason, VerifyReason
from exporter.render import FAMILIES, TargetView, escape, format_value, join_families, join_target, render_target
from exporter.results import ResultStore
from exporter.targets import resolve_targets
from tests.exporter.service_fixtures import (
    NOT_AFTER,
    NOT_BEFORE,
    cert,
    chain3,
    failed_result,
    ok_result,
    sample_map,
    value,
)

VIEW = TargetView(target="www.example.test:443", labels={"environment": "prod", "service": "shop"},
                  thresholds={"certificate_expired": 0.0, "certificate_expiring_7_days": 604800.0})


DEFAULT_SETTINGS = MetricsSettings()


def render(results, settings=DEFAULT_SETTINGS, last_good=None, view=VIEW):
    fallback = render_target(view, last_good, settings) if last_good else None
    return join_families([render_target(view, results, settings, fallback)]).decode()


def test_successful_probe_exports_every_family_with_exact_values():
    text = render([ok_result(policy_violations={"min_rsa_bits": False, "forbidden_signature_algorithms": True})])
    s = sample_map(text)
    base = {"target": "www.example.test:443", "environment": "prod", "service": "shop"}
    assert value(s, "tls_probe_success", **base) == 1
    assert value(s, "tls_probe_duration_seconds", phase="handshake") == 0.25
    assert value(s, "tls_probe_duration_seconds", phase="resolve") == 0.001
    assert value(s, "tls_probe_error_info") is None
    leaf = dict(base, position="leaf", index="0", subject_cn="www.example.test", issuer_cn="Example Intermediate",
                serial="10a")
    assert value(s, "tls_cert_not_after_timestamp_seconds", **leaf) == NOT_AFTER
    assert value(s, "tls_cert_not_before_timestamp_seconds", **leaf) == NOT_BEFORE
    assert value(s, "tls_cert_not_after_timestamp_seconds", position="root", index="2") == NOT_AFTER + 2000
    assert value(s, "tls_cert_info", **leaf, sans="www.example.test", key_type="ec", key_bits="256",
                 signature_algorithm="ecdsa-with-SHA256", fingerprint_sha256="00" * 32) == 1
    assert value(s, "tls_chain_earliest_expiry_timestamp_seconds", **base) == NOT_AFTER
    assert value(s, "tls_chain_verified") == 1
    assert value(s, "tls_verify_error_info") is None
    assert value(s, "tls_hostname_verified") == 1
    assert value(s, "tls_connection_info", version="TLS 1.3", cipher="TLS_AES_256_GCM_SHA384") == 1
    assert value(s, "tls_cert_expiry_threshold_seconds", **base, **{"class": "certificate_expiring_7_days"}) == 604800
    assert value(s, "tls_cert_policy_violation", policy="forbidden_signature_algorithms") == 1
    assert value(s, "tls_cert_policy_violation", policy="min_rsa_bits") == 0
    assert len([k for k in s if k[0] == "tls_cert_info"]) == 3


def test_failed_probe_exports_reason_and_no_chain():
    s = sample_map(render([failed_result(Reason.CONNECT_TIMEOUT)]))
    assert value(s, "tls_probe_success") == 0
    assert value(s, "tls_probe_error_info", reason="connect_timeout") == 1
    assert value(s, "tls_cert_not_after_timestamp_seconds") is None
    assert value(s, "tls_chain_verified") is None
    # thresholds are per target, exported whatever the probe did
    assert value(s, "tls_cert_expiry_threshold_seconds", **{"class": "certificate_expired"}) == 0


def test_failed_probe_keeps_last_good_chain_dates():
    s = sample_map(render([failed_result()], last_good=[ok_result(policy_violations={"min_rsa_bits": True})]))
    assert value(s, "tls_probe_success") == 0
    assert value(s, "tls_probe_error_info", reason="refused") == 1
    assert value(s, "tls_probe_duration_seconds", phase="handshake") is None
    assert value(s, "tls_cert_not_after_timestamp_seconds", index="0") == NOT_AFTER
    assert value(s, "tls_chain_earliest_expiry_timestamp_seconds") == NOT_AFTER
    assert value(s, "tls_cert_policy_violation", policy="min_rsa_bits") == 1


def test_store_keeps_last_good_chain_across_failures_and_replaces_it_on_success():
    (a,), _ = resolve_targets(Config(targets=[Target(target="a.test:443")]))
    store = ResultStore()
    store.record(a, [ok_result()])
    store.record(a, [failed_result(Reason.HANDSHAKE_TIMEOUT)])
    store.record(a, [failed_result(Reason.REFUSED)])
    s = sample_map(store.snapshot().render().decode())
    assert value(s, "tls_probe_success") == 0
    assert value(s, "tls_probe_error_info", reason="refused") == 1
    assert value(s, "tls_probe_error_info", reason="handshake_timeout") is None
    assert value(s, "tls_cert_not_after_timestamp_seconds", index="0") == NOT_AFTER
    store.record(a, [ok_result(chain=(cert(not_after=NOT_AFTER + 5),))])
    s = sample_map(store.snapshot().render().decode())
    assert value(s, "tls_cert_not_after_timestamp_seconds", index="0") == NOT_AFTER + 5
    assert value(s, "tls_cert_not_after_timestamp_seconds", index="1") is None
    entry = store.get("a.test:443")
    assert (entry.success, entry.reason, entry.has_chain) == (True, None, True)


def test_never_successful_target_has_no_chain_series():
    (a,), _ = resolve_targets(Config(targets=[Target(target="a.test:443")]))
    store = ResultStore()
    store.record(a, [failed_result(Reason.DNS)])
    s = sample_map(store.snapshot().render().decode())
    assert value(s, "tls_probe_error_info", reason="dns") == 1
    assert value(s, "tls_cert_info") is None


def test_untrusted_expired_chain_keeps_its_dates_and_verdicts():
    expired = chain3(base=1_600_000_000.0)
    s = sample_map(render([ok_result(chain=expired, chain_verified=False, verify_reason=VerifyReason.EXPIRED,
                                     hostname_verified=False)]))
    assert value(s, "tls_probe_success") == 1
    assert value(s, "tls_chain_verified") == 0
    assert value(s, "tls_verify_error_info", reason="expired") == 1
    assert value(s, "tls_hostname_verified") == 0
    assert value(s, "tls_chain_earliest_expiry_timestamp_seconds") == 1_600_000_000


def test_unchecked_verdicts_are_absent():
    s = sample_map(render([ok_result(chain_verified=None, hostname_verified=None)]))
    assert value(s, "tls_chain_verified") is None
    assert value(s, "tls_hostname_verified") is None


def test_heavy_labels_can_be_switched_off():
    text = render([ok_result()], MetricsSettings(cert_info_sans=False, cert_info_fingerprint=False))
    s = sample_map(text)
    labels = dict(next(ls for (n, ls) in s if n == "tls_cert_info"))
    assert "sans" not in labels and "fingerprint_sha256" not in labels
    assert labels["key_bits"] == "256"


def test_label_values_are_escaped_and_parse_back():
    view = TargetView(target="weird:443", labels={"owner": 'a "quoted" \\ back\nslash'}, thresholds={})
    s = sample_map(render([ok_result(chain=(cert(subject_cn='cn "x"\\y'),))], view=view))
    assert value(s, "tls_probe_success", owner='a "quoted" \\ back\nslash') == 1
    assert value(s, "tls_cert_not_after_timestamp_seconds", subject_cn='cn "x"\\y') == NOT_AFTER
    assert escape('a"b') == 'a\\"b'


def test_probe_all_ips_adds_ip_label_per_result():
    view = TargetView(target="dual.test:443", labels={}, thresholds={}, probe_all_ips=True)
    s = sample_map(render([ok_result(ip="127.0.0.1"), failed_result(ip="::1")], view=view))
    assert value(s, "tls_probe_success", ip="127.0.0.1") == 1
    assert value(s, "tls_probe_success", ip="::1") == 0
    assert value(s, "tls_probe_error_info", ip="::1", reason="refused") == 1
    assert value(s, "tls_cert_not_after_timestamp_seconds", ip="127.0.0.1", index="0") == NOT_AFTER


def test_file_results_carry_path():
    view = TargetView(target="/etc/ssl/*.pem", labels={}, thresholds={})
    s = sample_map(render([ok_result(path="/etc/ssl/a.pem", chain=(cert(),), durations={}),
                           ok_result(path="/etc/ssl/b.pem", chain=(cert(not_after=5.0),), durations={})], view=view))
    assert value(s, "tls_cert_not_after_timestamp_seconds", path="/etc/ssl/b.pem") == 5
    assert value(s, "tls_probe_success", path="/etc/ssl/a.pem") == 1


def test_families_are_contiguous_with_one_header_each():
    views = [TargetView(target=f"t{i}:443", labels={}, thresholds={"certificate_expired": 0.0}) for i in range(3)]
    text = join_families([render_target(v, [ok_result()], MetricsSettings()) for v in views]).decode()
    for name, _ in FAMILIES:
        if name in ("tls_probe_error_info", "tls_verify_error_info", "tls_cert_policy_violation"):
            continue
        assert text.count(f"# TYPE {name} gauge\n") == 1
        lines = [i for i, line in enumerate(text.splitlines()) if line.startswith(name + "{")]
        assert lines == list(range(lines[0], lines[0] + len(lines))), name
    assert len(sample_map(text)) > 0


def test_format_value():
    assert format_value(1800000000.0) == "1800000000"
    assert format_value(0.25) == "0.25"
    assert format_value(float("inf")) == "+Inf"


def test_store_rerenders_on_label_change_and_removal_leaves_nothing():
    config = Config(targets=[Target(target="a.test:443", labels={"env": "prod"}),
                             Target(target="b.test:443")])
    (a, b), _ = resolve_targets(config)
    store = ResultStore()
    store.record(a, [ok_result()])
    store.record(b, [ok_result()])
    s = sample_map(store.snapshot().render().decode())
    assert value(s, "tls_probe_success", target="a.test:443", env="prod") == 1
    relabelled = Config(targets=[Target(target="a.test:443", labels={"env": "staging"},
                                        thresholds={"certificate_expired": "1d"})])
    (a2,), _ = resolve_targets(relabelled)
    store.update_target(a2)
    store.remove("b.test:443")
    text = store.snapshot().render().decode()
    assert "b.test" not in text
    s = sample_map(text)
    assert value(s, "tls_probe_success", target="a.test:443", env="staging") == 1
    assert value(s, "tls_probe_success", env="prod") is None
    assert value(s, "tls_cert_not_after_timestamp_seconds", env="staging", index="2") == NOT_AFTER + 2000
    assert value(s, "tls_cert_expiry_threshold_seconds", env="staging", **{"class": "certificate_expired"}) == 86400
    assert value(s, "tls_cert_expiry_threshold_seconds", env="staging",
                 **{"class": "certificate_expiring_30_days"}) == 30 * 86400


def test_snapshot_is_immutable_and_reused_until_a_change():
    config = Config(targets=[Target(target="a.test:443")])
    (a,), _ = resolve_targets(config)
    store = ResultStore()
    store.record(a, [ok_result()])
    first = store.snapshot()
    assert store.snapshot() is first
    store.record(a, [failed_result()])
    assert store.snapshot() is not first
    assert first["a.test:443"].success is True
    assert store.snapshot()["a.test:443"].success is False


def test_render_10000_targets():
    # Correctness at bench scale; how fast it renders is measured by bench/exporter_bench.py, not asserted.
    modules = {"tls": Module()}
    config = Config(modules=modules, targets=[Target(target=f"h{i}.test:443", labels={"env": "prod"})
                                              for i in range(10_000)])
    targets, _ = resolve_targets(config)
    store = ResultStore()
    result = [ok_result(durations={Phase.HANDSHAKE: 0.01})]
    for t in targets:
        store.record(t, result)
    text = store.snapshot().render()
    assert text.count(b"\ntls_cert_info{") == 30_000
    assert text.count(b"# TYPE tls_cert_info gauge\n") == 1
    assert text.count(b'\ntls_probe_success{target="h9999.test:443",env="prod"} 1\n') == 1


def test_shared_certificate_lines_are_stored_once_and_forgotten_after_rotation():
    from exporter.render import INFO

    config = Config(targets=[Target(target=f"s{i}.test:443") for i in range(3)])
    targets, _ = resolve_targets(config)
    store = ResultStore()
    for t in targets:
        store.record(t, [ok_result()])
    blocks = [store.get(t.key).blocks[INFO] for t in targets]
    # pieces: head, suffix per certificate; the intermediate's suffix is one object for every target
    assert blocks[0][3] is blocks[1][3] is blocks[2][3]
    assert blocks[0][1] is blocks[1][1] is blocks[2][1]  # the shared leaf too (the renderer's cache)
    assert blocks[0][0] is not blocks[1][0]
    s = sample_map(store.snapshot().render().decode())
    assert value(s, "tls_cert_info", target="s2.test:443", position="intermediate") == 1
    store._intern_limit = 0  # force the rebuild on the next record
    store.record(targets[0], [ok_result(chain=(cert(not_after=7.0),))])
    # The intermediate and the root x 3 families, and the 3 threshold line ends: leaves are not
    # interned (one target's own, most of them). Nothing else survives the rebuild.
    assert len(store._interned) == 2 * 3 + 3


def test_chunks_are_bounded_and_join_to_the_same_text(monkeypatch):
    import exporter.render as render_module
    from exporter.app import trim_memory

    config = Config(targets=[Target(target=f"c{i}.test:443") for i in range(50)])
    targets, _ = resolve_targets(config)
    store = ResultStore()
    for t in targets:
        store.record(t, [ok_result()])
    whole = store.snapshot().render()
    monkeypatch.setattr(render_module, "CHUNK_PIECES", 16)
    chunks = list(store.snapshot().chunks())
    assert b"".join(chunks) == whole
    assert max(len(c) for c in chunks) < 16 * 400
    assert len(chunks) > 13
    trim_memory()  # glibc: returns freed heap; elsewhere a no-op; never raises


@pytest.mark.parametrize("settings", [MetricsSettings(),
                                      MetricsSettings(cert_info_sans=False, cert_info_fingerprint=False)])
def test_single_target_join_equals_the_many_target_join(settings):
    # /probe uses join_target, /metrics join_families: one target must come out byte for byte the same,
    # whatever the (cached) certificate lines were rendered with before.
    for results in ([ok_result()], [failed_result()]):
        blocks = render_target(VIEW, results, settings)
        assert join_target(blocks) == join_families([blocks])

"""Target resolution and the file_sd watcher: add, change, remove and break files during the test."""

from __future__ import annotations

import json
import os

import pytest

from exporter.config import Config, Module, Target, TargetFile, ThresholdGroup, ThresholdOverrides
from exporter.targets import TargetFileError, TargetFileWatcher, parse_sd_file, resolve_targets
from tests.exporter.service_fixtures import FakeClock, write


def sd(*groups):
    return json.dumps([{"targets": list(t), "labels": labels} for t, labels in groups])


def bump_mtime(path, seconds=10):
    # Two writes within the filesystem's timestamp granularity look unchanged; the watcher also checks size,
    # but the tests change content at equal size too, so move mtime forward explicitly.
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def watcher_for(tmp_path, config, clock=None):
    return TargetFileWatcher(config.target_files, base_dir=tmp_path, clock=clock or FakeClock(), on_error=None)


def names(config, watcher):
    targets, _ = resolve_targets(config, watcher.groups())
    return {t.target: dict(t.labels) for t in targets}


def test_static_targets_merge_defaults_thresholds_and_interval():
    config = Config.model_validate({
        "global": {"scrape_interval": "2m"},
        "modules": {"fast": {"timeout": "2s"}},
        "thresholds": {"certificate_expiring_30_days": "21d"},
        "threshold_groups": [{"match": {"env": "prod"}, "thresholds": {"certificate_expiring_7_days": "10d"}}],
        "targets": [
            {"target": "a.test:443", "labels": {"env": "prod"}},
            {"target": "b.test:443", "module": "fast", "interval": "30s",
             "thresholds": {"certificate_expired": "1d"}, "address": "127.0.0.1:8443"},
        ],
    })
    (a, b), warnings = resolve_targets(config)
    assert warnings == []
    assert (a.module_name, a.interval, a.module.timeout) == ("tls", 120.0, 10.0)
    assert a.thresholds == {"certificate_expiring_30_days": 21 * 86400.0, "certificate_expiring_7_days": 10 * 86400.0,
                            "certificate_expired": 0.0}
    assert (b.module_name, b.interval, b.module.timeout, b.address) == ("fast", 30.0, 2.0, "127.0.0.1:8443")
    assert b.thresholds["certificate_expired"] == 86400.0
    assert b.thresholds["certificate_expiring_7_days"] == 7 * 86400.0


def test_file_sd_groups_resolve_with_entry_module_and_group_thresholds(tmp_path):
    write(tmp_path / "sd" / "a.json", sd((["x.test:443", "y.test:8443"], {"env": "prod"})))
    config = Config(modules={"m": Module(timeout=4)},
                    target_files=[TargetFile(files=["sd/*.json"], module="m", interval=45)],
                    threshold_groups=[ThresholdGroup(match={"env": "prod"},
                                                     thresholds=ThresholdOverrides(certificate_expired=3600))])
    w = watcher_for(tmp_path, config)
    assert w.poll() is True
    targets, _ = resolve_targets(config, w.groups())
    assert [(t.target, t.module_name, t.interval, t.source) for t in targets] == [
        ("x.test:443", "m", 45.0, str(tmp_path / "sd" / "a.json")),
        ("y.test:8443", "m", 45.0, str(tmp_path / "sd" / "a.json"))]
    assert targets[0].thresholds["certificate_expired"] == 3600.0


def test_static_target_wins_over_file_duplicate(tmp_path):
    write(tmp_path / "a.yml", "- targets: [a.test:443]\n  labels: {env: file}\n")
    config = Config(targets=[Target(target="a.test:443", labels={"env": "static"})],
                    target_files=[TargetFile(files=["a.yml"])])
    w = watcher_for(tmp_path, config)
    w.poll()
    targets, warnings = resolve_targets(config, w.groups())
    assert [dict(t.labels) for t in targets] == [{"env": "static"}]
    assert len(warnings) == 1 and "already defined by config" in warnings[0]


def test_watcher_picks_up_add_change_break_and_remove(tmp_path):
    clock = FakeClock()
    errors = []
    config = Config(target_files=[TargetFile(files=["sd/*.yml", "sd/*.json"], refresh_interval=30)])
    w = TargetFileWatcher(config.target_files, base_dir=tmp_path, clock=clock, on_error=errors.append)
    assert w.poll() is False and names(config, w) == {}
    # add
    a = write(tmp_path / "sd" / "a.yml", "- targets: [a.test:443]\n  labels: {env: prod}\n")
    assert w.poll() is False  # not due yet: refresh_interval
    clock.now += 30
    assert w.poll() is True
    assert names(config, w) == {"a.test:443": {"env": "prod"}}
    # a second file matching the other glob
    write(tmp_path / "sd" / "b.json", sd((["b.test:443"], {})))
    clock.now += 30
    assert w.poll() is True
    assert set(names(config, w)) == {"a.test:443", "b.test:443"}
    # change at equal size
    a.write_text("- targets: [a.test:443]\n  labels: {env: test}\n")
    bump_mtime(a)
    clock.now += 30
    assert w.poll() is True
    assert names(config, w)["a.test:443"] == {"env": "test"}
    # touch without a content change is not a change
    bump_mtime(a)
    clock.now += 30
    assert w.poll() is False
    # break: last good content stays, the error is reported once
    a.write_text("- targets: [a.test:443\n")
    bump_mtime(a)
    clock.now += 30
    assert w.poll() is False
    assert names(config, w)["a.test:443"] == {"env": "test"}
    assert w.file_status() == {str(a): False, str(tmp_path / "sd" / "b.json"): True}
    assert len(errors) == 1 and str(a) in errors[0] and "invalid YAML" in errors[0]
    clock.now += 30
    w.poll()
    assert len(errors) == 1
    # fixed again
    a.write_text("- targets: [c.test:443]\n")
    bump_mtime(a)
    clock.now += 30
    assert w.poll() is True
    assert set(names(config, w)) == {"c.test:443", "b.test:443"}
    assert all(w.file_status().values())
    # remove: its targets go, like in Prometheus
    a.unlink()
    clock.now += 30
    assert w.poll() is True
    assert set(names(config, w)) == {"b.test:443"}
    assert list(w.file_status()) == [str(tmp_path / "sd" / "b.json")]


def test_next_due_follows_each_entry_refresh_interval(tmp_path):
    clock = FakeClock(start=100.0)
    config = Config(target_files=[TargetFile(files=["a.yml"], refresh_interval=10),
                                  TargetFile(files=["b.yml"], refresh_interval=25)])
    w = TargetFileWatcher(config.target_files, base_dir=tmp_path, clock=clock)
    assert w.next_due() == float("-inf")
    w.poll()
    assert w.next_due() == 110.0
    clock.now = 110.0
    w.poll()
    assert w.next_due() == 120.0


@pytest.mark.parametrize(("name", "content", "message"), [
    ("bad.json", "{", "bad.json: invalid JSON"),
    ("bad.yml", "targets: [a]", "expected a list of {targets: [...], labels: {...}} groups"),
    ("bad.yml", "- labels: {a: b}\n", "[0].targets: required key is missing"),
    ("bad.yml", "- targets: [a.test:443]\n  labels: {target: x}\n", "label name 'target' is reserved"),
    ("bad.yml", "- targets: [a.test:443]\n  labels: {1x: y}\n", "'1x' is not a valid Prometheus label name"),
    ("bad.yml", "- targets: ['']\n", "targets must be non-empty strings"),
    ("bad.yml", "- targets: [a.test:443]\n  extra: 1\n", "[0].extra: unknown key"),
])
def test_parse_errors_name_file_and_key(name, content, message):
    with pytest.raises(TargetFileError) as err:
        parse_sd_file(f"/etc/sd/{name}", content)
    assert message in str(err.value)
    assert str(err.value).startswith(f"/etc/sd/{name}: ")


def test_meta_labels_are_dropped_and_empty_file_is_no_targets():
    groups = parse_sd_file("x.yml", "- targets: [a.test:443]\n  labels: {__meta_x: y, env: prod}\n")
    assert groups[0].labels == {"env": "prod"}
    assert parse_sd_file("x.yml", "") == []


def test_undecodable_file_keeps_last_good(tmp_path):
    clock = FakeClock()
    f = write(tmp_path / "a.yml", "- targets: [a.test:443]\n")
    config = Config(target_files=[TargetFile(files=[str(f)])])
    errors = []
    w = TargetFileWatcher(config.target_files, base_dir=tmp_path, clock=clock, on_error=errors.append)
    w.poll()
    f.write_bytes(b"- targets: [\xff\xfe]\n")
    bump_mtime(f)
    clock.now += 60
    assert w.poll() is False
    assert names(config, w) == {"a.test:443": {}}
    assert len(errors) == 1


def test_file_broken_at_reload_keeps_its_last_good_targets(tmp_path):
    clock = FakeClock()
    f = write(tmp_path / "a.yml", "- targets: [a.test:443]\n")
    config = Config(target_files=[TargetFile(files=["*.yml"])])
    errors = []
    old = TargetFileWatcher(config.target_files, base_dir=tmp_path, clock=clock)
    old.poll()
    f.write_text("- targets: [\n")
    new = TargetFileWatcher(config.target_files, base_dir=tmp_path, clock=clock, on_error=errors.append,
                            previous=old)
    new.poll()
    assert names(config, new) == {"a.test:443": {}}
    assert new.file_status() == {str(f): False}
    assert len(errors) == 1

"""deploy/kubernetes: the base with each overlay, rendered by the real `kubectl kustomize` (kubectl v1.29.4,
kustomize v5.0.4, scripts/install-deploy-tools), every object checked as the chart's are (tests/deploy/k8s.py)."""

from __future__ import annotations

import pytest

from tests.deploy.k8s import Expect, check_all, kustomize, of_kind

OVERLAYS = {
    "sqlite": Expect(probes=4, external={("Secret", "certpager-bridge")}),
    "postgresql": Expect(
        store="postgresql", bridge_replicas=3, probes=4,
        external={("Secret", "certpager-bridge"), ("Secret", "certpager-postgres")},
    ),
}


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_every_rendered_object(overlay, tmp_path):
    objects = kustomize(overlay)
    check_all(objects, OVERLAYS[overlay], tmp_path)
    assert {o["metadata"]["namespace"] for o in objects} == {"certpager"}


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_config_maps_are_content_named(overlay):
    """A changed config file makes a new ConfigMap name, so the Deployments roll to it."""
    objects = kustomize(overlay)
    config_maps = {c["metadata"]["name"] for c in of_kind(objects, "ConfigMap")}
    for deployment in of_kind(objects, "Deployment"):
        (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
        name = volume["configMap"]["name"]
        assert name in config_maps and name.rsplit("-", 1)[0] in ("certpager-exporter", "certpager-bridge")
        assert name.rsplit("-", 1)[1], "a hash suffix"


def test_overlays_differ_only_in_the_store():
    sqlite, postgresql = (
        {(o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap" else o["metadata"]["name"])
         for o in kustomize(overlay)}
        for overlay in ("sqlite", "postgresql")
    )
    assert sqlite - postgresql == {("PersistentVolumeClaim", "certpager-bridge")}
    assert postgresql - sqlite == {("PodDisruptionBudget", "certpager-bridge")}

"""Every overlay and component builds, every object validates strictly and offline, and the
components embed the very config files the live tests run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nova.deploy import build_overlay, validate_documents
from nova.deploy.manifests import crd_schema_path

from .conftest import DEPLOY, EMBEDDED, REPO, SITE_COPIES

pytestmark = pytest.mark.deploy

COMPONENTS = ["turn", "turn,turn/hostnetwork", "ingress-tls", "gateway-tls", "monitoring",
              "monitoring,grafana", "monitoring-operator", "gitops", "gitops/migrate-hook"]


def _by(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"].startswith(name):
            return doc
    raise AssertionError(f"no {kind} {name} in {[d['metadata']['name'] for d in docs]}")


def test_overlay_production_builds_and_validates(production: Path) -> None:
    docs = build_overlay(production)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Application",
            "AppProject", "StatefulSet", "Job"} <= kinds
    assert validate_documents(docs, ("1.29", "1.31", "1.33")) == []
    assert validate_documents(build_overlay(production / "secrets")) == []


def test_overlay_production_wires_params_and_argocd(production: Path) -> None:
    docs = build_overlay(production)
    apps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Application"}
    assert set(apps) == {"messaging-service", "turn-server", "monitoring-stack"}
    for app in apps.values():
        spec = app["spec"]
        assert spec["source"]["repoURL"] == "https://github.com/acme/nova.git"
        assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
        assert "retry" in spec["syncPolicy"]
    messaging = apps["messaging-service"]["spec"]
    assert "RespectIgnoreDifferences=true" in messaging["syncPolicy"]["syncOptions"]
    assert messaging["ignoreDifferences"][0]["jsonPointers"] == ["/spec/replicas"]
    hook = _by(docs, "Job", "nova-migrate")["metadata"]["annotations"]
    assert hook["argocd.argoproj.io/hook"] == "PreSync"
    settings = _by(docs, "ConfigMap", "nova-settings")["data"]
    assert settings["NOVA_CORS_ORIGINS"] == "https://chat.acme-corp.io"
    assert "turn:203.0.113.10:3478?transport=udp" in settings["NOVA_TURN_URLS"]
    assert not any(d["kind"] == "ConfigMap" and d["metadata"]["name"] == "deploy-params"
                   for d in docs), "the local-config params must not reach the cluster"
    # Each Application's path is a buildable overlay of this repository.
    for app in apps.values():
        sub = DEPLOY.parent / app["spec"]["source"]["path"]
        assert (sub / "kustomization.yaml").is_file(), sub


def test_overlay_production_deployment_is_hardened(production: Path) -> None:
    docs = build_overlay(production)
    dep = _by(docs, "Deployment", "nova")
    pod = dep["spec"]["template"]["spec"]
    assert dep["metadata"]["namespace"] == "nova-messaging"
    assert dep["spec"]["replicas"] == 3
    assert pod["automountServiceAccountToken"] is False
    assert pod["initContainers"][0]["args"] == ["migrate"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["terminationGracePeriodSeconds"] > 10 + 20  # preStop + NOVA_SHUTDOWN_GRACE
    main = pod["containers"][0]
    assert main["args"] == ["serve", "--host", "0.0.0.0"]
    assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"
    for c in [*pod["initContainers"], *pod["containers"]]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    hpa = _by(docs, "HorizontalPodAutoscaler", "nova")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
               for m in hpa["metrics"]}
    assert targets == {"cpu": 70, "memory": 80}
    assert _by(docs, "PodDisruptionBudget", "nova")["spec"]["minAvailable"] == 2


def test_overlay_local_builds_one_replica_on_a_volume(local: Path) -> None:
    docs = build_overlay(local)
    assert validate_documents(docs) == []
    dep = _by(docs, "Deployment", "nova")
    assert dep["spec"]["replicas"] == 1
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "nova-data"
    assert not {d["kind"] for d in docs} & {"HorizontalPodAutoscaler", "PodDisruptionBudget"}


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_builds_and_validates(scratch: Path, component: str) -> None:
    wrapper = scratch / "wrapper"
    wrapper.mkdir()
    (wrapper / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../base"],
        "components": [f"../components/{c}" for c in component.split(",")],
        "images": [{"name": "nova", "newName": "ghcr.io/acme/nova", "newTag": "1.0.0"}],
    }))
    docs = build_overlay(wrapper)
    assert len(docs) > 7
    assert validate_documents(docs) == []


def test_embedded_config_files_are_byte_identical(production: Path, scratch: Path) -> None:
    docs = build_overlay(production)
    for (configmap, key), path in EMBEDDED.items():
        data = _by(docs, "ConfigMap", configmap)["data"]
        expected = path.read_text()
        if (configmap, key) in SITE_COPIES:  # production: init's site copy (test_site_params)
            expected = (production / "monitoring/site" / key).read_text()
        assert data[key] == expected, f"{configmap}/{key} differs from {path}"
    # The components themselves embed every shipped file byte for byte.
    wrapper = scratch / "wrapper"
    wrapper.mkdir()
    (wrapper / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "components": ["../components/turn", "../components/monitoring",
                       "../components/grafana"]}))
    docs = build_overlay(wrapper)
    for (configmap, key), path in EMBEDDED.items():
        assert _by(docs, "ConfigMap", configmap)["data"][key] == path.read_text(), path


def test_turn_exposes_listening_and_relay_ports(production: Path) -> None:
    docs = build_overlay(production)
    args = _by(docs, "Deployment", "coturn")["spec"]["template"]["spec"]["containers"][0]["args"]
    lo = int(next(a for a in args if a.startswith("--min-port=")).split("=")[1])
    hi = int(next(a for a in args if a.startswith("--max-port=")).split("=")[1])
    assert "--static-auth-secret=$(TURN_SECRET)" in args
    udp = {(p["port"], p["protocol"]) for p in _by(docs, "Service", "coturn-udp")["spec"]["ports"]}
    tcp = {(p["port"], p["protocol"]) for p in _by(docs, "Service", "coturn-tcp")["spec"]["ports"]}
    assert {(3478, "UDP"), (3479, "UDP")} <= udp
    assert {(port, "UDP") for port in range(lo, hi + 1)} <= udp, "relay range not exposed"
    assert (3478, "TCP") in tcp


def test_turn_hostnetwork_variant_drops_services(scratch: Path) -> None:
    wrapper = scratch / "wrapper"
    wrapper.mkdir()
    (wrapper / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "components": ["../components/turn", "../components/turn/hostnetwork"]}))
    docs = build_overlay(wrapper)
    pod = _by(docs, "Deployment", "coturn")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert not any(a.startswith(("--min-port", "--max-port")) for a in pod["containers"][0]["args"])
    assert not any(d["kind"] == "Service" for d in docs)


def test_validation_is_strict_and_fails_unknown_kinds() -> None:
    deployment = yaml.safe_load((DEPLOY / "base/nova-deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    problems = validate_documents([deployment])
    assert problems and "portz" in problems[0]
    unknown = {"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no schema" in validate_documents([unknown])[0]
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
               "metadata": {"name": "x"},
               "spec": {"selector": {}, "endpoint": [{"port": "http"}]}}
    assert any("endpoint" in p for p in validate_documents([monitor]))


def test_vendored_schemas_keep_licence_and_provenance() -> None:
    schemas = REPO / "src/nova/deploy/schemas"
    assert (schemas / "LICENSE.datreeio-CRDs-catalog").read_text().startswith("MIT")
    assert "datreeio/CRDs-catalog" in (schemas / "README.md").read_text()
    app = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application"}
    assert crd_schema_path(app).is_file()

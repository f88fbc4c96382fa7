"""The HTTPS-entry Kubernetes objects: build with kustomize, validate offline, check policy.

Built-in kinds go to kubernetes-validate's bundled schemas; cert-manager and Gateway API
kinds to the CRD schemas in ../shared/schemas via check-jsonschema.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSIONS = ("1.30", "1.33")
CRD_GROUPS = ("cert-manager.io", "gateway.networking.k8s.io")


def _schemas_dir() -> Path:
    """The CRD schemas the project vendors (the same MIT-licensed files as shared/schemas)."""
    path = ROOT / "src" / "nova" / "deploy" / "schemas"
    assert (path / "cert-manager.io" / "clusterissuer_v1.json").exists(), path
    return path


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is required to build the Kustomize components")
        pytest.skip("kubectl is not installed")
    return kubectl


def build(component: str, tmp_path: Path) -> list[dict[str, Any]]:
    """The component plus the base NetworkPolicy, as an overlay would include them."""
    overlay = tmp_path / component
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "nova-messaging",
        "resources": [os.path.relpath(DEPLOY / "base" / "nova-networkpolicy.yaml", overlay)],
        "components": [os.path.relpath(DEPLOY / "components" / component, overlay)],
    }))
    out = subprocess.run([_kubectl(), "kustomize", "--load-restrictor",
                          "LoadRestrictionsNone", str(overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def check_crds(docs: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema each CRD object against its schema; one run per schema file."""
    schemas = _schemas_dir()
    by_schema: dict[Path, list[Path]] = {}
    for i, doc in enumerate(docs):
        group, _, version = doc["apiVersion"].rpartition("/")
        if group not in CRD_GROUPS:
            continue
        schema = schemas / group / f"{doc['kind'].lower()}_{version}.json"
        assert schema.exists(), f"no schema for {doc['apiVersion']} {doc['kind']}"
        path = tmp_path / f"doc{i}-{doc['kind'].lower()}.yaml"
        path.write_text(yaml.safe_dump(doc))
        by_schema.setdefault(schema, []).append(path)
    assert by_schema, "no CRD objects to check"
    tool = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.CompletedProcess[str]([], 0, "", "")
    for schema, files in by_schema.items():
        run = subprocess.run([str(tool), "--schemafile", str(schema), *map(str, files)],
                             capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            return run
        result.stdout += run.stdout
    return result


def check_builtin(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["apiVersion"].rpartition("/")[0] in CRD_GROUPS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("component", ["ingress-tls", "gateway-tls"])
def test_edge_component_builds_and_validates(component: str, tmp_path: Path) -> None:
    docs = build(component, tmp_path)
    check_builtin(docs)
    result = check_crds(docs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    issuers = by_kind(docs, "ClusterIssuer")
    assert set(issuers) == {"letsencrypt-staging", "letsencrypt-production", "selfsigned"}
    assert "staging" in issuers["letsencrypt-staging"]["spec"]["acme"]["server"]
    assert issuers["letsencrypt-production"]["spec"]["acme"]["server"] == \
        "https://acme-v02.api.letsencrypt.org/directory"
    for name in ("letsencrypt-staging", "letsencrypt-production"):
        assert issuers[name]["spec"]["acme"]["email"] == "admin@example.com"
    assert issuers["selfsigned"]["spec"] == {"selfSigned": {}}


def test_crd_validation_catches_a_broken_object(tmp_path: Path) -> None:
    docs = build("gateway-tls", tmp_path)
    route = by_kind(docs, "HTTPRoute")["nova"]
    route["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefix"  # not a Gateway API type
    issuer = by_kind(docs, "ClusterIssuer")["letsencrypt-staging"]
    issuer["spec"]["acme"]["solvers"][0]["http01"]["ingress"] = {"clas": "nginx"}
    result = check_crds([route], tmp_path)
    assert result.returncode != 0 and "Prefix" in result.stdout + result.stderr
    result = check_crds([issuer], tmp_path)
    assert result.returncode != 0


def test_ingress_carries_the_edge_policy(tmp_path: Path) -> None:
    docs = build("ingress-tls", tmp_path)
    ingresses = by_kind(docs, "Ingress")
    main = ingresses["nova"]
    a = main["metadata"]["annotations"]
    p = "nginx.ingress.kubernetes.io/"
    assert a[p + "limit-rps"] == "100"
    assert a[p + "limit-connections"] == "10"
    assert a[p + "proxy-read-timeout"] == "3600" and a[p + "proxy-send-timeout"] == "3600"
    assert a[p + "ssl-redirect"] == "true" and a[p + "force-ssl-redirect"] == "true"
    assert a[p + "enable-cors"] == "true"
    assert a[p + "cors-allow-origin"] == "https://app.example.com"
    assert "Authorization" in a[p + "cors-allow-headers"]
    assert a[p + "custom-headers"] == "nova-messaging/nova-security-headers"
    assert a["cert-manager.io/cluster-issuer"] == "letsencrypt-production"
    for ingress in ingresses.values():
        assert not any("snippet" in k for k in ingress["metadata"].get("annotations", {}))
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert ingress["spec"]["tls"] == [{"hosts": ["nova.example.com"],
                                           "secretName": "nova-tls-cert"}]
        assert ingress["spec"]["rules"][0]["host"] == "nova.example.com"
    deny = ingresses["nova-metrics-deny"]
    assert deny["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/metrics"
    assert deny["metadata"]["annotations"][p + "denylist-source-range"] == "0.0.0.0/0,::/0"
    headers = by_kind(docs, "ConfigMap")["nova-security-headers"]["data"]
    assert headers == {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                       "Referrer-Policy": "no-referrer"}
    for issuer in by_kind(docs, "ClusterIssuer").values():
        for solver in issuer["spec"].get("acme", {}).get("solvers", []):
            assert solver["http01"]["ingress"]["ingressClassName"] == "nginx"


def test_gateway_carries_tls_timeouts_and_no_metrics(tmp_path: Path) -> None:
    docs = build("gateway-tls", tmp_path)
    gateway = by_kind(docs, "Gateway")["nova"]
    listeners = {li["name"]: li for li in gateway["spec"]["listeners"]}
    assert listeners["https"]["tls"]["certificateRefs"][0]["name"] == "nova-tls-cert"
    assert listeners["https"]["hostname"] == "nova.example.com"
    cert = by_kind(docs, "Certificate")["nova-tls-cert"]
    assert cert["spec"]["secretName"] == "nova-tls-cert"
    assert cert["spec"]["dnsNames"] == ["nova.example.com"]
    routes = by_kind(docs, "HTTPRoute")
    redirect = routes["nova-redirect"]
    assert redirect["spec"]["parentRefs"][0]["sectionName"] == "http"
    assert redirect["spec"]["rules"][0]["filters"][0]["requestRedirect"]["scheme"] == "https"
    rules = {r["name"]: r for r in routes["nova"]["spec"]["rules"]}
    assert rules["websocket"]["matches"][0]["path"] == {"type": "PathPrefix", "value": "/ws"}
    assert rules["websocket"]["timeouts"] == {"request": "3600s", "backendRequest": "3600s"}
    paths = [m["path"]["value"] for r in rules.values() for m in r["matches"]]
    assert "/health" in paths
    assert not any(p == "/" or p.startswith("/metrics") for p in paths)
    for rule in rules.values():
        names = {h["name"] for f in rule["filters"]
                 for h in f["responseHeaderModifier"]["set"]}
        assert {"Strict-Transport-Security", "X-Frame-Options"} <= names
    for issuer in by_kind(docs, "ClusterIssuer").values():
        for solver in issuer["spec"].get("acme", {}).get("solvers", []):
            ref = solver["http01"]["gatewayHTTPRoute"]["parentRefs"][0]
            assert (ref["name"], ref["sectionName"]) == ("nova", "http")


def test_networkpolicy_admits_only_the_edge_and_prometheus(tmp_path: Path) -> None:
    docs = build("ingress-tls", tmp_path)
    policy = by_kind(docs, "NetworkPolicy")["nova-ingress"]
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == "nova-messaging"
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "nova"
    edge, prometheus = spec["ingress"]
    expr = edge["from"][0]["namespaceSelector"]["matchExpressions"][0]
    assert "ingress-nginx" in expr["values"]
    assert prometheus["from"][0]["podSelector"]["matchLabels"] == \
        {"app.kubernetes.io/name": "prometheus"}
    for rule in spec["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]

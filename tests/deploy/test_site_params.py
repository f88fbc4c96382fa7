"""The parameters of `nova deploy init` reach every object that needs them, and the parts the
TURN, HTTPS and monitoring issues own fit together (names, ports, paths, labels, RBAC)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nova.deploy import build_overlay, check_overlay, validate_documents
from nova.deploy.check import check_turn_args
from nova.deploy.site import (
    PROMETHEUS_RULE_FILE,
    prometheus_rule,
    render_prometheus_rule,
    runbook_base_url,
)

from .conftest import DEPLOY, need_program

pytestmark = pytest.mark.deploy
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterIssuer",
                  "GatewayClass", "PersistentVolume", "StorageClass"}


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and
             re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def _all_strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _all_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _all_strings(v)]
    return [value] if isinstance(value, str) else []


def _switch_to_gateway(production: Path) -> None:
    kustomization = production / "messaging/kustomization.yaml"
    text = kustomization.read_text()
    assert text.count("  - ../../../components/ingress-tls\n") == 1
    kustomization.write_text(text.replace("components/ingress-tls\n", "components/gateway-tls\n"))


def test_https_objects_take_domain_email_and_origin(production: Path) -> None:
    docs = build_overlay(production)
    for name in ("nova", "nova-metrics-deny"):
        ingress = _one(docs, "Ingress", name)
        assert [r["host"] for r in ingress["spec"]["rules"]] == ["chat.acme-corp.io"]
        assert ingress["spec"]["tls"][0]["hosts"] == ["chat.acme-corp.io"]
    annotations = _one(docs, "Ingress", "nova")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/cors-allow-origin"] == \
        "https://chat.acme-corp.io"
    issuers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterIssuer"}
    assert {n: i["spec"].get("acme", {}).get("email") for n, i in issuers.items()} == {
        "letsencrypt-staging": "ops@acme-corp.io", "letsencrypt-production": "ops@acme-corp.io",
        "selfsigned": None}
    live = [ln for d in docs for s in _all_strings(d) for ln in s.splitlines()
            if not ln.lstrip().startswith("#")]  # comments of embedded files may say example
    assert not [ln for ln in live if "example.com" in ln]


def test_gateway_variant_is_a_one_line_switch(production: Path) -> None:
    _switch_to_gateway(production)
    docs = build_overlay(production)
    assert not any(d["kind"] == "Ingress" for d in docs)
    gateway = _one(docs, "Gateway", "nova")["spec"]
    assert gateway["gatewayClassName"] == "eg"
    assert {ln["hostname"] for ln in gateway["listeners"]} == {"chat.acme-corp.io"}
    for route in (d for d in docs if d["kind"] == "HTTPRoute"):
        assert route["spec"]["hostnames"] == ["chat.acme-corp.io"]
    assert _one(docs, "Certificate", "nova-tls-cert")["spec"]["dnsNames"] == \
        ["chat.acme-corp.io"]
    assert validate_documents(docs) == []
    assert check_overlay(production) == []


def test_cluster_scoped_objects_carry_no_namespace(production: Path) -> None:
    for gateway in (False, True):
        if gateway:
            _switch_to_gateway(production)
        for doc in build_overlay(production):
            ns = doc["metadata"].get("namespace")
            if doc["kind"] in CLUSTER_SCOPED:
                assert ns is None, f"{doc['kind']}/{doc['metadata']['name']} stamped {ns}"
            else:
                assert ns, f"{doc['kind']}/{doc['metadata']['name']} has no namespace"


def test_check_fails_on_placeholder_domain(production: Path) -> None:
    params = production / "messaging/params.env"
    params.write_text(re.sub(r"(?m)^DOMAIN=.*$", "DOMAIN=nova.example.com", params.read_text()))
    problems = [str(p) for p in check_overlay(production)]
    for where in ("Ingress/nova-messaging/nova spec.rules.0.host",
                  "Ingress/nova-messaging/nova spec.tls.0.hosts.0"):
        assert any(p.startswith(where) and "example domain" in p for p in problems), problems


def test_check_fails_on_the_shipped_alertmanager_and_smtp_placeholders(scratch: Path) -> None:
    overlay = scratch / "overlays/production"
    from nova.deploy import init_overlay

    from .conftest import STRONG

    given = {k: v for k, v in STRONG.items()
             if k not in ("alert_email_to", "smtp_smarthost", "smtp_password")}
    result = init_overlay(overlay, domain="chat.acme-corp.io", email="ops@acme-corp.io",
                          turn_external_ip="203.0.113.10", repo_url="https://github.com/a/n.git",
                          **given)
    assert len(result.placeholders) == 3
    problems = [str(p) for p in check_overlay(overlay)]
    assert any("alertmanager-secrets.smtp-password" in p for p in problems), problems
    assert any(p.startswith("ConfigMap/nova-monitoring/alertmanager-config") and ".invalid" in p
               for p in problems), problems
    # the shipped file itself, put back in place of the site copy, is refused too
    site = overlay / "monitoring/site/alertmanager.yml"
    site.write_text((DEPLOY / "config/alertmanager/alertmanager.yml").read_text())
    problems = [str(p) for p in check_overlay(overlay)]
    assert any("alertmanager-config" in p and "example.com" in p for p in problems), problems


def test_site_copies_differ_from_shipped_files_only_in_site_values(production: Path) -> None:
    shipped = yaml.safe_load((DEPLOY / "config/alertmanager/alertmanager.yml").read_text())
    site = yaml.safe_load((production / "monitoring/site/alertmanager.yml").read_text())
    assert site["global"]["smtp_smarthost"] == "smtp.acme-corp.io:587"
    assert site["global"]["smtp_from"] == "nova-alerts@chat.acme-corp.io"
    assert site["receivers"][0]["email_configs"][0]["to"] == "oncall@acme-corp.io"
    for key in ("smtp_smarthost", "smtp_from", "smtp_auth_username"):
        shipped["global"].pop(key), site["global"].pop(key)
    for doc in (shipped, site):
        for receiver in doc["receivers"]:
            for email in receiver.get("email_configs", []):
                email.pop("to")
    assert site == shipped
    rules = yaml.safe_load((DEPLOY / "config/prometheus/rules/nova.rules.yml").read_text())
    site_rules = yaml.safe_load((production / "monitoring/site/nova.rules.yml").read_text())
    base = "https://github.com/acme/nova/blob/main/docs/operations/runbooks.md#"
    for group, site_group in zip(rules["groups"], site_rules["groups"], strict=True):
        for rule, site_rule in zip(group["rules"], site_group["rules"], strict=True):
            if "runbook_url" in rule.get("annotations", {}):
                url = site_rule["annotations"].pop("runbook_url")
                assert url == base + rule["annotations"].pop("runbook_url").split("#")[1]
            assert rule == site_rule


def test_site_copies_pass_amtool_and_promtool(production: Path) -> None:
    amtool = need_program("amtool", "checks the site alertmanager.yml")
    promtool = need_program("promtool", "checks the site rules")
    site = production / "monitoring/site"
    for cmd in ([amtool, "check-config", str(site / "alertmanager.yml")],
                [promtool, "check", "rules", str(site / "nova.rules.yml")]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runbook_url_from_repository() -> None:
    assert runbook_base_url("git@github.com:acme/nova.git", "prod") == \
        "https://github.com/acme/nova/blob/prod/docs/operations/runbooks.md"
    assert runbook_base_url("https://gitlab.acme.io/ops/nova", "main") == \
        "https://gitlab.acme.io/ops/nova/-/blob/main/docs/operations/runbooks.md"
    assert runbook_base_url("https://git.acme.io/nova.git", "main") is None


def test_coturn_denies_cluster_ranges_and_exports_metrics(scratch: Path) -> None:
    from nova.deploy import init_overlay

    from .conftest import STRONG

    overlay = scratch / "overlays/production"
    init_overlay(overlay, domain="chat.acme-corp.io", email="ops@acme-corp.io",
                 turn_external_ip="203.0.113.10", repo_url="https://github.com/acme/nova.git",
                 pod_cidr="100.96.0.0/11", service_cidr="100.64.0.0/13", **STRONG)
    docs = build_overlay(overlay)
    dep = _one(docs, "Deployment", "coturn")
    pod = dep["spec"]["template"]["metadata"]
    assert pod["labels"]["app.kubernetes.io/name"] == "coturn"  # prometheus.yml job coturn
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:3] == ["-c", "/etc/coturn/turnserver.conf",
                             "--static-auth-secret=$(TURN_SECRET)"]
    assert {"--realm=$(TURN_REALM)", "--external-ip=$(TURN_EXTERNAL_IP)", "--prometheus",
            "--denied-peer-ip=$(TURN_DENIED_POD_RANGE)",
            "--denied-peer-ip=$(TURN_DENIED_SERVICE_RANGE)"} <= set(c["args"])
    params = _one(docs, "ConfigMap", "coturn-params")["data"]
    assert params == {"TURN_DENIED_POD_RANGE": "100.96.0.0-100.127.255.255",
                      "TURN_DENIED_SERVICE_RANGE": "100.64.0.0-100.71.255.255"}
    refs = {e["name"]: e["valueFrom"]["configMapKeyRef"]["name"] for e in c["env"]
            if "configMapKeyRef" in e.get("valueFrom", {})}
    assert set(refs.values()) == {_one(docs, "ConfigMap", "coturn-params")["metadata"]["name"]}
    assert {(p["containerPort"], p["protocol"]) for p in c["ports"]} >= {(9641, "TCP")}
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/etc/coturn", "/var/tmp"} <= mounts
    assert check_turn_args(docs) == []
    policy = _one(docs, "NetworkPolicy", "coturn")["spec"]["ingress"]
    assert any({"port": 9641, "protocol": "TCP"} in rule["ports"] for rule in policy)


def test_check_fails_without_cluster_ranges(production: Path) -> None:
    params = production / "turn/params.env"
    params.write_text("TURN_DENIED_POD_RANGE=10.244.0.0/16\nTURN_DENIED_SERVICE_RANGE=x\n")
    problems = [p.message for p in check_overlay(production)]
    assert "--denied-peer-ip=10.244.0.0/16: not an address or start-end range " \
           "(coturn refuses CIDR)" in problems
    assert "--denied-peer-ip=x: not an address or start-end range (coturn refuses CIDR)" \
        in problems
    docs = build_overlay(production)
    dep = _one(docs, "Deployment", "coturn")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    c["args"] = [a for a in c["args"] if not a.startswith("--denied-peer-ip")]
    assert [p.message for p in check_turn_args(docs)] == [
        "no --denied-peer-ip for the cluster's pod and service ranges "
        "(nova deploy init --pod-cidr --service-cidr)"]


def test_nova_pods_carry_the_scrape_annotations_prometheus_keeps(production: Path) -> None:
    prom = yaml.safe_load((DEPLOY / "config/prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "nova")
    namespaces = job["kubernetes_sd_configs"][0]["namespaces"]["names"]
    docs = build_overlay(production)
    dep = _one(docs, "Deployment", "nova")
    assert dep["metadata"]["namespace"] in namespaces
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    assert re.fullmatch(keep["regex"], annotations["prometheus.io/scrape"])
    ports = {p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert int(annotations["prometheus.io/port"]) in ports
    assert annotations["prometheus.io/path"] == "/metrics"
    settings = _one(docs, "ConfigMap", "nova-settings")["data"]
    assert settings["NOVA_PORT"] == annotations["prometheus.io/port"]


def test_prometheus_rbac_mounts_and_alertmanager_fit_the_configs(production: Path) -> None:
    docs = build_overlay(production)
    rules = [r for r in _one(docs, "ClusterRole", "nova-prometheus")["rules"]
             if r.get("apiGroups") == [""]]

    def allowed(resource: str, verb: str) -> bool:
        return any(resource in r["resources"] and verb in r["verbs"] for r in rules)

    for resource in ("pods", "nodes"):
        assert allowed(resource, "list") and allowed(resource, "watch"), resource
    assert allowed("nodes/proxy", "get")
    prom = yaml.safe_load(_one(docs, "ConfigMap", "prometheus-config")["data"]["prometheus.yml"])
    sts = _one(docs, "StatefulSet", "prometheus")["spec"]["template"]["spec"]
    container = sts["containers"][0]
    config_file = next(a.split("=", 1)[1] for a in container["args"]
                       if a.startswith("--config.file="))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    rules_cm = _one(docs, "ConfigMap", "prometheus-rules")
    volume = next(v for v in sts["volumes"] if v.get("configMap", {}).get("name") ==
                  rules_cm["metadata"]["name"])
    for pattern in prom["rule_files"]:
        full = str(Path(config_file).parent / pattern)
        for key in rules_cm["data"]:
            assert Path(mounts[volume["name"]], key).match(full), (full, key)
    am = yaml.safe_load(_one(docs, "ConfigMap", "alertmanager-config")["data"]
                        ["alertmanager.yml"])
    files = [v for k, v in am["global"].items() if k.endswith("_file")]
    amdep = _one(docs, "Deployment", "alertmanager")
    assert amdep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == \
        "alertmanager"
    amc = amdep["spec"]["template"]["spec"]["containers"][0]
    assert 9093 in {p["containerPort"] for p in amc["ports"]}
    secret_mount = next(m["mountPath"] for m in amc["volumeMounts"] if m["name"] == "secrets")
    secret = next(d for d in build_overlay(production / "secrets")
                  if d["metadata"]["name"] == "alertmanager-secrets")
    assert sorted(files) == sorted(f"{secret_mount}/{k}" for k in secret["data"])


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    path = DEPLOY / PROMETHEUS_RULE_FILE
    assert path.read_text() == render_prometheus_rule(DEPLOY), \
        "stale: run `nova deploy gen-prometheusrule`"
    shipped = yaml.safe_load((DEPLOY / "config/prometheus/rules/nova.rules.yml").read_text())
    rule = yaml.safe_load(path.read_text())
    assert rule["spec"]["groups"] == shipped["groups"]
    assert validate_documents([rule]) == []
    broken = prometheus_rule("groups: [{name: x, rules: [{alert: A, expr: 1, for: soon}]}]")
    assert validate_documents([broken]) != []


def test_init_turns_cidrs_into_coturn_ranges(scratch: Path) -> None:
    from nova.deploy import init_overlay
    from nova.deploy.params import InitError

    from .conftest import STRONG

    with pytest.raises(InitError, match="--pod-cidr"):
        init_overlay(scratch / "overlays/production", domain="a.acme-corp.io",
                     email="o@acme-corp.io", turn_external_ip="203.0.113.10",
                     repo_url="https://x.io/r.git", pod_cidr="10.0.0.0/33", **STRONG)

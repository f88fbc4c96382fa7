"""Site copies of shipped config files, and the PrometheusRule built from the alert rules.

Kustomize cannot substitute part of a file, and Alertmanager and Prometheus rules have no
environment expansion. So for the few values only an operator knows (SMTP relay, on-call
address, where the runbooks live), ``nova deploy init`` writes a *site copy* of the shipped
file next to the overlay, changed in exactly those fields, and the overlay's
configMapGenerator replaces the shipped ConfigMap with it. Everything else stays the
shipped file (tests compare them field by field).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

RULES_FILE = Path("config/prometheus/rules/nova.rules.yml")
ALERTMANAGER_FILE = Path("config/alertmanager/alertmanager.yml")
RUNBOOKS_PATH = "docs/operations/runbooks.md"
PROMETHEUS_RULE_NAME = "nova"


def _yaml() -> Any:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: Any, value: str) -> Any:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, _str)
    return yaml, Dumper


def dump_yaml(data: Any) -> str:
    yaml, dumper = _yaml()
    return str(yaml.dump(data, Dumper=dumper, sort_keys=False, width=1000,
                         allow_unicode=True))


def runbook_base_url(repo_url: str, revision: str) -> str | None:
    """The web URL of docs/operations/runbooks.md in ``repo_url`` (GitHub, GitLab), or None."""
    m = re.match(r"^(?:https://|ssh://git@|git@)(github\.com|gitlab\.[^/:]+)[/:](.+?)(?:\.git)?/?$",
                 repo_url.strip())
    if not m:
        return None
    host, path = m.groups()
    blob = "blob" if host == "github.com" else "-/blob"
    return f"https://{host}/{path}/{blob}/{revision}/{RUNBOOKS_PATH}"


def site_rules(rules_text: str, runbook_url: str) -> str:
    """The shipped rules with every alert's ``runbook_url`` pointing at ``runbook_url``."""
    yaml, _ = _yaml()
    doc = yaml.safe_load(rules_text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            annotations = rule.get("annotations") or {}
            if "runbook_url" in annotations:
                anchor = annotations["runbook_url"].partition("#")[2]
                annotations["runbook_url"] = f"{runbook_url}#{anchor}" if anchor else runbook_url
    return ("# Written by `nova deploy init` from deploy/config/prometheus/rules/nova.rules.yml:\n"
            "# the same rules, runbook_url pointing at your repository. Re-run init to refresh.\n"
            + dump_yaml(doc))


def site_alertmanager(config_text: str, *, smarthost: str, email_from: str,
                      smtp_username: str, email_to: str) -> str:
    """The shipped alertmanager.yml with the site's SMTP relay and on-call address."""
    yaml, _ = _yaml()
    doc = yaml.safe_load(config_text)
    glob = doc.setdefault("global", {})
    if "smtp_smarthost" in glob:
        glob["smtp_smarthost"] = smarthost
        glob["smtp_from"] = email_from
        glob["smtp_auth_username"] = smtp_username
    for receiver in doc.get("receivers") or []:
        for email in receiver.get("email_configs") or []:
            email["to"] = email_to
    return ("# Written by `nova deploy init` from deploy/config/alertmanager/alertmanager.yml:\n"
            "# the same routes and receivers with your SMTP relay and on-call address.\n"
            "# Secrets stay in files under /etc/alertmanager/secrets/ (from a Secret).\n"
            + dump_yaml(doc))


def prometheus_rule(rules_text: str, namespace: str = "nova-messaging") -> dict[str, Any]:
    """A PrometheusRule (Prometheus operator) carrying exactly the groups of ``rules_text``."""
    yaml, _ = _yaml()
    groups = yaml.safe_load(rules_text)["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": PROMETHEUS_RULE_NAME,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "nova", "app.kubernetes.io/part-of": "nova",
                       "app.kubernetes.io/component": "monitoring"},
        },
        "spec": {"groups": groups},
    }


PROMETHEUS_RULE_FILE = Path("components/monitoring-operator/nova-prometheusrule.yaml")


def render_prometheus_rule(deploy_dir: Path) -> str:
    """The text of components/monitoring-operator/nova-prometheusrule.yaml."""
    rules = (deploy_dir / RULES_FILE).read_text()
    return ("# GENERATED from deploy/config/prometheus/rules/nova.rules.yml: do not edit.\n"
            "# Regenerate: nova deploy gen-prometheusrule   (tests/deploy fail on drift)\n"
            + dump_yaml(prometheus_rule(rules)))


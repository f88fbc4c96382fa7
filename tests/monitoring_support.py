"""Shared helpers for the monitoring tests (tests/deploy and tests/e2e load this by path).

Debian's prometheus/promtool are built WITHOUT ``kubernetes_sd_configs``. To test the shipped
prometheus.yml with them, ``derive_prometheus_config`` swaps every ``kubernetes_sd_configs``
block for ``file_sd_configs`` whose targets carry the same ``__meta_kubernetes_*`` labels that
Kubernetes pod discovery would produce (``k8s_pod_target``), so the shipped relabel rules run
unchanged against a real Prometheus.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "deploy" / "config"
PROMETHEUS_YML = CONFIG / "prometheus" / "prometheus.yml"
RULES_DIR = CONFIG / "prometheus" / "rules"
RULES_YML = RULES_DIR / "nova.rules.yml"
RULES_TEST_YML = RULES_DIR / "nova.rules.test.yml"
ALERTMANAGER_YML = CONFIG / "alertmanager" / "alertmanager.yml"
DASHBOARD_JSON = CONFIG / "grafana" / "dashboards" / "nova.json"
RUNBOOKS_MD = REPO / "docs" / "operations" / "runbooks.md"


def require_program(name: str) -> str:
    """The program's path; FAIL under CI=true when missing, else skip with the reason."""
    path = shutil.which(name)
    if path:
        return path
    message = (f"{name} is not installed (scripts/install-system installs it from "
               "scripts/apt-packages.txt)")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _meta_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def k8s_pod_target(
    address: str,
    *,
    namespace: str,
    pod: str,
    container: str = "main",
    container_port: int | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    """A file_sd target group with the labels Kubernetes pod discovery gives a container port."""
    meta = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_container_init": "false",
    }
    if container_port is not None:
        meta["__meta_kubernetes_pod_container_port_number"] = str(container_port)
    for key, value in (annotations or {}).items():
        meta[f"__meta_kubernetes_pod_annotation_{_meta_name(key)}"] = value
        meta[f"__meta_kubernetes_pod_annotationpresent_{_meta_name(key)}"] = "true"
    for key, value in (labels or {}).items():
        meta[f"__meta_kubernetes_pod_label_{_meta_name(key)}"] = value
        meta[f"__meta_kubernetes_pod_labelpresent_{_meta_name(key)}"] = "true"
    return {"targets": [address], "labels": meta}


def derive_prometheus_config(
    workdir: Path,
    *,
    targets: dict[str, list[dict[str, Any]]] | None = None,
    alertmanager_targets: list[dict[str, Any]] | None = None,
    scrape_interval: str | None = None,
    static_jobs: dict[str, list[str]] | None = None,
) -> Path:
    """Write a runnable copy of the shipped prometheus.yml into ``workdir``; return its path.

    - each ``kubernetes_sd_configs`` becomes ``file_sd_configs`` reading ``sd/<job>.json``,
      filled from ``targets[job]`` (default: no targets);
    - ``static_jobs`` replaces a job's targets by static ones (e.g. prometheus itself);
    - rule_files point at the shipped rules (same glob), credential/CA files at empty files.
    """
    config = copy.deepcopy(load_yaml(PROMETHEUS_YML))
    sd_dir = workdir / "sd"
    sd_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir = workdir / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    targets = targets or {}

    def swap(block: dict[str, Any], name: str, groups: list[dict[str, Any]]) -> None:
        if "kubernetes_sd_configs" in block:
            del block["kubernetes_sd_configs"]
            path = sd_dir / f"{name}.json"
            path.write_text(json.dumps(groups))
            block["file_sd_configs"] = [{"files": [str(path)], "refresh_interval": "1s"}]

    for job in config["scrape_configs"]:
        name = job["job_name"]
        if static_jobs and name in static_jobs:
            job.pop("kubernetes_sd_configs", None)
            job["static_configs"] = [{"targets": static_jobs[name]}]
        swap(job, name, targets.get(name, []))
        if scrape_interval:
            job["scrape_interval"] = scrape_interval
            job["scrape_timeout"] = scrape_interval
        tls = job.get("tls_config", {})
        if "ca_file" in tls:
            tls["ca_file"] = str(_touch(secrets_dir / "ca.crt"))
        auth = job.get("authorization", {})
        if "credentials_file" in auth:
            auth["credentials_file"] = str(_touch(secrets_dir / "token"))
    for i, am in enumerate(config.get("alerting", {}).get("alertmanagers", [])):
        swap(am, f"alertmanagers-{i}", alertmanager_targets or [])
    if scrape_interval:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["scrape_timeout"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    config["rule_files"] = [str(RULES_DIR / Path(f).name) for f in config["rule_files"]]
    out = workdir / "prometheus.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def _touch(path: Path) -> Path:
    path.touch()
    return path


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of the shipped dashboard, variables filled in."""
    dash = json.loads(DASHBOARD_JSON.read_text())
    out: list[tuple[str, str]] = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], fill_grafana_variables(target["expr"])))
    return out


def fill_grafana_variables(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
        .replace("$namespace", "nova-messaging")
    )


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in load_yaml(RULES_YML)["groups"]:
        rules += [r for r in group["rules"] if "alert" in r]
    return rules


def recording_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in load_yaml(RULES_YML)["groups"]:
        rules += [r for r in group["rules"] if "record" in r]
    return rules


def poll(what: str, check: Callable[[], Any], timeout: float = 60,
         interval: float = 0.3) -> Any:
    """Call ``check`` until it returns something truthy (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")

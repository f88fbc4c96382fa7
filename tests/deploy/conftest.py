"""Deploy-kit fixtures: a scratch copy of deploy/ with `nova deploy init` applied."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nova.deploy import init_overlay

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TOOLS = REPO / ".tools"
# The config files the TURN, monitoring and HTTPS issues own; the kit embeds them.
EMBEDDED = {
    ("coturn-config", "turnserver.conf"): DEPLOY / "config/coturn/turnserver.conf",
    ("prometheus-config", "prometheus.yml"): DEPLOY / "config/prometheus/prometheus.yml",
    ("prometheus-rules", "nova.rules.yml"): DEPLOY / "config/prometheus/rules/nova.rules.yml",
    ("alertmanager-config", "alertmanager.yml"): DEPLOY / "config/alertmanager/alertmanager.yml",
    ("grafana-dashboards", "nova.json"): DEPLOY / "config/grafana/dashboards/nova.json",
}
REQUIRED_COMPONENTS = [DEPLOY / "components/ingress-tls", DEPLOY / "components/gateway-tls"]
REQUIRED_FILES = [DEPLOY / "base/nova-networkpolicy.yaml"]
STRONG = {
    "database_url": "postgresql://nova:Xk3r9vQpL2mZ8wYt7bN4@db.acme-corp.io:5432/nova",
    "redis_url": "redis://:Qw8eR7tY6uI5oP4aS3dFg@redis.acme-corp.io:6379/0",
    "slack_webhook_url": "https://hooks.slack.com/services/T0001/B0001/abcdEFGHijklMNOP",
    "alert_email_to": "oncall@acme-corp.io",
    "smtp_smarthost": "smtp.acme-corp.io:587",
    "smtp_password": "Vb7nM2qX9kL4pR8t",
}
# Embedded as is in components/monitoring, replaced by init's site copies in production.
SITE_COPIES = {("alertmanager-config", "alertmanager.yml"), ("prometheus-rules", "nova.rules.yml")}


def need_program(path: str | Path, why: str) -> str:
    """Return the program; FAIL when CI=true and it is missing, else skip with a reason."""
    found = shutil.which(str(path)) if not Path(path).is_absolute() else (
        str(path) if Path(path).exists() else None)
    if found:
        return found
    msg = f"{path} is missing ({why}); run scripts/install-system"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def require_config_files() -> None:
    """The files other issues own must exist: a missing one FAILS (never skips)."""
    missing = [str(p.relative_to(REPO)) for p in EMBEDDED.values() if not p.is_file()]
    missing += [str(p.relative_to(REPO)) for p in REQUIRED_COMPONENTS
                if not (p / "kustomization.yaml").is_file()]
    missing += [str(p.relative_to(REPO)) for p in REQUIRED_FILES if not p.is_file()]
    if missing:
        pytest.fail("deploy kit incomplete, missing: " + ", ".join(missing))


@pytest.fixture
def kubectl() -> str:
    return need_program("kubectl", "kubectl kustomize builds the overlays")


@pytest.fixture
def scratch(tmp_path: Path, kubectl: str) -> Path:
    """A copy of deploy/ (without any untracked file of the working tree)."""
    require_config_files()
    dst = tmp_path / "deploy"
    shutil.copytree(DEPLOY, dst, ignore=shutil.ignore_patterns("secrets", "params.env"))
    return dst


@pytest.fixture
def production(scratch: Path) -> Path:
    overlay = scratch / "overlays/production"
    init_overlay(overlay, domain="chat.acme-corp.io", email="ops@acme-corp.io",
                 turn_external_ip="203.0.113.10", repo_url="https://github.com/acme/nova.git",
                 **STRONG)
    return overlay


@pytest.fixture
def local(scratch: Path) -> Path:
    overlay = scratch / "overlays/local"
    init_overlay(overlay)
    return overlay

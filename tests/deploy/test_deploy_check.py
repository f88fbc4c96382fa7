"""`nova deploy check` passes after `nova deploy init`, and names each problem otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nova.deploy import check_overlay, init_overlay
from nova.deploy.check import check_turn_config, check_workloads, weak_secret_reason
from nova.deploy.params import InitError

from .conftest import EMBEDDED

pytestmark = pytest.mark.deploy


def _nova(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nova", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_check_passes_after_init(production: Path) -> None:
    assert check_overlay(production) == []
    proc = _nova("deploy", "check", str(production))
    assert proc.returncode == 0, proc.stderr
    assert "ready to deploy" in proc.stdout


def test_check_passes_on_local_after_init(local: Path) -> None:
    assert check_overlay(local) == []


def test_check_fails_on_placeholders_naming_each(scratch: Path) -> None:
    overlay = scratch / "overlays/production"
    proc = _nova("deploy", "init", "--overlay", str(overlay), "--domain", "chat.acme-corp.io",
                 "--email", "ops@acme-corp.io", "--turn-external-ip", "203.0.113.10",
                 "--repo-url", "https://github.com/acme/nova.git")
    assert proc.returncode == 0, proc.stderr
    assert "database URL" in proc.stderr  # init says what is left to fill in
    proc = _nova("deploy", "check", str(overlay))
    assert proc.returncode == 1
    for where in ("nova-secrets.database-url", "nova-secrets.redis-url",
                  "alertmanager-secrets.slack-webhook-url"):
        assert where in proc.stderr, proc.stderr


def test_check_fails_on_weak_secret(production: Path) -> None:
    env = production / "secrets/nova-secrets.env"
    lines = [ln for ln in env.read_text().splitlines() if not ln.startswith("jwt-secret=")]
    env.write_text("\n".join([*lines, "jwt-secret=supersecret"]) + "\n")
    problems = [str(p) for p in check_overlay(production)]
    assert problems == ["Secret/nova-messaging/nova-secrets.jwt-secret: weak secret: "
                        "too short (11 characters, at least 32)"]


def test_check_fails_on_latest_tag(production: Path) -> None:
    kustomization = production / "messaging/kustomization.yaml"
    text = kustomization.read_text()
    assert "newTag: 0.1.0" in text
    kustomization.write_text(text.replace("newTag: 0.1.0", "newTag: latest"))
    problems = [str(p) for p in check_overlay(production)]
    assert problems and all("latest tag" in p for p in problems)
    assert any("Deployment/nova-messaging/nova container nova" in p for p in problems)


def test_check_fails_on_example_domain_and_todo(production: Path) -> None:
    params = production / "messaging/params.env"
    params.write_text(params.read_text().replace("https://chat.acme-corp.io",
                                                 "https://nova.example.com"))
    nova_env = production.parents[1] / "config/nova/nova.env"
    nova_env.write_text(nova_env.read_text() + "NOVA_EXTERNAL_JWT_ISSUER=TODO\n")
    problems = [str(p) for p in check_overlay(production)]
    assert any("NOVA_CORS_ORIGINS: example domain" in p for p in problems), problems
    assert any("NOVA_EXTERNAL_JWT_ISSUER: TODO marker" in p for p in problems), problems


def test_check_without_init_says_so(scratch: Path) -> None:
    problems = [str(p) for p in check_overlay(scratch / "overlays/production")]
    assert any("run `nova deploy init` first" in p for p in problems)


def test_init_writes_strong_distinct_private_secrets(production: Path) -> None:
    env = dict(ln.split("=", 1) for ln in
               (production / "secrets/nova-secrets.env").read_text().splitlines())
    assert weak_secret_reason(env["jwt-secret"]) is None
    assert env["jwt-secret"] != env["turn-shared-secret"]
    turn = dict(ln.split("=", 1) for ln in
                (production / "secrets/coturn-secrets.env").read_text().splitlines())
    assert turn["static-auth-secret"] == env["turn-shared-secret"]
    assert turn["external-ip"] == "203.0.113.10"
    assert os.stat(production / "secrets/nova-secrets.env").st_mode & 0o077 == 0


def test_init_refuses_bad_input_and_overwrites(production: Path) -> None:
    with pytest.raises(InitError, match="refusing to overwrite"):
        init_overlay(production, domain="a.acme-corp.io", email="o@acme-corp.io",
                     turn_external_ip="203.0.113.10", repo_url="https://x.io/r.git")
    with pytest.raises(InitError, match="--turn-external-ip"):
        init_overlay(production, domain="a.acme-corp.io", email="o@acme-corp.io",
                     turn_external_ip="not-an-ip", repo_url="https://x.io/r.git", force=True)


def test_gitignore_covers_init_output(production: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    for rel in ("deploy/overlays/production/secrets/nova-secrets.env",
                "deploy/overlays/production/params.env",
                "deploy/overlays/production/messaging/params.env"):
        proc = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", rel],
                              check=False, timeout=30)
        assert proc.returncode == 0, f"{rel} is not ignored by git"


def test_workload_checks_name_privileged_and_missing_limits() -> None:
    pod = {"kind": "Deployment", "metadata": {"name": "x", "namespace": "n"},
           "spec": {"template": {"spec": {"containers": [
               {"name": "c", "image": "r/x:1.0", "securityContext": {"privileged": True}},
               {"name": "d", "image": "r/y", "resources": {"limits": {"cpu": "1",
                                                                    "memory": "1Gi"}}}]}}}}
    problems = [str(p) for p in check_workloads([pod], allow_latest=False)]
    assert problems == [
        "Deployment/n/x container c: no resource limit for cpu, memory",
        "Deployment/n/x container c: privileged container",
        "Deployment/n/x container d: image 'r/y' uses the latest tag (pin a version)",
    ]


def test_turn_config_check_requires_denied_peers() -> None:
    problems = [p.message for p in check_turn_config("conf", "use-auth-secret\n"
                                                     "allow-loopback-peers\n")]
    assert "allow-loopback-peers is set (test-only option)" in problems
    assert "no denied-peer-ip covering 10.0.0.0/8" in problems
    good = EMBEDDED[("coturn-config", "turnserver.conf")]
    if good.is_file():
        assert check_turn_config("conf", good.read_text()) == []

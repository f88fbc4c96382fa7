"""The backup component: it builds and validates strictly on its own and inside production,
its CronJobs run the very `nova` commands the CLI has, and `nova deploy check` passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from nova.cli import main
from nova.deploy import build_overlay, validate_documents
from nova.deploy.check import check_overlay

pytestmark = pytest.mark.deploy


def _cronjobs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "CronJob"}


def _pod(cronjob: dict[str, Any]) -> dict[str, Any]:
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _assert_cli_accepts(args: list[str]) -> None:
    """The args parse against the real CLI (`--help` appended: nothing runs)."""
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, f"nova {' '.join(args)}: {result.output}"


def test_backup_component_builds_and_validates(scratch: Path) -> None:
    wrapper = scratch / "wrapper"
    wrapper.mkdir()
    (wrapper / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../base"], "components": ["../components/backup"],
        "images": [{"name": "nova", "newName": "ghcr.io/acme/nova", "newTag": "1.0.0"}],
    }))
    docs = build_overlay(wrapper)
    assert validate_documents(docs, ("1.29", "1.31", "1.33")) == []
    assert set(_cronjobs(docs)) == {"nova-backup", "nova-restore-test"}
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "nova-backups"
    assert pvc["metadata"]["namespace"] == "nova-messaging"


def test_production_backs_up_and_restore_tests(production: Path) -> None:
    docs = build_overlay(production)
    jobs = _cronjobs(docs)
    backup, drill = jobs["nova-backup"], jobs["nova-restore-test"]
    for job in (backup, drill):
        assert job["metadata"]["namespace"] == "nova-messaging"
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        pod = _pod(job)
        assert pod["automountServiceAccountToken"] is False
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"]
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert ":" in c["image"] and not c["image"].endswith(":latest")
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
                  for v in pod["volumes"]}
        assert claims["backups"] == "nova-backups"

    pod = _pod(backup)
    (step,) = pod["initContainers"]
    assert step["image"] == "ghcr.io/nova-messaging/nova:0.1.0"
    assert step["args"][:3] == ["backup", "create", "--out"]
    assert step["args"][3].startswith("/backups")
    _assert_cli_accepts(step["args"][:2])
    (upload,) = pod["containers"]
    assert upload["envFrom"] == [{"secretRef": {"name": "nova-backup-s3", "optional": True}}]
    script = upload["args"][0]
    assert 'if [ -z "${NOVA_BACKUP_S3_URL:-}" ]' in script and "aws s3 cp" in script
    assert all(m["readOnly"] for m in upload["volumeMounts"] if m["name"] == "backups")

    (verify,) = _pod(drill)["containers"]
    assert verify["args"] == ["backup", "verify", "/backups"]
    _assert_cli_accepts(verify["args"][:2])
    assert all(m["readOnly"] for m in verify["volumeMounts"] if m["name"] == "backups")
    # The drill never runs while a backup is being written (same RWO volume).
    backup_minute = backup["spec"]["schedule"].split()[0]
    drill_minute = drill["spec"]["schedule"].split()[0]
    assert backup_minute != drill_minute


def test_production_with_backups_passes_deploy_check(production: Path) -> None:
    problems = [str(p) for p in check_overlay(production)]
    assert [p for p in problems if "backup" in p or "restore-test" in p] == []


def test_deploy_check_catches_a_backup_cronjob_without_limits(production: Path) -> None:
    path = production.parents[1] / "components/backup/nova-restore-test-cronjob.yaml"
    doc = yaml.safe_load(path.read_text())
    del _pod(doc)["containers"][0]["resources"]["limits"]
    path.write_text(yaml.safe_dump(doc))
    problems = [str(p) for p in check_overlay(production)]
    assert any("nova-restore-test" in p and "no resource limit" in p for p in problems), problems

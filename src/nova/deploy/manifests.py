"""Build a Kustomize overlay and validate every object offline.

Built-in kinds go to kubernetes-validate's bundled schemas (strict: unknown fields fail);
CRD kinds go to the JSON schemas vendored in ``schemas/`` (datreeio/CRDs-catalog layout,
``<group>/<kind>_<version>.json``). A kind with no schema FAILS: kubernetes-validate on its
own only warns and passes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).parent / "schemas"
DEFAULT_KUBE_VERSIONS = ("1.29", "1.31")


class BuildError(RuntimeError):
    """kustomize could not build the overlay (the message is kustomize's)."""


def kustomize_command() -> list[str]:
    """``kubectl kustomize`` if kubectl is installed, else ``kustomize build``."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    raise BuildError("neither kubectl nor kustomize is installed (needed to build overlays)")


def build_overlay(path: Path) -> list[dict[str, Any]]:
    """Run kustomize on ``path`` and return the rendered objects."""
    import yaml

    proc = subprocess.run([*kustomize_command(), str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
    if proc.returncode != 0:
        raise BuildError(proc.stderr.strip() or f"kustomize failed on {path}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def object_name(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{doc.get('kind', '?')}/{ns + '/' if ns else ''}{name}"


@cache
def _crd_validator(path: Path) -> Any:
    import jsonschema

    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def crd_schema_path(doc: dict[str, Any], schema_dir: Path = SCHEMA_DIR) -> Path:
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    return schema_dir / group / f"{str(doc.get('kind', '')).lower()}_{version}.json"


def validate_documents(docs: list[dict[str, Any]],
                       kube_versions: tuple[str, ...] = DEFAULT_KUBE_VERSIONS,
                       schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Validate every object strictly; return one message per problem (empty: all valid)."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    problems: list[str] = []
    for doc in docs:
        name = object_name(doc)
        if not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
            problems.append(f"{name}: apiVersion and kind are required")
            continue
        for version in kube_versions:
            try:
                kubernetes_validate.validate(doc, version, True)
            except ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                problems.append(f"{name} (Kubernetes {version}): {path}: {exc.message}")
            except SchemaNotFoundError:
                schema = crd_schema_path(doc, schema_dir)
                if not schema.is_file():
                    problems.append(f"{name}: no schema for {doc['apiVersion']} "
                                    f"{doc['kind']} (looked for {schema.name})")
                    break
                errors = sorted(_crd_validator(schema).iter_errors(doc),
                                key=lambda e: list(e.absolute_path))
                problems.extend(
                    f"{name}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                    for e in errors
                )
                break  # CRD schemas do not depend on the Kubernetes version
    return problems

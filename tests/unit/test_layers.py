"""STYLE.md §2: domain/ and calls/ never import starlette, fastapi, sqlalchemy or redis;
http/ and gateway/ never import nova.storage or nova.broker. Walks every import statement,
including those inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "nova"

RULES = {
    "domain": ("starlette", "fastapi", "sqlalchemy", "redis", "alembic", "uvicorn",
               "nova.storage", "nova.broker", "nova.http", "nova.gateway", "nova.app"),
    "calls": ("starlette", "fastapi", "sqlalchemy", "redis", "alembic", "uvicorn",
              "nova.storage", "nova.broker", "nova.http", "nova.gateway", "nova.app"),
    "http": ("nova.storage", "nova.broker"),
    "gateway": ("nova.storage", "nova.broker"),
    # nova verify checks a deployment from the outside, as a client: never the server's insides
    "verify": ("starlette", "fastapi", "sqlalchemy", "redis", "alembic", "uvicorn",
               "nova.storage", "nova.broker", "nova.http", "nova.gateway", "nova.app",
               "nova.domain"),
}


def imported_modules(source: str, module: str) -> set[str]:
    """Every module named by an import in ``source`` (relative imports resolved)."""
    package = module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(layer: str, source: str, module: str) -> list[str]:
    banned = RULES[layer]
    return sorted(name for name in imported_modules(source, module)
                  if any(name == b or name.startswith(b + ".") for b in banned))


def _modules() -> list[tuple[str, Path]]:
    out = []
    for layer in RULES:
        for path in sorted((SRC / layer).rglob("*.py")):
            out.append((layer, path))
    return out


@pytest.mark.parametrize(("layer", "path"), _modules(),
                         ids=[f"{p.relative_to(SRC)}" for _, p in _modules()])
def test_layers_module_imports_only_what_its_layer_may(layer: str, path: Path) -> None:
    rel = path.relative_to(SRC.parent).with_suffix("")
    module = ".".join(rel.parts)
    assert violations(layer, path.read_text(), module) == []


def test_layers_every_layer_has_modules_to_check() -> None:
    for layer in RULES:
        assert list((SRC / layer).glob("*.py")), layer


@pytest.mark.parametrize(("layer", "source", "bad"), [
    ("domain", "import sqlalchemy\n", "sqlalchemy"),
    ("domain", "def f():\n    from redis.asyncio import Redis\n", "redis.asyncio"),
    ("domain", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
               "    from starlette.requests import Request\n", "starlette.requests"),
    ("calls", "import fastapi\n", "fastapi"),
    ("http", "from nova.storage.store import SqlStore\n", "nova.storage.store"),
    ("http", "from ..storage import store\n", "nova.storage"),
    ("gateway", "from nova import broker\n", "nova.broker"),
])
def test_layers_checker_catches_a_violation(layer: str, source: str, bad: str) -> None:
    assert bad in violations(layer, source, f"nova.{layer}.example")


def test_layers_checker_allows_the_permitted_imports() -> None:
    ok = "from nova.domain.models import User\nfrom nova.errors import NotFound\nimport jwt\n"
    assert violations("http", ok, "nova.http.example") == []
    assert violations("domain", "from .models import User\n", "nova.domain.example") == []

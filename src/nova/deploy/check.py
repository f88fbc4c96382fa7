"""``nova deploy check``: the preflight an operator runs before ``kubectl apply``.

Builds the overlay and its ``secrets/`` folder, validates every object offline, and lists
every problem: placeholders (TODO, changeme, example domains), default or weak secrets,
containers without resource limits, ``latest`` or missing image tags outside the local
overlay, privileged containers, and a TURN config without the denied-peer ranges.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nova.deploy.manifests import (
    DEFAULT_KUBE_VERSIONS,
    BuildError,
    build_overlay,
    object_name,
    validate_documents,
)
from nova.deploy.params import SECRETS_DIR

PLACEHOLDER_PATTERNS = [
    (re.compile(r"\bTODO\b|\bFIXME\b|\bXXX\b"), "TODO marker"),
    # word-bounded: "replacement" (a relabel key) is no placeholder
    (re.compile(r"\b(change[-_ ]?me|replace[-_ ]?me|fill[-_ ]?in)\b", re.I), "placeholder"),
    (re.compile(r"(^|[^a-z0-9-])example\.(com|org|net)\b|\.example\b|\.invalid\b|"
                r"\bexample\.invalid\b", re.I), "example domain"),
]
WEAK_SECRETS = {"secret", "password", "changeme", "admin", "nova", "postgres", "redis",
                "default", "test", "12345678", "letmein", "qwerty"}
MIN_SECRET_LENGTH = 32
MIN_PASSWORD_LENGTH = 16
# Peers a TURN relay must never reach (SSRF into the cluster and the cloud metadata API).
# Loopback is denied by coturn itself unless allow-loopback-peers is set (refused below).
REQUIRED_DENIED_PEERS = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fe80::/10")]
# Keys whose values are free-form settings, not secrets.
_NON_SECRET_KEYS = {"realm", "external-ip", "type", "url", "username"}
# Passwords of outside services the operator brings (not made up by `nova deploy init`).
_EXTERNAL_PASSWORD_KEYS = {"smtp-password"}


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}.{i}")
    elif isinstance(value, str):
        yield path, value


def find_placeholders(where: str, text: str) -> list[Problem]:
    out = []
    for pattern, what in PLACEHOLDER_PATTERNS:
        match = pattern.search(text)
        if match:
            out.append(Problem(where, f"{what} {match.group(0).strip()!r}"))
    return out


def weak_secret_reason(value: str, min_length: int = MIN_SECRET_LENGTH) -> str | None:
    """Why ``value`` is not an acceptable secret, or None."""
    if not value:
        return "empty"
    if value.lower() in WEAK_SECRETS or any(p.search(value) for p, _ in PLACEHOLDER_PATTERNS[:2]):
        return "a default or placeholder value"
    if len(value) < min_length:
        return f"too short ({len(value)} characters, at least {min_length})"
    if len(set(value)) < 10:
        return "too few distinct characters"
    return None


def _check_secret_value(where: str, key: str, value: str) -> list[Problem]:
    if key in _NON_SECRET_KEYS:
        return find_placeholders(f"{where}.{key}", value)
    if "://" in value:  # a URL: check its password and host
        problems = find_placeholders(f"{where}.{key}", value)
        parts = urlsplit(value)
        if parts.scheme.startswith(("postgres", "redis", "rediss")):
            reason = weak_secret_reason(parts.password or "", MIN_PASSWORD_LENGTH)
            if reason and not problems:
                problems.append(Problem(f"{where}.{key}", f"weak password in URL: {reason}"))
        return problems
    reason = weak_secret_reason(value, MIN_PASSWORD_LENGTH if key in _EXTERNAL_PASSWORD_KEYS
                                else MIN_SECRET_LENGTH)
    return [Problem(f"{where}.{key}", f"weak secret: {reason}")] if reason else []


def check_secrets(docs: list[dict[str, Any]]) -> list[Problem]:
    problems = []
    for doc in docs:
        if doc.get("kind") != "Secret":
            continue
        name = object_name(doc)
        data = {k: base64.b64decode(v).decode("utf-8", "replace")
                for k, v in (doc.get("data") or {}).items()}
        data |= doc.get("stringData") or {}
        for key, value in data.items():
            problems += _check_secret_value(name, key, value)
    return problems


def _containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec") or {}
    pod = (spec.get("jobTemplate", {}).get("spec", {}) if doc.get("kind") == "CronJob"
           else spec).get("template", {}).get("spec", {})
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def check_workloads(docs: list[dict[str, Any]], allow_latest: bool) -> list[Problem]:
    problems = []
    for doc in docs:
        for c in _containers(doc):
            where = f"{object_name(doc)} container {c.get('name')}"
            limits = (c.get("resources") or {}).get("limits") or {}
            missing = [r for r in ("cpu", "memory") if r not in limits]
            if missing:
                problems.append(Problem(where, f"no resource limit for {', '.join(missing)}"))
            image = str(c.get("image", ""))
            last = image.rsplit("/", 1)[-1]
            if "@sha256:" not in image and not allow_latest:
                tag = last.split(":", 1)[1] if ":" in last else ""
                if tag in ("", "latest"):
                    problems.append(Problem(where, f"image {image!r} uses the latest tag "
                                                   "(pin a version)"))
            sc = c.get("securityContext") or {}
            if sc.get("privileged"):
                problems.append(Problem(where, "privileged container"))
            if sc.get("allowPrivilegeEscalation", False):
                problems.append(Problem(where, "allowPrivilegeEscalation is true"))
    return problems


def _deny_ranges(conf: str) -> list[tuple[int, int, int]]:
    ranges = []
    for line in conf.splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() != "denied-peer-ip":
            continue
        value = value.strip()
        try:
            if "-" in value:
                lo, hi = (ipaddress.ip_address(v.strip()) for v in value.split("-", 1))
            else:
                net = ipaddress.ip_network(value, strict=False)
                lo, hi = net.network_address, net.broadcast_address
        except ValueError:
            continue
        ranges.append((lo.version, int(lo), int(hi)))
    return ranges


def check_turn_config(where: str, conf: str) -> list[Problem]:
    """The relay must refuse private, loopback, link-local and metadata peers."""
    problems = []
    lines = {ln.strip().split("=", 1)[0].strip() for ln in conf.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")}
    if "allow-loopback-peers" in lines:
        problems.append(Problem(where, "allow-loopback-peers is set (test-only option)"))
    ranges = _deny_ranges(conf)
    for net in REQUIRED_DENIED_PEERS:
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if not any(v == net.version and a <= lo and hi <= b for v, a, b in ranges):
            problems.append(Problem(where, f"no denied-peer-ip covering {net}"))
    return problems


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _container_env(container: dict[str, Any], configmaps: dict[str, dict[str, str]]
                   ) -> dict[str, str | None]:
    """Env values a container sees: literals and ConfigMap keys (None: from a Secret)."""
    env: dict[str, str | None] = {}
    for item in container.get("env") or []:
        ref = (item.get("valueFrom") or {}).get("configMapKeyRef")
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif ref:
            env[item["name"]] = configmaps.get(ref.get("name", ""), {}).get(ref.get("key", ""))
        else:
            env[item["name"]] = None
    return env


def _is_coturn(container: dict[str, Any]) -> bool:
    return "coturn" in str(container.get("image", "")) or container.get("name") == "coturn"


def check_turn_args(docs: list[dict[str, Any]]) -> list[Problem]:
    """coturn must deny this cluster's pod and service ranges (``--denied-peer-ip`` args,
    resolved through the container's env), each a valid address or ``start-end`` range."""
    configmaps = {(d.get("metadata") or {}).get("name", ""):
                  {str(k): str(v) for k, v in (d.get("data") or {}).items()}
                  for d in docs if d.get("kind") == "ConfigMap"}
    problems = []
    for doc in docs:
        for c in _containers(doc):
            if not _is_coturn(c):
                continue
            where = f"{object_name(doc)} container {c.get('name')}"
            env = _container_env(c, configmaps)
            values = []
            for arg in c.get("args") or []:
                key, _, value = str(arg).partition("=")
                if key != "--denied-peer-ip":
                    continue
                unresolved = [v for v in _VAR.findall(value) if env.get(v) is None]
                if unresolved:
                    problems.append(Problem(where, f"--denied-peer-ip: {', '.join(unresolved)} "
                                                   "not set from a ConfigMap or literal"))
                    continue
                value = _VAR.sub(lambda m, env=env: str(env[m.group(1)]), value)
                if not _deny_ranges(f"denied-peer-ip={value}") or "/" in value:
                    problems.append(Problem(where, f"--denied-peer-ip={value}: not an address "
                                                   "or start-end range (coturn refuses CIDR)"))
                    continue
                values.append(value)
            if not values:
                problems.append(Problem(where, "no --denied-peer-ip for the cluster's pod and "
                                               "service ranges (nova deploy init --pod-cidr "
                                               "--service-cidr)"))
    return problems


def check_configmaps(docs: list[dict[str, Any]]) -> list[Problem]:
    problems = []
    for doc in docs:
        if doc.get("kind") != "ConfigMap":
            continue
        for key, value in (doc.get("data") or {}).items():
            if key == "turnserver.conf":
                problems += check_turn_config(f"{object_name(doc)} {key}", value)
    return problems


def check_overlay(overlay: Path, *, kube_versions: tuple[str, ...] = DEFAULT_KUBE_VERSIONS,
                  allow_latest: bool | None = None) -> list[Problem]:
    """Every problem found in ``overlay`` (and its ``secrets/``); empty means ready."""
    overlay = Path(overlay)
    if allow_latest is None:
        allow_latest = overlay.resolve().name == "local"
    if not (overlay / "kustomization.yaml").is_file():
        return [Problem(str(overlay), "not a Kustomize overlay (no kustomization.yaml)")]
    problems: list[Problem] = []
    docs: list[dict[str, Any]] = []
    secrets_dir = overlay / SECRETS_DIR
    if not (secrets_dir / "kustomization.yaml").is_file():
        problems.append(Problem(str(secrets_dir), "missing: run `nova deploy init` first"))
    else:
        try:
            secret_docs = build_overlay(secrets_dir)
        except BuildError as exc:
            problems.append(Problem(str(secrets_dir), f"kustomize build failed: {exc}"))
        else:
            problems += [Problem(str(secrets_dir), m)
                         for m in validate_documents(secret_docs, kube_versions)]
            problems += check_secrets(secret_docs)
    try:
        docs = build_overlay(overlay)
    except BuildError as exc:
        hint = " (run `nova deploy init` first)" if "params.env" in str(exc) else ""
        problems.append(Problem(str(overlay), f"kustomize build failed{hint}: {exc}"))
        return problems
    problems += [Problem(str(overlay), m) for m in validate_documents(docs, kube_versions)]
    for doc in docs:
        for path, value in _strings(doc):
            if doc.get("kind") == "ConfigMap" and path.startswith("data."):
                # comments in embedded config files may say "example"; check live lines only
                value = "\n".join(ln for ln in value.splitlines()
                                  if not ln.lstrip().startswith("#"))
            problems += find_placeholders(f"{object_name(doc)} {path}", value)
    problems += check_secrets(docs)
    problems += check_workloads(docs, allow_latest)
    problems += check_configmaps(docs)
    problems += check_turn_args(docs)
    return problems

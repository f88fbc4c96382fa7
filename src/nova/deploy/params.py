"""``nova deploy init``: write the untracked parameter and secret files an overlay reads.

Every secret Nova can make up is a fresh ``secrets.token_urlsafe`` value (JWT key, TURN
shared secret, Grafana admin password). Values only the operator knows (database and Redis
URLs, Slack webhook, SMTP relay and password, on-call address) are written as ``CHANGEME`` /
``.invalid`` placeholders unless given, and ``nova deploy check`` refuses them, so a forgotten
one cannot reach a cluster.

Production writes: ``params.env`` (Argo CD repository), ``messaging/params.env`` (domain,
ACME e-mail, CORS origins, TURN/STUN URLs, GatewayClass), ``turn/params.env`` (the cluster's
pod and service ranges as coturn ``start-end`` ranges), ``monitoring/site/`` (site copies of
alertmanager.yml and nova.rules.yml, see ``site.py``) and ``secrets/``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from nova.calls.turn import coturn_peer_range
from nova.deploy import site

PLACEHOLDER = "CHANGEME"
# kubeadm's defaults (flannel/calico pod range, service range); check yours:
#   kubectl cluster-info dump | grep -m1 -E 'cluster-cidr|service-cluster-ip-range'
DEFAULT_POD_CIDR = "10.244.0.0/16"
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
# Envoy Gateway's GatewayClass (`nginx` for NGINX Gateway Fabric); used with gateway-tls only.
DEFAULT_GATEWAY_CLASS = "eg"
SECRETS_DIR = "secrets"
PARAMS_FILE = "params.env"
SITE_DIR = "site"
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ORIGIN = re.compile(r"^https?://[a-z0-9.-]+(:[0-9]+)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class InitError(ValueError):
    """An argument of ``nova deploy init`` is invalid, or files exist without --force."""


@dataclass
class InitResult:
    written: list[Path] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)


def _token() -> str:
    return secrets.token_urlsafe(48)


def is_split(overlay: Path) -> bool:
    """True for the production layout: one sub-overlay per Argo CD Application."""
    return (overlay / "messaging" / "kustomization.yaml").is_file()


def _env(values: dict[str, str]) -> str:
    for key, value in values.items():
        if "\n" in value:
            raise InitError(f"{key}: a value cannot contain a newline")
    return "".join(f"{k}={v}\n" for k, v in values.items())


def _secret_generator(name: str, namespace: str, env_file: str) -> str:
    return (f"  - name: {name}\n    namespace: {namespace}\n    type: Opaque\n"
            f"    envs:\n      - {env_file}\n")


def init_overlay(overlay: Path, *, domain: str | None = None, email: str | None = None,
                 turn_external_ip: str | None = None, repo_url: str | None = None,
                 revision: str = "main", database_url: str | None = None,
                 redis_url: str | None = None, slack_webhook_url: str | None = None,
                 cors_origins: str | None = None, gateway_class: str = DEFAULT_GATEWAY_CLASS,
                 pod_cidr: str = DEFAULT_POD_CIDR, service_cidr: str = DEFAULT_SERVICE_CIDR,
                 alert_email_to: str | None = None, smtp_smarthost: str | None = None,
                 smtp_from: str | None = None, smtp_password: str | None = None,
                 runbook_url: str | None = None, force: bool = False) -> InitResult:
    """Write ``params.env`` files and ``secrets/`` for ``overlay``; return what was written."""
    overlay = overlay.resolve()
    if not (overlay / "kustomization.yaml").is_file():
        raise InitError(f"{overlay} is not a Kustomize overlay (no kustomization.yaml)")
    split = is_split(overlay)
    files: dict[Path, str] = {}
    result = InitResult()
    turn_secret = _token()
    nova_secrets = {"jwt-secret": _token(), "turn-shared-secret": turn_secret}
    secret_gens = ""
    if split:
        if not domain or not _DOMAIN.match(domain.lower()):
            raise InitError(f"--domain: a DNS name is required (got {domain!r})")
        if not email or not _EMAIL.match(email):
            raise InitError(f"--email: an e-mail address is required (got {email!r})")
        try:
            ip = ipaddress.ip_address(turn_external_ip or "")
        except ValueError:
            raise InitError(f"--turn-external-ip: an IP address is required "
                            f"(got {turn_external_ip!r})") from None
        if not repo_url:
            raise InitError("--repo-url: the git URL Argo CD tracks is required")
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        origins = [o.strip().rstrip("/") for o in
                   (cors_origins or f"https://{domain.lower()}").split(",") if o.strip()]
        bad = [o for o in origins if not _ORIGIN.match(o.lower())]
        if bad or not origins:
            raise InitError(f"--cors-origin: scheme://host[:port] origins are required "
                            f"(got {cors_origins!r})")
        if not _DNS_LABEL.match(gateway_class):
            raise InitError(f"--gateway-class: a GatewayClass name is required "
                            f"(got {gateway_class!r})")
        ranges = {}
        for key, cidr, opt in (("TURN_DENIED_POD_RANGE", pod_cidr, "--pod-cidr"),
                               ("TURN_DENIED_SERVICE_RANGE", service_cidr, "--service-cidr")):
            try:
                ranges[key] = coturn_peer_range(cidr)
            except ValueError:
                raise InitError(f"{opt}: a CIDR is required (got {cidr!r})") from None
        files[overlay / PARAMS_FILE] = _env({"REPO_URL": repo_url, "REVISION": revision})
        files[overlay / "messaging" / PARAMS_FILE] = _env({
            "DOMAIN": domain.lower(),
            "ACME_EMAIL": email,
            "NOVA_CORS_ORIGINS": ",".join(origins),
            "NOVA_TURN_URLS": f"turn:{host}:3478?transport=udp,turn:{host}:3478?transport=tcp",
            "NOVA_STUN_URLS": f"stun:{host}:3478",
            "GATEWAY_CLASS": gateway_class,
        })
        files[overlay / "turn" / PARAMS_FILE] = _env(ranges)
        deploy_dir = overlay.parent.parent
        runbooks = runbook_url or site.runbook_base_url(repo_url, revision)
        if not runbooks:
            runbooks = f"https://runbooks.invalid/{PLACEHOLDER}"
            result.placeholders.append("runbook URL (--runbook-url; not derivable from "
                                       "--repo-url)")
        files[overlay / "monitoring" / SITE_DIR / "nova.rules.yml"] = site.site_rules(
            (deploy_dir / site.RULES_FILE).read_text(), runbooks)
        for given, what in ((alert_email_to, "on-call e-mail (--alert-email)"),
                            (smtp_smarthost, "SMTP relay (--smtp-host)"),
                            (smtp_password, "SMTP password (--smtp-password)")):
            if not given:
                result.placeholders.append(what)
        sender = smtp_from or f"nova-alerts@{domain.lower()}"
        files[overlay / "monitoring" / SITE_DIR / "alertmanager.yml"] = site.site_alertmanager(
            (deploy_dir / site.ALERTMANAGER_FILE).read_text(),
            smarthost=smtp_smarthost or "smtp.invalid:587", email_from=sender,
            smtp_username=sender, email_to=alert_email_to or f"{PLACEHOLDER}@oncall.invalid")
        db = database_url or f"postgresql://nova:{PLACEHOLDER}@postgres.invalid:5432/nova"
        redis = redis_url or f"redis://:{PLACEHOLDER}@redis.invalid:6379/0"
        for given, what in ((database_url, "database URL (--database-url)"),
                            (redis_url, "Redis URL (--redis-url)"),
                            (slack_webhook_url, "Slack webhook (--slack-webhook-url)")):
            if not given:
                result.placeholders.append(what)
        nova_secrets |= {"database-url": db, "redis-url": redis}
        files[overlay / SECRETS_DIR / "coturn-secrets.env"] = _env({
            "static-auth-secret": turn_secret, "realm": domain.lower(), "external-ip": str(ip),
        })
        files[overlay / SECRETS_DIR / "alertmanager-secrets.env"] = _env({
            "slack-webhook-url": slack_webhook_url or f"https://hooks.slack.invalid/{PLACEHOLDER}",
            "smtp-password": smtp_password or PLACEHOLDER,
        })
        files[overlay / SECRETS_DIR / "grafana-admin.env"] = _env({"admin-password": _token()})
        secret_gens += _secret_generator("coturn-secrets", "nova-turn", "coturn-secrets.env")
        secret_gens += _secret_generator("alertmanager-secrets", "nova-monitoring",
                                         "alertmanager-secrets.env")
        secret_gens += _secret_generator("grafana-admin", "nova-monitoring", "grafana-admin.env")
    files[overlay / SECRETS_DIR / "nova-secrets.env"] = _env(nova_secrets)
    secret_gens = _secret_generator("nova-secrets", "nova-messaging",
                                    "nova-secrets.env") + secret_gens
    namespaces = ["nova-messaging"] + (["nova-turn", "nova-monitoring"] if split else [])
    files[overlay / SECRETS_DIR / "namespaces.yaml"] = "---\n".join(
        f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n" for ns in namespaces)
    files[overlay / SECRETS_DIR / "kustomization.yaml"] = (
        "# Written by `nova deploy init`: NEVER commit this folder (.gitignore covers it).\n"
        "# Apply once, before the overlay: kubectl apply -k <this folder>\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources:\n  - namespaces.yaml\n"
        "generatorOptions:\n  disableNameSuffixHash: true\n"
        "secretGenerator:\n" + secret_gens)
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise InitError("refusing to overwrite (use --force to rotate every secret): "
                        + ", ".join(str(p) for p in existing))
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.name == SECRETS_DIR:
            path.parent.chmod(0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        result.written.append(path)
    return result

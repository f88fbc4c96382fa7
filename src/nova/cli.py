"""The ``nova`` command: serve, migrate, users, config — and the operator tools."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from nova import __version__
from nova.settings import ConfigError, Settings, load_settings


class _Ctx:
    def __init__(self, env_file: str | None) -> None:
        self.env_file = env_file
        self._settings: Settings | None = None

    def settings(self, **overrides: Any) -> Settings:
        try:
            return load_settings(self.env_file, **overrides)
        except ConfigError as exc:
            raise click.ClickException(f"invalid configuration: {exc}") from None


pass_ctx = click.make_pass_decorator(_Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nova")
@click.option("--env-file", type=click.Path(dir_okay=False), default=None,
              help="Read NOVA_* settings from this file too (environment wins).")
@click.pass_context
def main(ctx: click.Context, env_file: str | None) -> None:
    """Nova: self-hosted messaging and call-signaling backend.

    \b
    Runs on embedded defaults (SQLite in ./nova-data, in-process broker) with no setup;
    set NOVA_DATABASE_URL and NOVA_REDIS_URL for PostgreSQL and Redis. Every setting is a
    NOVA_* environment variable: see `nova check-config` and the README.
    """
    ctx.obj = _Ctx(env_file)


# --- serving -------------------------------------------------------------------------------

@main.command()
@click.option("--host", default=None, help="Address to bind (default NOVA_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default NOVA_PORT, 3000).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Serve HTTPS with this PEM certificate chain (single host, no proxy).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The PEM private key for --tls-cert.")
@pass_ctx
def serve(ctx: _Ctx, host: str | None, port: int | None, tls_cert: str | None,
          tls_key: str | None) -> None:
    """Run the HTTP API and WebSocket gateway."""
    from nova.server import run_server

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = ctx.settings(**overrides)
    run_server(settings, tls_cert=tls_cert, tls_key=tls_key)


@main.command()
@pass_ctx
def migrate(ctx: _Ctx) -> None:
    """Apply pending database migrations (holds a lock: safe from several replicas)."""
    from nova.storage.db import run_migrations

    settings = ctx.settings()
    revision = asyncio.run(run_migrations(settings))
    click.echo(f"database at revision {revision}")


@main.command("check-config")
@pass_ctx
def check_config(ctx: _Ctx) -> None:
    """Print the effective settings (secrets redacted); exit non-zero if invalid."""
    settings = ctx.settings()
    click.echo(json.dumps(settings.redacted(), indent=2, sort_keys=True))


# --- users ---------------------------------------------------------------------------------

@main.group()
def user() -> None:
    """Manage user accounts (operators)."""


@user.command("create")
@click.argument("username")
@click.option("--display-name", default=None)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              help="Prompted for when not given.")
@pass_ctx
def user_create(ctx: _Ctx, username: str, display_name: str | None, password: str) -> None:
    """Create a user account."""
    from nova.operator import create_user

    settings = ctx.settings()
    try:
        created = asyncio.run(create_user(settings, username, password, display_name))
    except Exception as exc:  # domain errors carry a clear message
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(created))


@user.command("list")
@click.option("--limit", type=int, default=100, show_default=True)
@pass_ctx
def user_list(ctx: _Ctx, limit: int) -> None:
    """List user accounts."""
    from nova.operator import list_users

    rows = asyncio.run(list_users(ctx.settings(), limit))
    for row in rows:
        state = "disabled" if row["disabled"] else "active"
        click.echo(f"{row['id']}  {row['username']:<32} {state:<8} {row['created_at']}")


@user.command("disable")
@click.argument("username")
@pass_ctx
def user_disable(ctx: _Ctx, username: str) -> None:
    """Disable an account: its tokens stop working and it cannot log in."""
    from nova.operator import disable_user

    try:
        asyncio.run(disable_user(ctx.settings(), username))
    except Exception as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"disabled {username}")

# --- deploy kit (nova deploy init | check) ---------------------------------------------------

@main.group()
def deploy() -> None:
    """Deploy-kit tools: write secrets for an overlay, preflight-check an overlay."""


@deploy.command("init")
@click.option("--overlay", type=click.Path(file_okay=False, path_type=Path),
              default=Path("deploy/overlays/production"), show_default=True)
@click.option("--domain", help="Public DNS name of the service (production).")
@click.option("--email", help="ACME (Let's Encrypt) account e-mail (production).")
@click.option("--turn-external-ip", help="Public IP clients reach coturn on (production).")
@click.option("--repo-url", help="Git URL Argo CD tracks (default: git remote origin).")
@click.option("--revision", default="main", show_default=True, help="Branch Argo CD tracks.")
@click.option("--database-url", help="postgresql://user:password@host:5432/db")
@click.option("--redis-url", help="redis://:password@host:6379/0")
@click.option("--slack-webhook-url", help="Alertmanager Slack webhook.")
@click.option("--cors-origin", "cors_origins",
              help="Browser origins allowed by CORS, comma-separated (default https://DOMAIN).")
@click.option("--gateway-class", default="eg", show_default=True,
              help="GatewayClass of your controller (used only with components/gateway-tls).")
@click.option("--pod-cidr", default="10.244.0.0/16", show_default=True,
              help="The cluster's pod range: coturn denies it as a relay peer.")
@click.option("--service-cidr", default="10.96.0.0/12", show_default=True,
              help="The cluster's service range: coturn denies it as a relay peer.")
@click.option("--alert-email", help="On-call address for critical alerts.")
@click.option("--smtp-host", help="SMTP relay host:port Alertmanager sends through.")
@click.option("--smtp-from", help="Sender and SMTP user (default nova-alerts@DOMAIN).")
@click.option("--smtp-password", help="SMTP password (stored in secrets/ only).")
@click.option("--runbook-url", help="Web URL of docs/operations/runbooks.md in your "
              "repository (default: derived from --repo-url for GitHub/GitLab).")
@click.option("--force", is_flag=True, help="Overwrite existing files (rotates every secret).")
def deploy_init(overlay: Path, domain: str | None, email: str | None,
                turn_external_ip: str | None, repo_url: str | None, revision: str,
                database_url: str | None, redis_url: str | None,
                slack_webhook_url: str | None, cors_origins: str | None, gateway_class: str,
                pod_cidr: str, service_cidr: str, alert_email: str | None,
                smtp_host: str | None, smtp_from: str | None, smtp_password: str | None,
                runbook_url: str | None, force: bool) -> None:
    """Write the untracked params.env files and secrets/ an overlay reads.

    Every secret is a fresh random value; what only you know (database and Redis URLs,
    Slack webhook) becomes a CHANGEME placeholder that `nova deploy check` refuses.
    """
    from nova.deploy.params import InitError, init_overlay

    if repo_url is None:
        repo_url = _git_origin(overlay)
    try:
        result = init_overlay(overlay, domain=domain, email=email,
                              turn_external_ip=turn_external_ip, repo_url=repo_url,
                              revision=revision, database_url=database_url,
                              redis_url=redis_url, slack_webhook_url=slack_webhook_url,
                              cors_origins=cors_origins, gateway_class=gateway_class,
                              pod_cidr=pod_cidr, service_cidr=service_cidr,
                              alert_email_to=alert_email, smtp_smarthost=smtp_host,
                              smtp_from=smtp_from, smtp_password=smtp_password,
                              runbook_url=runbook_url, force=force)
    except InitError as exc:
        raise click.ClickException(str(exc)) from None
    for path in result.written:
        click.echo(f"wrote {path}")
    for what in result.placeholders:
        click.echo(f"TODO: give the {what} (re-run with --force) before deploying", err=True)
    click.echo(f"next: nova deploy check {overlay}")


def _git_origin(where: Path) -> str | None:
    import subprocess

    try:
        proc = subprocess.run(["git", "-C", str(where if where.is_dir() else "."), "remote",
                               "get-url", "origin"], capture_output=True, text=True,
                              timeout=10, check=False)
    except OSError:
        return None
    return proc.stdout.strip() or None


@deploy.command("check")
@click.argument("overlay", type=click.Path(file_okay=False, path_type=Path),
                default=Path("deploy/overlays/production"))
@click.option("--kube-version", "kube_versions", multiple=True,
              help="Validate against this Kubernetes version (repeatable; default 1.29, 1.31).")
def deploy_check(overlay: Path, kube_versions: tuple[str, ...]) -> None:
    """Build OVERLAY, validate every object offline and refuse placeholders, weak
    secrets, missing limits, latest tags, privileged containers, unsafe TURN config."""
    from nova.deploy.check import check_overlay
    from nova.deploy.manifests import DEFAULT_KUBE_VERSIONS

    problems = check_overlay(overlay, kube_versions=kube_versions or DEFAULT_KUBE_VERSIONS)
    if problems:
        for problem in problems:
            click.echo(f"FAIL {problem}", err=True)
        raise click.ClickException(f"{len(problems)} problem(s) in {overlay}")
    click.echo(f"ok: {overlay} is ready to deploy")


@deploy.command("gen-prometheusrule")
@click.argument("deploy_dir", type=click.Path(file_okay=False, path_type=Path),
                default=Path("deploy"))
def deploy_gen_prometheusrule(deploy_dir: Path) -> None:
    """Regenerate components/monitoring-operator/nova-prometheusrule.yaml from the rules."""
    from nova.deploy.site import PROMETHEUS_RULE_FILE, render_prometheus_rule

    out = deploy_dir / PROMETHEUS_RULE_FILE
    out.write_text(render_prometheus_rule(deploy_dir))
    click.echo(f"wrote {out}")


# --- TURN (calls/turn.py, calls/turncheck.py) ----------------------------------------------

@main.group()
def turn() -> None:
    """TURN server tools: mint credentials, check a coturn, compute denied peer ranges."""


def _turn_secret(ctx: _Ctx) -> Settings:
    settings = ctx.settings()
    if not settings.turn_shared_secret:
        raise click.ClickException(
            "no TURN shared secret: set NOVA_TURN_SHARED_SECRET or NOVA_TURN_SHARED_SECRET_FILE "
            "(the same value coturn gets as --static-auth-secret)")
    return settings


@turn.command("credentials")
@click.option("--user", "user_id", required=True, help="User id the credentials are for.")
@click.option("--ttl", type=click.IntRange(60, 86_400), default=None,
              help="Lifetime in seconds (default NOVA_TURN_TTL_SECONDS).")
@pass_ctx
def turn_credentials(ctx: _Ctx, user_id: str, ttl: int | None) -> None:
    """Print TURN REST API credentials for USER as JSON (as /api/v1/calls/ice-servers would)."""
    from nova.calls.turn import mint_credentials

    settings = _turn_secret(ctx)
    try:
        creds = mint_credentials(settings.turn_shared_secret, user_id,
                                 ttl or settings.turn_ttl_seconds)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({
        "urls": list(settings.turn_urls),
        "username": creds.username,
        "credential": creds.credential,
        "ttl_seconds": creds.ttl_seconds,
        "expires_at": creds.expires_at,
    }, indent=2))


@turn.command("check")
@click.argument("target", metavar="HOST[:PORT]")
@click.option("--transport", type=click.Choice(["udp", "tcp", "tls"]), default="udp",
              show_default=True, help="tls = turns: (default port 5349).")
@click.option("--user", "user_id", default="nova-turn-check", show_default=True,
              help="User id in the freshly minted credentials.")
@click.option("--peer", "peers", multiple=True, metavar="IP",
              help="CreatePermission to IP must be GRANTED (repeatable).")
@click.option("--expect-denied", "denied", multiple=True, metavar="IP",
              help="CreatePermission to IP must be REFUSED with 403, e.g. 169.254.169.254 "
                   "(repeatable).")
@click.option("--stun-only", is_flag=True, help="Only the STUN binding (no secret needed).")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=5.0, show_default=True,
              help="Seconds per STUN/TURN transaction.")
@click.option("--insecure", is_flag=True, help="tls: do not verify the server certificate.")
@pass_ctx
def turn_check(ctx: _Ctx, target: str, transport: str, user_id: str, peers: tuple[str, ...],
               denied: tuple[str, ...], stun_only: bool, timeout: float, insecure: bool) -> None:
    """Check a STUN/TURN server: STUN binding, then a TURN allocation with fresh credentials.

    Exit status 0 only if every step passed. The secret comes from NOVA_TURN_SHARED_SECRET(_FILE).
    """
    import ipaddress

    from nova.calls.turn import mint_credentials
    from nova.calls.turncheck import check_turn_server, parse_host_port

    try:
        host, port = parse_host_port(target, 5349 if transport == "tls" else 3478)
        for ip in (*peers, *denied):
            ipaddress.ip_address(ip)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    username = password = None
    if not stun_only:
        settings = _turn_secret(ctx)
        creds = mint_credentials(settings.turn_shared_secret, user_id, 600)
        username, password = creds.username, creds.credential
    report = asyncio.run(check_turn_server(
        host, port, transport=transport,  # type: ignore[arg-type]
        username=username, password=password, peers=peers, denied_peers=denied,
        step_timeout=timeout, tls_verify=not insecure))
    click.echo(report.table())
    if not report.ok:
        sys.exit(1)


@turn.command("peer-range")
@click.argument("cidrs", nargs=-1, required=True, metavar="CIDR...")
def turn_peer_range(cidrs: tuple[str, ...]) -> None:
    """Print coturn --denied-peer-ip=START-END arguments for the cluster's pod/service CIDRs."""
    from nova.calls.turn import coturn_peer_range

    for cidr in cidrs:
        try:
            click.echo(f"--denied-peer-ip={coturn_peer_range(cidr)}")
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None


# --- nova verify (completion checks from the outside, issue 9) -------------------------------

def _read_secret_file(path: str | None) -> str | None:
    if path is None:
        return None
    value = Path(path).read_text().strip()
    if not value:
        raise click.BadParameter(f"{path} is empty")
    return value


@main.command("verify")
@click.option("--url", required=True, metavar="https://HOST[:PORT]",
              help="The public HTTPS entry of Nova.")
@click.option("--http-url", default=None, metavar="http://HOST[:PORT]",
              help="Plain-HTTP entry that must redirect to HTTPS (default http://HOST).")
@click.option("--turn", "turn_target", default=None, metavar="HOST[:PORT]",
              help="coturn to check (default: the turn: URL Nova hands to clients).")
@click.option("--prometheus", default=None, metavar="URL", help="Prometheus base URL.")
@click.option("--alertmanager", default=None, metavar="URL", help="Alertmanager base URL.")
@click.option("--argocd", default=None, metavar="URL", help="Argo CD server URL.")
@click.option("--argocd-token-file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="File holding an Argo CD API token.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Trust this CA bundle (a private or self-signed CA).")
@click.option("--insecure", is_flag=True, help="Do not verify TLS certificates (a warning).")
@click.option("--username", default=None,
              help="Use this account instead of a probe account made for the run.")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding --username's password.")
@click.option("--timeout", type=click.FloatRange(0.5, 120), default=10.0, show_default=True,
              help="Seconds per network step.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_command(url: str, http_url: str | None, turn_target: str | None,
                   prometheus: str | None, alertmanager: str | None, argocd: str | None,
                   argocd_token_file: str | None, ca_file: str | None, insecure: bool,
                   username: str | None, password_file: str | None, timeout: float,
                   as_json: bool) -> None:
    """Check a running deployment end to end: HTTPS, realtime, TURN, monitoring, Argo CD.

    \b
    Prints one row per check (pass / fail / warn / skip) with the reason, and what to do
    about a failure. Without --username a probe account is registered for the run and
    closed afterwards (DELETE /api/v1/users/me). Exit status 0 only if nothing failed.
    """
    from nova.verify import VerifyOptions, verify
    from nova.verify.https import host_port

    if ca_file and insecure:
        raise click.UsageError("--ca-file and --insecure exclude each other")
    if bool(username) != bool(password_file):
        raise click.UsageError("--username and --password-file go together")
    if bool(argocd) != bool(argocd_token_file):
        raise click.UsageError("--argocd and --argocd-token-file go together")
    try:
        host_port(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    options = VerifyOptions(
        url=url, http_url=http_url, turn=turn_target, prometheus=prometheus,
        alertmanager=alertmanager, argocd=argocd,
        argocd_token=_read_secret_file(argocd_token_file), ca_file=ca_file,
        insecure=insecure, username=username, password=_read_secret_file(password_file),
        timeout=timeout)
    report = asyncio.run(verify(options))
    click.echo(report.to_json() if as_json else report.table())
    if not report.ok:
        sys.exit(1)


# --- backup and restore (storage/backup.py) --------------------------------------------------

def _backup_error(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


def _do_backup(ctx: _Ctx, out: str, keep: int | None) -> None:
    from nova.storage.backup import BackupError, create_backup, prune_backups

    settings = ctx.settings()
    try:
        path, manifest = asyncio.run(create_backup(settings, out))
    except BackupError as exc:
        raise _backup_error(exc) from None
    counts = ", ".join(f"{name}={t.rows}" for name, t in sorted(manifest.tables.items()))
    click.echo(f"wrote {path} ({manifest.dump_size} bytes dump, {manifest.dialect}, "
               f"revision {manifest.schema_revision}): {counts}")
    if keep is not None:
        for gone in prune_backups(path.parent, keep):
            click.echo(f"pruned {gone}")


_OUT_HELP = ("Backup file, or a directory to write nova-backup-<UTC time>.tar into.")
_KEEP_HELP = "With a directory --out: keep only the newest N backups there."


@main.group(invoke_without_command=True)
@click.option("--out", type=click.Path(), default=None, help=_OUT_HELP)
@click.option("--keep", type=click.IntRange(1), default=None, help=_KEEP_HELP)
@click.pass_context
def backup(click_ctx: click.Context, out: str | None, keep: int | None) -> None:
    """Back up the database: `nova backup --out FILE` (same as `nova backup create`).

    \b
    SQLite: the online backup API, safe while Nova serves. PostgreSQL: pg_dump (custom
    format) of one snapshot; pg_dump must be as new as the server. The archive holds the
    dump and a manifest (schema revision, row counts, checksums, time).
    """
    if click_ctx.invoked_subcommand is not None:
        if out is not None or keep is not None:
            raise click.UsageError("give --out/--keep after the subcommand")
        return
    if out is None:
        raise click.UsageError("--out FILE is required (or use a subcommand: create, verify)")
    _do_backup(click_ctx.find_object(_Ctx), out, keep)


@backup.command("create")
@click.option("--out", type=click.Path(), required=True, help=_OUT_HELP)
@click.option("--keep", type=click.IntRange(1), default=None, help=_KEEP_HELP)
@pass_ctx
def backup_create(ctx: _Ctx, out: str, keep: int | None) -> None:
    """Write a backup of the configured database to OUT."""
    _do_backup(ctx, out, keep)


@backup.command("verify")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--scratch-url", envvar="NOVA_BACKUP_SCRATCH_URL", default=None,
              help="PostgreSQL backups: an EMPTY scratch database to restore into (its "
                   "content is replaced). Default: create one on NOVA_DATABASE_URL's server.")
@pass_ctx
def backup_verify(ctx: _Ctx, path: Path, scratch_url: str | None) -> None:
    """Restore PATH (a backup, or a directory: its newest backup) into a scratch database
    and compare it with the manifest. Exit status 1 on any difference."""
    from nova.storage.backup import BackupError, verify_backup

    settings = ctx.settings()
    try:
        report = asyncio.run(verify_backup(path, settings=settings, scratch_url=scratch_url))
    except BackupError as exc:
        raise _backup_error(exc) from None
    m = report.manifest
    if not report.ok:
        for problem in report.problems:
            click.echo(f"FAIL {problem}", err=True)
        raise click.ClickException(f"{report.path} does not match its manifest")
    click.echo(f"ok: {report.path} restores; {m.dialect} revision {m.schema_revision}, "
               f"{len(m.tables)} tables, {m.total_rows} rows match the manifest "
               f"(taken {m.created_at})")


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--force", is_flag=True, help="Replace a database that already holds data.")
@pass_ctx
def restore(ctx: _Ctx, path: Path, force: bool) -> None:
    """Restore the backup PATH into the configured database (refused if it holds data,
    unless --force), then check it against the manifest. Stop Nova first on SQLite.
    Cross-dialect restore (SQLite <-> PostgreSQL) is not supported."""
    from nova.storage.backup import BackupError, restore_backup

    settings = ctx.settings()
    try:
        report = asyncio.run(restore_backup(settings, path, force=force))
    except BackupError as exc:
        raise _backup_error(exc) from None
    if not report.ok:
        for problem in report.problems:
            click.echo(f"FAIL {problem}", err=True)
        raise click.ClickException("the restored database does not match the manifest")
    m = report.manifest
    click.echo(f"restored {report.path}: {m.dialect} revision {m.schema_revision}, "
               f"{m.total_rows} rows in {len(m.tables)} tables (taken {m.created_at})")


def run() -> None:
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

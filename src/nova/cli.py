"""The ``nova`` command: serve, migrate, users, config — and the operator tools."""

from __future__ import annotations

import asyncio
import json
import sys
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


def run() -> None:
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

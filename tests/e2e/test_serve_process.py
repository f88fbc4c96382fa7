"""`nova serve` as a real subprocess, and the operator commands (`nova user …`,
`nova migrate`, `nova check-config`) as the operator runs them."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

PG_ADMIN_URL = os.environ.get("NOVA_TEST_DATABASE_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")


def nova(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nova", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_serve_subprocess_serves_the_api_and_the_user_cli(
        nova_process: Any, tmp_path: Path) -> None:
    proc = nova_process()
    env = dict(proc.env)
    with httpx.Client(base_url=proc.url, timeout=10) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/ready").json()["status"] == "ready"
        paths = http.get("/openapi.json").json()["paths"]
        assert "/api/v1/conversations/{conversation_id}/messages" in paths
        reg = http.post("/api/v1/auth/register", json={"username": "bob",
                                                       "password": "bob-password"})
        assert reg.status_code == 201, reg.text
        bob_h = {"Authorization": f"Bearer {reg.json()['access_token']}"}

        # An operator creates an account on the same data directory while the server runs.
        made = nova("user", "create", "alice", "--display-name", "Alice",
                    "--password", "alice-password", env=env)
        assert made.returncode == 0, made.stderr
        alice = json.loads(made.stdout)
        assert alice["username"] == "alice" and alice["display_name"] == "Alice"
        dup = nova("user", "create", "ALICE", "--password", "alice-password", env=env)
        assert dup.returncode != 0 and "taken" in dup.stderr

        login = http.post("/api/v1/auth/login", json={"username": "alice",
                                                      "password": "alice-password"})
        assert login.status_code == 200, login.text
        alice_h = {"Authorization": f"Bearer {login.json()['access_token']}"}
        conv = http.post("/api/v1/conversations", headers=bob_h,
                         json={"kind": "direct", "member_ids": [alice["id"]]}).json()
        sent = http.post(f"/api/v1/conversations/{conv['id']}/messages", headers=bob_h,
                         json={"client_msg_id": "m1", "body": "hi alice"})
        assert sent.status_code == 201, sent.text
        hist = http.get(f"/api/v1/conversations/{conv['id']}/messages", headers=alice_h).json()
        assert [m["body"] for m in hist["items"]] == ["hi alice"]

        listed = nova("user", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[1]: line.split()[2] for line in listed.stdout.splitlines()}
        assert rows == {"bob": "active", "alice": "active"}

        off = nova("user", "disable", "alice", env=env)
        assert off.returncode == 0 and "disabled alice" in off.stdout
        rows = {line.split()[1]: line.split()[2]
                for line in nova("user", "list", env=env).stdout.splitlines()}
        assert rows == {"bob": "active", "alice": "disabled"}
        denied = http.post("/api/v1/auth/login", json={"username": "alice",
                                                       "password": "alice-password"})
        assert denied.status_code == 401 and denied.json()["code"] == "account_disabled"
        refreshed = http.post("/api/v1/auth/refresh",
                              json={"refresh_token": login.json()["refresh_token"]})
        assert refreshed.status_code == 401
    # SIGTERM: a graceful stop (uvicorn re-raises the signal after shutting down).
    assert proc.stop(timeout=20) in (0, -15)
    assert "Traceback" not in proc.log_path.read_text()


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _pg_tables(url: str) -> tuple[set[str], str]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        rev = await conn.fetchval("SELECT version_num FROM alembic_version")
        return {r["tablename"] for r in rows}, str(rev)
    finally:
        await conn.close()


@pytest.fixture
def fresh_pg_url() -> Any:
    name = f"nova_e2e_{secrets.token_hex(4)}"
    try:
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        from conftest import missing  # type: ignore[import-not-found]

        missing(f"PostgreSQL at {PG_ADMIN_URL}: {exc}")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_migrate_twice_on_postgresql_then_serve(nova_process: Any, fresh_pg_url: str,
                                                tmp_path: Path) -> None:
    from nova.storage.db import head_revision

    env = {"NOVA_DATABASE_URL": fresh_pg_url, "NOVA_DATA_DIR": str(tmp_path / "d"),
           "NOVA_JWT_SECRET": "e2e-secret-" + "z" * 40}
    for _ in range(2):  # the second run finds nothing to do and changes nothing
        out = nova("migrate", env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"database at revision {head_revision()}"
    tables, rev = asyncio.run(_pg_tables(fresh_pg_url))
    assert rev == head_revision()
    assert {"users", "refresh_tokens", "conversations", "members", "messages",
            "events"} <= tables
    proc = nova_process(env=env, name="pg")
    with httpx.Client(base_url=proc.url, timeout=10) as http:
        assert http.get("/ready").json()["checks"] == {"database": "ok", "broker": "ok"}
        reg = http.post("/api/v1/auth/register", json={"username": "pguser",
                                                       "password": "pg-password"})
        assert reg.status_code == 201, reg.text
    names = {line.split()[1] for line in nova("user", "list", env=env).stdout.splitlines()}
    assert names == {"pguser"}


def test_check_config_redacts_secrets_and_fails_when_invalid(tmp_path: Path) -> None:
    secrets_ = {"NOVA_JWT_SECRET": "jwt-" + "s" * 40, "NOVA_TURN_SHARED_SECRET": "turn-xyz-123",
                "NOVA_EXTERNAL_JWT_SECRET": "ext-abc-789",
                "NOVA_DATABASE_URL": "postgresql://nova:pg-pass-456@db:5432/nova",
                "NOVA_REDIS_URL": "redis://:redis-pass-000@redis:6379/0"}
    out = nova("check-config", env={**secrets_, "NOVA_DATA_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    for value in ("s" * 40, "turn-xyz-123", "ext-abc-789", "pg-pass-456", "redis-pass-000"):
        assert value not in out.stdout
    assert shown["jwt_secret"] == "***" and shown["turn_shared_secret"] == "***"
    assert shown["database_url"] == "postgresql://nova:***@db:5432/nova"
    assert shown["data_dir"] == str(tmp_path)
    bad = nova("check-config", env={"NOVA_PORT": "not-a-port", "NOVA_DATA_DIR": str(tmp_path)})
    assert bad.returncode != 0 and "port" in bad.stderr

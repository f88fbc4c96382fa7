"""Shared fixtures: databases (SQLite file, or a fresh PostgreSQL database per run), an
in-process server on a real port, and `nova serve` as a subprocess.

PostgreSQL and Redis come from NOVA_TEST_DATABASE_URL / NOVA_TEST_REDIS_URL (scripts/test
sets them). When CI=true a missing daemon fails the test; locally it skips with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from nova.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("NOVA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NOVA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
JWT_SECRET = "test-secret-" + "x" * 40


def missing(reason: str) -> None:
    """A daemon or program the test needs is not there: fail in CI, skip locally."""
    if IN_CI:
        pytest.fail(f"required for this test and missing in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_dsn(db: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{db}"


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL.replace("postgresql+asyncpg", "postgresql"),
                                 timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this run (migrated), dropped afterwards."""
    name = f"nova_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        missing(f"PostgreSQL at {PG_ADMIN_URL}: {exc}")
    url = _pg_dsn(name)
    from nova.storage.db import run_migrations

    asyncio.run(run_migrations(Settings(database_url=url)))
    yield url
    with contextlib.suppress(Exception):
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(
            "TRUNCATE users, refresh_tokens, conversations, members, membership_periods, "
            "messages, events, calls, nova_meta RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Settings for a test: SQLite in tmp_path, or the run's PostgreSQL database (emptied)."""

    def make(kind: str = "sqlite", **overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": tmp_path / "data", "jwt_secret": JWT_SECRET,
                                  "presence_grace_ms": 100, "dispatch_tick_ms": 200}
        if kind == "postgresql":
            url = request.getfixturevalue("pg_database")
            asyncio.run(_truncate(url))
            values["database_url"] = url
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(db_kind: str, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(db_kind)


class LiveServer:
    """The app served by uvicorn inside the test's event loop, on a real port."""

    def __init__(self, settings: Settings) -> None:
        from nova.server import build_config

        self.port = free_port()
        self.settings = settings.model_copy(update={"port": self.port, "host": "127.0.0.1"})
        config = build_config(self.settings)
        config.loop = "asyncio"
        self.config = config
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[Any] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def services(self) -> Any:
        return self.config.app.state.services  # type: ignore[union-attr]

    async def start(self) -> None:
        self.server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(200):
            if self.server.started:
                return
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.02)
        raise RuntimeError("server did not start")

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveServer]:
    server = LiveServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        yield client


class NovaProcess:
    """`nova serve` as a real subprocess."""

    def __init__(self, env: dict[str, str], port: int | None = None,
                 args: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, "NOVA_PORT": str(self.port), "NOVA_HOST": "127.0.0.1",
                    "NOVA_LOG_LEVEL": "warning", **env}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path: Path | None = None

    def start(self, log_path: Path) -> NovaProcess:
        self.log_path = log_path
        out = log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "nova", "serve", *self.args],
                                     env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=str(log_path.parent))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nova serve exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"nova serve did not start: {log_path.read_text()[-2000:]}")

    def stop(self, sig: int = 15, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


@pytest.fixture
def nova_process(tmp_path: Path) -> Iterator[Callable[..., NovaProcess]]:
    started: list[NovaProcess] = []

    def start(env: dict[str, str] | None = None, name: str = "nova",
              args: list[str] | None = None) -> NovaProcess:
        base = {"NOVA_DATA_DIR": str(tmp_path / f"{name}-data"), "NOVA_JWT_SECRET": JWT_SECRET}
        p = NovaProcess({**base, **(env or {})}, args=args)
        started.append(p)
        return p.start(tmp_path / f"{name}.log")

    yield start
    for p in started:
        p.stop(sig=9 if p.proc and p.proc.poll() is None else 15, timeout=10)


# --- resttests: a real SqlStore on SQLite in tmp_path (unit tests of the domain rules) ----

@pytest.fixture
async def sql_store(tmp_path: Path) -> AsyncIterator[Any]:
    """A migrated ``SqlStore`` on a SQLite file in tmp_path, closed afterwards."""
    from nova.storage.db import create_engine, run_migrations
    from nova.storage.store import SqlStore

    s = Settings(data_dir=tmp_path / "unit-data", jwt_secret=JWT_SECRET)
    engine = create_engine(s)
    await run_migrations(s, engine)
    store = SqlStore(engine)
    try:
        yield store
    finally:
        await store.close()

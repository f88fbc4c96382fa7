"""Engines and migrations for both dialects.

SQLite runs in WAL mode with ``synchronous=NORMAL`` (durable across process crashes; a power
loss may drop the last transactions, the usual WAL trade-off). PostgreSQL uses asyncpg with a
connection pool. Migrations hold a lock (an advisory lock on PostgreSQL, a file lock on
SQLite) so that replicas starting together run them once.
"""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from nova.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_KEY = 0x4E4F5641  # "NOVA"


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            pool_size=max(2, min(settings.db_pool_size, 8)),
            max_overflow=0,
            connect_args={"timeout": 30, "check_same_thread": False},
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def _upgrade(connection: Connection) -> str:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
    try:
        command.upgrade(_alembic_config(connection), "head")
        return MigrationContext.configure(connection).get_current_revision() or "base"
    finally:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def run_migrations(settings: Settings, engine: AsyncEngine | None = None) -> str:
    """Apply pending migrations; return the revision the database is at."""
    own = engine is None
    engine = engine or create_engine(settings)
    lock_file = None
    try:
        if not settings.is_postgres:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            lock_file = (settings.data_dir / ".migrate.lock").open("w")
            await asyncio.to_thread(fcntl.flock, lock_file, fcntl.LOCK_EX)
        async with engine.begin() as conn:
            return await conn.run_sync(_upgrade)
    finally:
        if lock_file is not None:
            lock_file.close()
        if own:
            await engine.dispose()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)

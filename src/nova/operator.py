"""Operator tasks behind `nova user …`: short-lived services without a server."""

from __future__ import annotations

from typing import Any

from nova.app import signing_key
from nova.domain.accounts import AccountService
from nova.settings import Settings
from nova.storage.db import create_engine, run_migrations
from nova.storage.store import SqlStore


async def _store(settings: Settings) -> SqlStore:
    engine = create_engine(settings)
    if not settings.is_postgres:
        await run_migrations(settings, engine)
    return SqlStore(engine)


async def create_user(settings: Settings, username: str, password: str,
                      display_name: str | None) -> dict[str, Any]:
    store = await _store(settings)
    try:
        accounts = AccountService(store, signing_key(settings), access_ttl=60, refresh_ttl=300)
        user = await accounts.create_user(username, password, display_name)
        return user.wire()
    finally:
        await store.close()


async def list_users(settings: Settings, limit: int) -> list[dict[str, Any]]:
    store = await _store(settings)
    try:
        return [{**u.wire(), "disabled": u.disabled} for u in await store.list_users(limit)]
    finally:
        await store.close()


async def disable_user(settings: Settings, username: str) -> None:
    store = await _store(settings)
    try:
        await store.set_user_disabled(username, True)
    finally:
        await store.close()

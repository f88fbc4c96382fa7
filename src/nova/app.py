"""``create_app(settings)``: the ONE place that picks implementations and wires them."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse

from nova import __version__
from nova.broker.memory import MemoryBroker
from nova.broker.presence import MemoryPresence, RedisPresence
from nova.broker.ratelimit import build_rate_limiters
from nova.calls.signaling import CallService
from nova.domain.accounts import AccountService
from nova.domain.conversations import ConversationService
from nova.domain.realtime import Realtime
from nova.settings import Settings
from nova.storage.db import create_engine, run_migrations
from nova.storage.store import SqlStore

log = logging.getLogger("nova")


@dataclass(eq=False)
class Services:
    """Everything the edges (HTTP, WebSocket) may call."""

    settings: Settings
    store: SqlStore
    accounts: AccountService
    conversations: ConversationService
    realtime: Realtime
    broker: Any
    calls: CallService | None = None
    limiters: Any = None
    draining: bool = False
    gateway_connections: set[Any] = field(default_factory=set)

    async def readiness(self) -> dict[str, str]:
        checks = {}
        try:
            await self.store.ping()
            checks["database"] = "ok"
        except Exception:
            checks["database"] = "unavailable"
        try:
            await self.broker.ping()
            checks["broker"] = "ok"
        except Exception:
            checks["broker"] = "unavailable"
        if self.draining:
            checks["server"] = "draining"
        return checks


def signing_key(settings: Settings) -> str:
    """``NOVA_JWT_SECRET`` (shared by replicas), else a key generated once in the data dir."""
    if settings.jwt_secret:
        if len(settings.jwt_secret) < 32:
            raise ValueError("NOVA_JWT_SECRET must be at least 32 characters")
        return settings.jwt_secret
    path = settings.data_dir / "jwt.key"
    if path.exists():
        return path.read_text().strip()
    if settings.is_postgres:
        log.warning("NOVA_JWT_SECRET is not set: this replica signs tokens with its own key; "
                    "set it (or NOVA_JWT_SECRET_FILE) so that replicas accept each other's")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def _external_key(settings: Settings) -> tuple[str | None, list[str]]:
    if settings.external_jwt_public_key_file is not None:
        return (settings.external_jwt_public_key_file.read_text(),
                ["RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"])
    if settings.external_jwt_secret:
        return settings.external_jwt_secret, ["HS256"]
    return None, []


def build_services(settings: Settings) -> Services:
    engine = create_engine(settings)
    store = SqlStore(engine)
    broker: Any
    presence: Any
    if settings.redis_url:
        from nova.broker.redis import RedisBroker

        broker = RedisBroker(settings.redis_url, settings.redis_prefix)
        presence = RedisPresence(broker.client, settings.redis_prefix, settings.instance_id)
    else:
        broker = MemoryBroker()
        presence = MemoryPresence()
    realtime = Realtime(
        store, broker, presence,
        tick_seconds=settings.dispatch_tick_ms / 1000,
        presence_grace_seconds=settings.presence_grace_ms / 1000,
        typing_interval_seconds=settings.typing_min_interval_ms / 1000,
        retention_seconds=settings.event_retention_days * 86400,
        max_pending=settings.ws_send_queue_size)
    ext_key, ext_algs = _external_key(settings)
    accounts = AccountService(
        store, signing_key(settings), access_ttl=settings.access_token_ttl_seconds,
        refresh_ttl=settings.refresh_token_ttl_seconds, external_key=ext_key,
        external_algorithms=ext_algs, external_issuer=settings.external_jwt_issuer,
        external_audience=settings.external_jwt_audience)
    conversations = ConversationService(
        store, realtime, max_message_bytes=settings.max_message_bytes,
        max_group_members=settings.max_group_members,
        max_client_msg_id=settings.max_client_msg_id_length,
        default_page=settings.default_page_size, max_page=settings.max_page_size)
    calls = CallService(
        store, realtime, presence,
        ring_timeout_seconds=settings.call_ring_timeout_seconds,
        disconnect_grace_seconds=settings.call_disconnect_grace_seconds,
        signal_max_bytes=settings.call_signal_max_bytes,
        stun_urls=settings.stun_urls, turn_urls=settings.turn_urls,
        turn_secret=settings.turn_shared_secret, turn_ttl_seconds=settings.turn_ttl_seconds,
        default_page=settings.default_page_size, max_page=settings.max_page_size)


    limiters = build_rate_limiters(settings, redis=broker.client if settings.redis_url else None)
    return Services(settings=settings, store=store, accounts=accounts, limiters=limiters,
                    conversations=conversations, realtime=realtime, broker=broker,
                    calls=calls)


def create_app(settings: Settings) -> FastAPI:
    from nova.gateway.endpoint import (
        WebSocketFastPath,
        close_all,
        websocket_asgi,
    )
    from nova.http import auth, calls, conversations, errors, health, messages, users
    from nova.http.edge import CSP_DOCS, edge_middleware
    from nova.http.limits import BodyLimit
    from nova.http.middleware import ObservabilityMiddleware

    services = build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.is_postgres:
            await run_migrations(settings, services.store.engine)
        await services.realtime.start()
        if services.calls is not None:
            await services.calls.start()
        log.info("nova %s ready (database: %s, broker: %s)", __version__,
                 "postgresql" if settings.is_postgres else "sqlite",
                 "redis" if settings.redis_url else "memory")
        try:
            yield
        finally:
            await close_all(services)
            if services.calls is not None:
                await services.calls.stop()
            await services.realtime.stop()
            await services.limiters.aclose()
            await services.store.close()

    app = FastAPI(
        title="Nova",
        version=__version__,
        summary="Messaging and call-signaling API (PROTOCOL.md v1)",
        description=(
            "REST part of the Nova client protocol. Realtime events, typing, presence and "
            "call signaling go over the WebSocket at `/ws` (see docs/protocol.md). Errors "
            "are RFC 9457 problem documents with a stable `code`."),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.user_limiter = services.limiters.user if settings.rate_limits_enabled else None
    errors.install(app)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="/openapi.json", title="Nova API")
        page.headers["Content-Security-Policy"] = CSP_DOCS
        return page

    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    for module in (health, auth, users, conversations, messages, calls):
        app.include_router(module.router)
    # Security headers, CORS and the WebSocket Origin check, per-IP connection cap and rate
    # limit; then, outermost, request id + http metrics + access log (counts 429s too).
    edge = [Middleware(ObservabilityMiddleware),
            *edge_middleware(settings, services.limiters.ip)]  # outermost first
    for mw in reversed(edge):
        app.add_middleware(mw.cls, *mw.args, **mw.kwargs)
    # /ws: the same edge policy (the very same per-IP counts) and request id, without the
    # HTTP routing layers.
    ws_stack: Any = websocket_asgi
    for mw in reversed(edge):
        ws_stack = mw.cls(ws_stack, *mw.args, **mw.kwargs)
    app.add_middleware(WebSocketFastPath, ws_stack=ws_stack)
    return app

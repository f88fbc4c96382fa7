"""ObservabilityMiddleware: request id, HTTP metrics and the access log, as pure ASGI.

Pure ASGI (no ``BaseHTTPMiddleware``): it neither buffers bodies nor breaks contextvars or
streaming. Per HTTP request it

- takes a sane incoming ``X-Request-ID`` (1-128 of ``[A-Za-z0-9._:-]``) or generates one,
  sets the ``nova.logs.request_id`` contextvar for everything the app logs, and returns it in
  the ``X-Request-ID`` response header;
- counts ``http_requests_total{method,route,status}`` and observes
  ``http_request_duration_seconds{method,route}``, where ``route`` is the matched route
  TEMPLATE (``/api/v1/conversations/{conversation_id}``), read after the app ran from
  ``scope["route"]`` (FastAPI) or by matching the app's routes (plain Starlette), and
  ``"unmatched"`` when no route matched (404s, requests answered by an outer middleware);
- writes one access-log line (``nova.access``): method, route, path without query string,
  status, duration_ms. Probe paths (/health, /ready, /metrics) log at DEBUG.

WebSocket scopes get the request id (contextvar and ``X-Request-ID`` on the accept) but no
HTTP metrics: the gateway counts its own.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nova import metrics
from nova.logs import request_id

__all__ = ["REQUEST_ID_HEADER", "ObservabilityMiddleware", "route_template"]

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER_KEY = b"x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
UNMATCHED = "unmatched"

access_log = logging.getLogger("nova.access")


def _incoming_request_id(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == _HEADER_KEY:
            try:
                text: str = bytes(value).decode("ascii")
            except UnicodeDecodeError:
                break
            if _REQUEST_ID_RE.match(text):
                return text
            break
    return uuid.uuid4().hex


def _match_template(routes: Iterable[Any], scope: Scope, prefix: str = "") -> str | None:
    """The template of the route that fully matches ``scope``, searching Mounts recursively."""
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:  # an exotic route type: skip it
            continue
        if match != Match.FULL:
            continue
        path = getattr(route, "path", None)
        sub_routes = getattr(route, "routes", None)
        if sub_routes and path is not None:  # a Mount: descend with the child scope
            found = _match_template(sub_routes, {**scope, **child}, prefix + path)
            if found is not None:
                return found
            continue
        if isinstance(path, str):
            return prefix + path
    return None


def route_template(scope: Scope, original: Scope) -> str:
    """The matched route template for a finished request, or ``"unmatched"``.

    ``scope`` is the scope after the app ran (routers add ``route``/``endpoint`` to it);
    ``original`` is a copy taken before, used to re-match plain Starlette routes.
    """
    app = original.get("app") or scope.get("app")
    routes = getattr(getattr(app, "router", app), "routes", ())
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        before, after = original.get("root_path", ""), scope.get("root_path", "")
        if after.startswith(before) and len(after) > len(before):
            # Inside a Mount the route's path is relative: match from the top for the full one.
            found = _match_template(routes, original)
            return found if found is not None else after[len(before):] + path
        return path
    if "endpoint" in scope:  # a plain Starlette route matched: find its template
        found = _match_template(routes, original)
        if found is not None:
            return found
    return UNMATCHED


class ObservabilityMiddleware:
    """Request id, ``http_requests_total``/``http_request_duration_seconds``, access log."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        quiet_paths: Iterable[str] = ("/health", "/ready", "/metrics"),
    ) -> None:
        self.app = app
        self.quiet_paths = frozenset(quiet_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        rid = _incoming_request_id(scope)
        token = request_id.set(rid)
        original = dict(scope)
        start = time.perf_counter()
        status = 500
        header = (_HEADER_KEY, rid.encode("ascii"))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER_KEY
                ]
                headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - start
            method = scope.get("method", "GET")
            if method not in _KNOWN_METHODS:
                method = "OTHER"
            route = route_template(scope, original)
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            metrics.HTTP_REQUEST_DURATION.labels(method, route).observe(duration)
            path = scope.get("path", "")
            level = logging.DEBUG if path in self.quiet_paths and status < 400 else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(
                    level,
                    "%s %s %d",
                    method,
                    route,
                    status,
                    extra={
                        "method": method,
                        "route": route,
                        "path": path,
                        "status": status,
                        "duration_ms": round(duration * 1000, 3),
                    },
                )
            request_id.reset(token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = _incoming_request_id(scope)
        token = request_id.set(rid)
        header = (_HEADER_KEY, rid.encode("ascii"))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "websocket.accept":
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER_KEY
                ]
                headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            request_id.reset(token)

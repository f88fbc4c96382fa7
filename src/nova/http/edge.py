"""The HTTP edge: pure ASGI middlewares for security headers, CORS, the WebSocket ``Origin``
check, per-IP rate limits and a per-IP concurrent-connection cap.

They guard deployments with no proxy in front and add depth behind one (nginx, an Ingress or
a Gateway applies the same policy: see docs/deploy/ingress-tls.md). Each works on both
``http`` and ``websocket`` scopes and is configured from ``Settings``; the rate limiter is
passed in (``app.py`` builds it from ``nova.broker.ratelimit``: this layer never imports
the broker). ``edge_middleware(settings, ip_limiter)`` returns them in the right order.

Client address: the TCP peer, unless the peer is a trusted proxy (``NOVA_TRUSTED_PROXIES``,
addresses or CIDRs); then the rightmost ``X-Forwarded-For`` hop that is not itself a trusted
proxy. Everything left of that hop is client-supplied and ignored.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import urlsplit

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nova.errors import ErrorCode
from nova.settings import Settings

log = logging.getLogger("nova.http.edge")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

EXEMPT_PATHS = frozenset({"/health", "/ready", "/metrics"})
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, X-Request-ID"
CORS_EXPOSE = "Retry-After, X-Request-ID"
CORS_MAX_AGE = "600"

# An API answers JSON; nothing it serves should run script, load anything or be framed.
CSP_API = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# For HTML (error pages, anything a browser might render).
CSP_HTML = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self'")
# FastAPI's /docs page loads Swagger UI from a CDN with one inline script. A route that
# sets its own Content-Security-Policy keeps it: the docs route may send this one.
CSP_DOCS = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")


class RateLimiter(Protocol):
    """``await hit(key)`` → ``None`` (allowed) or seconds until allowed."""

    async def hit(self, key: str, cost: float = 1.0) -> float | None: ...


# --- client address --------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _parse_networks(items: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items
                 if item.strip())


def parse_trusted_proxies(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``["10.0.0.0/8", "127.0.0.1"]`` → networks; raises ``ValueError`` on a bad entry."""
    return _parse_networks(tuple(items))


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("["):  # "[2001:db8::1]:443"
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:  # "192.0.2.1:1234"
        value = value.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: Any, networks: Sequence[IPNetwork]) -> bool:
    return addr is not None and any(addr in net for net in networks)


def _header(scope: Scope, name: bytes) -> str | None:
    """All values of a request header joined by commas (None when absent)."""
    values = [v.decode("latin-1") for k, v in scope.get("headers") or () if k == name]
    return ",".join(values) if values else None


def _networks(trusted_proxies: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    items = tuple(trusted_proxies)
    if all(isinstance(i, str) for i in items):
        return _parse_networks(items)  # type: ignore[arg-type]
    return tuple(i if not isinstance(i, str) else ipaddress.ip_network(i, strict=False)
                 for i in items)


def client_ip(scope: Scope, trusted_proxies: Iterable[str | IPNetwork]) -> str:
    """The client's address for limits and logs.

    The TCP peer, unless it is a trusted proxy: then walk ``X-Forwarded-For`` from the right
    and return the first hop that is not a trusted proxy (the address the outermost trusted
    proxy saw). If every hop is trusted, the leftmost one; a malformed hop stops the walk at
    the last trusted address.
    """
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    networks = _networks(trusted_proxies)
    peer_addr = _ip(peer)
    if not networks or not _trusted(peer_addr, networks):
        return str(peer_addr) if peer_addr is not None else peer
    forwarded = _header(scope, b"x-forwarded-for")
    if not forwarded:
        return str(peer_addr)
    last = str(peer_addr)
    for hop in reversed([h for h in forwarded.split(",") if h.strip()]):
        addr = _ip(hop)
        if addr is None:
            return last
        last = str(addr)
        if not _trusted(addr, networks):
            return last
    return last


def request_is_tls(scope: Scope, trusted_proxies: Iterable[str | IPNetwork]) -> bool:
    """Whether the client reached us over TLS: our own scheme, or ``X-Forwarded-Proto`` set
    by a trusted proxy (its last value: the one the nearest proxy wrote)."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    client = scope.get("client")
    networks = _networks(trusted_proxies)
    if not client or not networks or not _trusted(_ip(str(client[0])), networks):
        return False
    proto = _header(scope, b"x-forwarded-proto")
    return bool(proto) and proto.split(",")[-1].strip().lower() in ("https", "wss")


# --- responses -------------------------------------------------------------------------------

def _problem_body(status: int, title: str, detail: str, code: ErrorCode) -> bytes:
    """The RFC 9457 document, shaped like ``nova.http.errors.problem``."""
    return json.dumps({"type": f"https://nova.dev/problems/{code.value.replace('_', '-')}",
                       "title": title, "status": status, "detail": detail,
                       "code": code.value}).encode()


async def _send_problem(send: Send, status: int, title: str, detail: str, code: ErrorCode,
                        headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = _problem_body(status, title, detail, code)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _deny_websocket(scope: Scope, receive: Receive, send: Send, status: int, title: str,
                          detail: str, code: ErrorCode,
                          headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Refuse a WebSocket handshake: an HTTP answer where the server supports the ASGI
    denial-response extension (uvicorn does), else close 1008 before accept (HTTP 403)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = _problem_body(status, title, detail, code)
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": str(code)})


def _retry_after(seconds: float) -> bytes:
    return str(max(1, math.ceil(seconds))).encode()


# --- security headers ------------------------------------------------------------------------

class SecurityHeadersMiddleware:
    """Adds ``X-Content-Type-Options``, ``X-Frame-Options``, ``Referrer-Policy``,
    ``Content-Security-Policy`` (restrictive; a stricter one for non-HTML) and, over TLS,
    ``Strict-Transport-Security`` to every HTTP response. Headers the app set win."""

    def __init__(self, app: ASGIApp, *, trusted_proxies: Iterable[str] = (),
                 hsts_max_age: int = 31_536_000) -> None:
        self.app = app
        self.trusted = parse_trusted_proxies(trusted_proxies)
        self.hsts = (f"max-age={hsts_max_age}; includeSubDomains".encode()
                     if hsts_max_age > 0 else None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = self.hsts is not None and request_is_tls(scope, self.trusted)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {k.lower() for k, _ in headers}
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                csp = CSP_HTML if b"html" in ctype.lower() else CSP_API
                extra = [(b"x-content-type-options", b"nosniff"),
                         (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"no-referrer"),
                         (b"content-security-policy", csp.encode())]
                if tls and self.hsts:
                    extra.append((b"strict-transport-security", self.hsts))
                headers.extend((k, v) for k, v in extra if k not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- CORS and the WebSocket Origin check ------------------------------------------------------

class OriginPolicy:
    """The allow-list from ``NOVA_CORS_ORIGINS`` (exact origins, or ``*`` for any)."""

    def __init__(self, origins: Iterable[str]) -> None:
        cleaned = [o.strip().rstrip("/") for o in origins if o.strip()]
        self.any = "*" in cleaned
        self.origins = frozenset(o.lower() for o in cleaned if o != "*")

    def allows(self, origin: str) -> bool:
        return self.any or origin.strip().rstrip("/").lower() in self.origins

    def allows_websocket(self, origin: str | None, host: str | None) -> bool:
        """No Origin: not a browser, allowed. Else allow-listed, or the page's own host
        (same origin; ports ignored, since a proxy may pass ``Host`` without one)."""
        if origin is None:
            return True
        if self.allows(origin):
            return True
        origin_host = urlsplit(origin.strip()).hostname
        request_host = urlsplit(f"//{host.strip()}").hostname if host else None
        return origin_host is not None and origin_host == request_host


class CorsMiddleware:
    """CORS for HTTP and the ``Origin`` check for WebSockets, from one allow-list.

    - Preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin:
      204 with the allowed methods and headers; from any other origin: 403
      ``origin_not_allowed``.
    - Other requests from an allowed origin get ``Access-Control-Allow-Origin`` (the origin
      itself) and ``Access-Control-Expose-Headers``; from another origin no CORS header, so
      the browser withholds the answer. ``Vary: Origin`` on every answer to a request with an
      Origin. No credentials mode: Nova uses bearer tokens, not cookies.
    - WebSocket with a disallowed ``Origin``: refused (403) before the handshake completes.
    """

    def __init__(self, app: ASGIApp, *, origins: Iterable[str]) -> None:
        self.app = app
        self.policy = OriginPolicy(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            origin = _header(scope, b"origin")
            if not self.policy.allows_websocket(origin, _header(scope, b"host")):
                log.info("websocket refused: origin %r not allowed", origin)
                await _deny_websocket(scope, receive, send, 403, "Forbidden",
                                      "this Origin may not open a WebSocket",
                                      ErrorCode.ORIGIN_NOT_ALLOWED)
                return
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self.policy.allows(origin)
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            vary = [(b"vary", b"Origin")]
            if not allowed:
                await _send_problem(send, 403, "Forbidden", "this Origin is not allowed",
                                    ErrorCode.ORIGIN_NOT_ALLOWED, vary)
                return
            await send({"type": "http.response.start", "status": 204, "headers": [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", CORS_METHODS.encode()),
                (b"access-control-allow-headers", CORS_HEADERS.encode()),
                (b"access-control-max-age", CORS_MAX_AGE.encode()),
                *vary]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers") or []
                           if not k.lower().startswith(b"access-control-")]
                if allowed:
                    headers += [(b"access-control-allow-origin", origin.encode("latin-1")),
                                (b"access-control-expose-headers", CORS_EXPOSE.encode())]
                vary = [v for k, v in headers if k.lower() == b"vary"]
                if not any(b"origin" in v.lower() for v in vary):
                    headers.append((b"vary", b"Origin"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)


# --- per-IP rate limit -----------------------------------------------------------------------

class RateLimitMiddleware:
    """Per-IP token bucket on every HTTP request and WebSocket handshake.

    Over the limit: 429 problem+json ``rate_limited`` with ``Retry-After`` (a WebSocket
    handshake gets the same 429 where the server can send it, else a 403 close). ``/health``,
    ``/ready`` and ``/metrics`` are exempt (probes and scrapes must never be throttled).
    """

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter | None,
                 trusted_proxies: Iterable[str] = (),
                 exempt_paths: Iterable[str] = EXEMPT_PATHS) -> None:
        self.app = app
        self.limiter = limiter
        self.trusted = parse_trusted_proxies(trusted_proxies)
        self.exempt = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.limiter is None or scope["type"] not in ("http", "websocket")
                or scope.get("path") in self.exempt):
            await self.app(scope, receive, send)
            return
        ip = client_ip(scope, self.trusted)
        wait = await self.limiter.hit(f"ip:{ip}")
        if wait is None:
            await self.app(scope, receive, send)
            return
        headers = [(b"retry-after", _retry_after(wait))]
        detail = "too many requests from this address; retry later"
        if scope["type"] == "http":
            await _send_problem(send, 429, "Too Many Requests", detail,
                                ErrorCode.RATE_LIMITED, headers)
        else:
            await _deny_websocket(scope, receive, send, 429, "Too Many Requests", detail,
                                  ErrorCode.RATE_LIMITED, headers)


# --- per-IP concurrent connections ------------------------------------------------------------

class ConnectionLimitMiddleware:
    """Caps what one client address holds open at once in this process: HTTP requests in
    flight plus open WebSockets (``NOVA_MAX_CONNECTIONS_PER_IP``). Over the cap: 429 for
    HTTP, a refused handshake for WebSockets. Per replica, not shared through Redis: an open
    socket lives on one replica, and the proxy in front caps the total."""

    def __init__(self, app: ASGIApp, *, max_per_ip: int, trusted_proxies: Iterable[str] = (),
                 exempt_paths: Iterable[str] = EXEMPT_PATHS,
                 active: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_per_ip = max_per_ip
        self.trusted = parse_trusted_proxies(trusted_proxies)
        self.exempt = frozenset(exempt_paths)
        # Shared by the HTTP stack and the /ws stack built from the same middleware list.
        self.active: dict[str, int] = {} if active is None else active

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        ip = client_ip(scope, self.trusted)
        if self.active.get(ip, 0) >= self.max_per_ip:
            detail = f"more than {self.max_per_ip} open connections from this address"
            headers = [(b"retry-after", b"1")]
            if scope["type"] == "http":
                await _send_problem(send, 429, "Too Many Requests", detail,
                                    ErrorCode.RATE_LIMITED, headers)
            else:
                await _deny_websocket(scope, receive, send, 429, "Too Many Requests", detail,
                                      ErrorCode.RATE_LIMITED, headers)
            return
        self.active[ip] = self.active.get(ip, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.active[ip] - 1
            if left:
                self.active[ip] = left
            else:
                del self.active[ip]


# --- wiring ----------------------------------------------------------------------------------

def edge_middleware(settings: Settings, ip_limiter: RateLimiter | None) -> list[Middleware]:
    """The edge middlewares, outermost first, for ``FastAPI(middleware=...)``.

    Order: security headers (on every answer, 429s included) → CORS (so a browser can read
    a 429 and its Retry-After; preflights are answered here) → connection cap → rate limit.
    Pass ``ip_limiter=None`` (or a disabled limiter) to skip rate limiting.
    """
    trusted = list(settings.trusted_proxies)
    parse_trusted_proxies(trusted)  # fail at start-up on a malformed entry
    stack = [
        Middleware(SecurityHeadersMiddleware, trusted_proxies=trusted,
                   hsts_max_age=settings.hsts_max_age_seconds),
        Middleware(CorsMiddleware, origins=settings.cors_origins),
        Middleware(ConnectionLimitMiddleware, max_per_ip=settings.max_connections_per_ip,
                   trusted_proxies=trusted, active={}),
    ]
    if ip_limiter is not None and settings.rate_limits_enabled:
        stack.append(Middleware(RateLimitMiddleware, limiter=ip_limiter,
                                trusted_proxies=trusted))
    return stack


def add_edge_middleware(app: Any, settings: Settings, ip_limiter: RateLimiter | None) -> None:
    """``app.add_middleware`` for each of ``edge_middleware`` (last added is outermost)."""
    for mw in reversed(edge_middleware(settings, ip_limiter)):
        app.add_middleware(mw.cls, *mw.args, **mw.kwargs)


__all__ = [
    "CSP_API",
    "CSP_DOCS",
    "CSP_HTML",
    "EXEMPT_PATHS",
    "ConnectionLimitMiddleware",
    "CorsMiddleware",
    "OriginPolicy",
    "RateLimitMiddleware",
    "RateLimiter",
    "SecurityHeadersMiddleware",
    "add_edge_middleware",
    "client_ip",
    "edge_middleware",
    "parse_trusted_proxies",
    "request_is_tls",
]

"""The edge middlewares on a tiny Starlette app: headers, CORS, Origin, limits, client IP."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from nova.broker.ratelimit import MemoryRateLimiter
from nova.http.edge import (
    CSP_API,
    CSP_HTML,
    ConnectionLimitMiddleware,
    client_ip,
    edge_middleware,
    request_is_tls,
)
from nova.settings import Settings

ALLOWED = "https://app.example.com"


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _whoami(request: Request) -> JSONResponse:
    return JSONResponse({"ip": request.client.host if request.client else None})


async def _page(request: Request) -> HTMLResponse:
    return HTMLResponse("<p>hi</p>")


async def _own_csp(request: Request) -> PlainTextResponse:
    return PlainTextResponse("x", headers={"Content-Security-Policy": "default-src 'self'"})


async def _ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "hello"})
    await websocket.close()


def make_app(limiter: MemoryRateLimiter | None = None, **overrides: object) -> Starlette:
    settings = Settings(**{"cors_origins": [ALLOWED], **overrides})  # type: ignore[arg-type]
    routes = [Route("/health", _health), Route("/api/v1/whoami", _whoami),
              Route("/api/v1/whoami", _whoami, methods=["POST"]), Route("/page", _page),
              Route("/own-csp", _own_csp), WebSocketRoute("/ws", _ws)]
    return Starlette(routes=routes, middleware=edge_middleware(settings, limiter))


def client(app: Starlette, *, base_url: str = "http://testserver",
           ip: str = "203.0.113.7") -> TestClient:
    return TestClient(app, base_url=base_url, client=(ip, 50000))


# --- client address ----------------------------------------------------------------------

def _scope(peer: str, xff: str | None = None, proto: str | None = None,
           scheme: str = "http") -> dict:
    headers = []
    if xff is not None:
        headers.append((b"x-forwarded-for", xff.encode()))
    if proto is not None:
        headers.append((b"x-forwarded-proto", proto.encode()))
    return {"type": "http", "client": (peer, 1234), "headers": headers, "scheme": scheme}


def test_client_ip_untrusted_peer_ignores_forwarded_for() -> None:
    assert client_ip(_scope("198.51.100.1", "1.2.3.4"), ["10.0.0.0/8"]) == "198.51.100.1"
    assert client_ip(_scope("10.0.0.5", "1.2.3.4"), []) == "10.0.0.5"


def test_client_ip_trusted_peer_takes_rightmost_untrusted_hop() -> None:
    trusted = ["10.0.0.0/8", "127.0.0.1"]
    # the client forged "6.6.6.6"; the ingress saw 203.0.113.9; an inner proxy 10.1.1.1
    scope = _scope("10.0.0.5", "6.6.6.6, 203.0.113.9, 10.1.1.1")
    assert client_ip(scope, trusted) == "203.0.113.9"
    assert client_ip(_scope("127.0.0.1", "203.0.113.9"), trusted) == "203.0.113.9"


def test_client_ip_handles_multiple_headers_ports_ipv6_and_garbage() -> None:
    trusted = ["10.0.0.0/8", "::1"]
    scope = _scope("::1")
    scope["headers"] = [(b"x-forwarded-for", b"6.6.6.6"),
                        (b"x-forwarded-for", b"[2001:db8::7]:443, 10.2.3.4")]
    assert client_ip(scope, trusted) == "2001:db8::7"
    assert client_ip(_scope("10.0.0.5", "192.0.2.4:5555"), trusted) == "192.0.2.4"
    # a malformed hop stops the walk at the last trusted address
    assert client_ip(_scope("10.0.0.5", "unknown, 10.9.9.9"), trusted) == "10.9.9.9"
    # all hops trusted: the leftmost
    assert client_ip(_scope("10.0.0.5", "10.1.1.1, 10.2.2.2"), trusted) == "10.1.1.1"
    # no header from a trusted peer: the peer
    assert client_ip(_scope("10.0.0.5"), trusted) == "10.0.0.5"


def test_request_is_tls_trusts_forwarded_proto_only_from_trusted_proxy() -> None:
    assert request_is_tls(_scope("198.51.100.1", scheme="https"), [])
    assert not request_is_tls(_scope("198.51.100.1", proto="https"), ["10.0.0.0/8"])
    assert request_is_tls(_scope("10.0.0.1", proto="https"), ["10.0.0.0/8"])
    assert not request_is_tls(_scope("10.0.0.1", proto="http"), ["10.0.0.0/8"])


def test_settings_refuse_malformed_trusted_proxy() -> None:
    with pytest.raises(ValueError, match="not an IP address or CIDR"):
        Settings(trusted_proxies=["10.0.0.0/8", "proxy.local"])


# --- security headers --------------------------------------------------------------------

def test_security_headers_on_every_response_hsts_only_over_tls() -> None:
    app = make_app()
    r = client(app).get("/health")
    assert r.json() == {"status": "ok"}
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["content-security-policy"] == CSP_API
    assert "strict-transport-security" not in r.headers
    r = client(app, base_url="https://testserver").get("/health")
    assert r.headers["strict-transport-security"].startswith("max-age=31536000")
    assert client(app).get("/missing").headers["x-frame-options"] == "DENY"  # 404 too


def test_security_headers_html_csp_and_app_csp_wins() -> None:
    c = client(make_app())
    assert c.get("/page").headers["content-security-policy"] == CSP_HTML
    assert "'none'" in CSP_HTML and "unsafe-inline" not in CSP_HTML
    assert c.get("/own-csp").headers["content-security-policy"] == "default-src 'self'"


def test_hsts_from_trusted_proxy_forwarded_proto() -> None:
    app = make_app(trusted_proxies=["10.0.0.0/8"])
    r = client(app, ip="10.0.0.9").get("/health", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" in r.headers
    r = client(app, ip="198.51.100.1").get("/health", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" not in r.headers


# --- CORS --------------------------------------------------------------------------------

def test_cors_preflight_allowed_origin() -> None:
    r = client(make_app()).options("/api/v1/whoami", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    for name in ("authorization", "content-type", "x-request-id"):
        assert name in allowed
    assert "origin" in r.headers["vary"].lower()
    assert r.headers["x-content-type-options"] == "nosniff"


def test_cors_preflight_other_origin_is_refused() -> None:
    r = client(make_app()).options("/api/v1/whoami", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in r.headers


def test_cors_simple_request_headers() -> None:
    c = client(make_app())
    r = c.get("/api/v1/whoami", headers={"Origin": ALLOWED})
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()
    assert r.headers["vary"] == "Origin"
    r = c.get("/api/v1/whoami", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200  # served, but the browser will not let the page read it
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in c.get("/api/v1/whoami").headers


def test_cors_wildcard_setting_allows_any_origin() -> None:
    r = client(make_app(cors_origins=["*"])).get("/health", headers={"Origin": "https://x.y"})
    assert r.headers["access-control-allow-origin"] == "https://x.y"


# --- WebSocket Origin ----------------------------------------------------------------------

def test_websocket_origin_allowed_missing_or_same_host() -> None:
    c = client(make_app())
    for headers in ({"Origin": ALLOWED}, {}, {"Origin": "https://testserver"}):
        with c.websocket_connect("/ws", headers=headers) as ws:
            assert ws.receive_json() == {"type": "hello"}


def test_websocket_disallowed_origin_is_refused() -> None:
    c = client(make_app())
    with pytest.raises(WebSocketDenialResponse) as info:
        with c.websocket_connect("/ws", headers={"Origin": "https://evil.example"}):
            pass
    assert info.value.status_code == 403
    assert info.value.json()["code"] == "origin_not_allowed"


# --- per-IP rate limit ---------------------------------------------------------------------

def test_rate_limit_answers_429_with_retry_after_per_ip() -> None:
    limiter = MemoryRateLimiter(rate=0.5, burst=3)
    app = make_app(limiter)
    a = client(app, ip="192.0.2.1")
    statuses = [a.get("/api/v1/whoami").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    r = a.get("/api/v1/whoami", headers={"Origin": ALLOWED})
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["code"] == "rate_limited" and body["status"] == 429
    assert set(body) == {"type", "title", "status", "detail", "code"}
    assert r.headers["access-control-allow-origin"] == ALLOWED  # the page can read it
    assert r.headers["x-content-type-options"] == "nosniff"
    # health stays reachable; another address has its own bucket
    assert a.get("/health").status_code == 200
    assert client(app, ip="192.0.2.2").get("/api/v1/whoami").status_code == 200


def test_rate_limit_websocket_handshake_refused_with_429() -> None:
    app = make_app(MemoryRateLimiter(rate=0.5, burst=1))
    c = client(app)
    with c.websocket_connect("/ws") as ws:
        ws.receive_json()
    with pytest.raises(WebSocketDenialResponse) as info:
        with c.websocket_connect("/ws"):
            pass
    assert info.value.status_code == 429
    assert "retry-after" in info.value.headers


def test_rate_limit_keys_on_forwarded_client_behind_trusted_proxy() -> None:
    app = make_app(MemoryRateLimiter(rate=0.5, burst=1), trusted_proxies=["10.0.0.0/8"])
    proxy = client(app, ip="10.0.0.2")
    assert proxy.get("/api/v1/whoami", headers={"X-Forwarded-For": "198.51.100.1"}).status_code \
        == 200
    assert proxy.get("/api/v1/whoami", headers={"X-Forwarded-For": "198.51.100.1"}).status_code \
        == 429
    assert proxy.get("/api/v1/whoami", headers={"X-Forwarded-For": "198.51.100.2"}).status_code \
        == 200


def test_rate_limits_off_installs_no_limiter() -> None:
    app = make_app(MemoryRateLimiter(rate=0.5, burst=1), rate_limits="off")
    c = client(app)
    assert {c.get("/api/v1/whoami").status_code for _ in range(5)} == {200}


# --- concurrent connections ---------------------------------------------------------------

async def test_connection_cap_counts_requests_in_flight() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow_app(scope: dict, receive: object, send: object) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    mw = ConnectionLimitMiddleware(slow_app, max_per_ip=1)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    def scope(ip: str) -> dict:
        return {"type": "http", "path": "/api", "method": "GET", "headers": [],
                "client": (ip, 1)}

    first = asyncio.create_task(mw(scope("192.0.2.1"), receive, send))
    await entered.wait()
    await mw(scope("192.0.2.1"), receive, send)  # refused at once
    assert sent[0]["status"] == 429
    assert json.loads(sent[1]["body"])["code"] == "rate_limited"
    assert mw.active == {"192.0.2.1": 1}
    release.set()
    await first
    assert sent[2]["status"] == 200 and mw.active == {}
    await mw(scope("192.0.2.1"), receive, send)
    assert sent[4]["status"] == 200


def test_connection_cap_counts_open_websockets() -> None:
    app = make_app(max_connections_per_ip=1)

    async def hold(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()
        await websocket.close()

    app.router.routes.append(WebSocketRoute("/hold", hold))
    c = client(app)
    with c.websocket_connect("/hold") as ws:
        with pytest.raises(WebSocketDenialResponse) as info:
            with c.websocket_connect("/ws"):
                pass
        assert info.value.status_code == 429
        ws.send_text("bye")
    with c.websocket_connect("/ws") as ws2:
        assert ws2.receive_json() == {"type": "hello"}

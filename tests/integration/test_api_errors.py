"""Bad input of every kind gets the right status and `code` (RFC 9457 problem documents),
and nothing already stored is lost or changed. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from _api import Api, problem, quick_users

pytestmark = pytest.mark.integration


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL that the test can cut (the database 'goes away')."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tr, tw = await asyncio.open_connection(*self.target)
        self.writers |= {w, tw}
        await asyncio.gather(self._pipe(r, tw), self._pipe(tr, w))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        await self.server.wait_closed()


@pytest.fixture
async def pg_proxy(pg_database: str) -> Any:
    url = urlsplit(pg_database)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    yield proxy
    with contextlib.suppress(Exception):
        await proxy.cut()


@pytest.fixture
def settings(db_kind: str, make_settings: Any, request: pytest.FixtureRequest) -> Any:
    """The default settings; or (indirectly) PostgreSQL through a proxy the test can cut."""
    if getattr(request, "param", None) == "via_proxy":
        proxy = request.getfixturevalue("pg_proxy")
        real = make_settings("postgresql")
        url = urlsplit(real.database_url)
        netloc = f"{url.username}@127.0.0.1:{proxy.port}" if url.username else \
            f"127.0.0.1:{proxy.port}"
        return real.model_copy(update={"database_url": url._replace(netloc=netloc).geturl()})
    return make_settings(db_kind)


async def _snapshot(api: Api, who: Any, cid: str) -> Any:
    conv = await api.conversation(who, cid)
    return conv, (await api.messages(who, cid))["items"]


async def test_bad_input_is_rejected_and_nothing_stored_is_lost(api: Api, live: Any) -> None:
    a, b = await quick_users(live, 2)
    cid = (await api.group(a, [b]))["id"]
    m1 = await api.send(a, cid, "one", client_msg_id="keep-1")
    await api.send(b, cid, "two")
    before = await _snapshot(api, a, cid)
    users_before = len(await live.services.store.list_users(1000))
    msgs = f"/api/v1/conversations/{cid}/messages"
    raw = {"Content-Type": "application/json"}

    cases: list[tuple[str, str, dict[str, Any], int, str, str | None]] = [
        # malformed JSON
        ("POST", msgs, {"content": b'{"client_msg_id": "x", "body": ', "headers": raw},
         422, "invalid_request", None),
        ("POST", msgs, {"content": b"not json at all", "headers": raw}, 422,
         "invalid_request", None),
        ("POST", "/api/v1/conversations", {"content": b"[1, 2", "headers": raw}, 422,
         "invalid_request", None),
        ("POST", msgs, {"content": b"", "headers": raw}, 422, "invalid_request", None),
        # wrong types, with the offending field named
        ("POST", msgs, {"json": {"client_msg_id": "x", "body": 123}}, 422,
         "invalid_request", "body"),
        ("POST", msgs, {"json": {"client_msg_id": 7, "body": "x"}}, 422,
         "invalid_request", "client_msg_id"),
        ("POST", msgs, {"json": {"body": "x"}}, 422, "invalid_request", "client_msg_id"),
        ("POST", msgs, {"json": ["body", "x"]}, 422, "invalid_request", None),
        ("POST", "/api/v1/conversations", {"json": {"kind": "group", "title": "t",
                                                    "member_ids": b.id}},
         422, "invalid_request", "member_ids"),
        ("POST", "/api/v1/conversations", {"json": {"kind": "channel", "member_ids": []}},
         422, "invalid_request", "kind"),
        ("POST", "/api/v1/conversations", {"json": {"kind": "group", "member_ids": [b.id]}},
         422, "invalid_request", "title"),
        ("PATCH", f"/api/v1/conversations/{cid}", {"json": {"title": "   "}}, 422,
         "invalid_request", "title"),
        ("PATCH", f"/api/v1/conversations/{cid}", {"json": {"title": ["x"]}}, 422,
         "invalid_request", "title"),
        ("POST", f"/api/v1/conversations/{cid}/read", {"json": {"seq": "1"}}, 422,
         "invalid_request", "seq"),
        ("POST", f"/api/v1/conversations/{cid}/read", {"json": {"seq": True}}, 422,
         "invalid_request", "seq"),
        ("POST", f"/api/v1/conversations/{cid}/read", {"json": {"seq": -1}}, 422,
         "invalid_request", "seq"),
        ("POST", f"/api/v1/conversations/{cid}/members", {"json": {"user_ids": [1]}}, 422,
         "invalid_request", "user_ids"),
        # blank and oversize bodies, bad client_msg_id
        ("POST", msgs, {"json": {"client_msg_id": "e1", "body": ""}}, 422,
         "empty_message", "body"),
        ("POST", msgs, {"json": {"client_msg_id": "e2", "body": " \n\t\u3000 "}}, 422,
         "empty_message", "body"),
        ("PATCH", f"{msgs}/{m1['id']}", {"json": {"body": "  "}}, 422, "empty_message", "body"),
        ("POST", msgs, {"json": {"client_msg_id": "o1", "body": "x" * 20000}}, 413,
         "message_too_large", "body"),
        ("POST", msgs, {"json": {"client_msg_id": "x" * 65, "body": "x"}}, 422,
         "invalid_request", "client_msg_id"),
        ("POST", msgs, {"json": {"client_msg_id": "", "body": "x"}}, 422,
         "invalid_request", "client_msg_id"),
        # a retry of a stored client_msg_id with a bad body must not touch the stored one
        ("POST", msgs, {"json": {"client_msg_id": "keep-1", "body": ""}}, 422,
         "empty_message", "body"),
        # bad pagination
        ("GET", msgs, {"params": {"limit": 0}}, 422, "invalid_request", "limit"),
        ("GET", msgs, {"params": {"limit": 201}}, 422, "invalid_request", "limit"),
        ("GET", msgs, {"params": {"limit": "ten"}}, 422, "invalid_request", "limit"),
        ("GET", msgs, {"params": {"before": -1}}, 422, "invalid_request", "before"),
        ("GET", msgs, {"params": {"after": "x"}}, 422, "invalid_request", "after"),
        ("GET", "/api/v1/conversations", {"params": {"limit": -5}}, 422, "invalid_request",
         "limit"),
        ("GET", "/api/v1/conversations", {"params": {"cursor": "garbage!!"}}, 422,
         "invalid_cursor", "cursor"),
        ("GET", "/api/v1/conversations", {"params": {"cursor": "WzFd"}}, 422,
         "invalid_cursor", "cursor"),
        ("GET", "/api/v1/users", {"params": {"limit": 1000}}, 422, "invalid_request",
         "limit"),
        # unknown ids
        ("GET", "/api/v1/conversations/0000unknown", {}, 404, "not_found", None),
        ("POST", "/api/v1/conversations/0000unknown/messages",
         {"json": {"client_msg_id": "u1", "body": "x"}}, 404, "not_found", None),
        ("PATCH", f"{msgs}/0000unknown", {"json": {"body": "x"}}, 404, "not_found", None),
        ("GET", "/api/v1/users/0000unknown", {}, 404, "not_found", None),
        ("POST", f"/api/v1/conversations/{cid}/members", {"json": {"user_ids": ["nobody"]}},
         404, "not_found", None),
        ("GET", "/api/v1/no-such-route", {}, 404, "not_found", None),
    ]
    for method, path, kwargs, status, code, field in cases:
        resp = await api.call(method, path, a, **kwargs)
        try:
            problem(resp, status, code, field)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path} {kwargs}: {exc}") from None
    resp = await api.call("PUT", msgs, a, json={})
    assert resp.status_code == 405 and resp.json()["status"] == 405

    assert await _snapshot(api, a, cid) == before
    assert len(await live.services.store.list_users(1000)) == users_before
    assert (await api.ok("GET", "/api/v1/conversations", a))["items"][0]["id"] == cid


async def test_bad_registrations_get_their_codes(api: Api, live: Any) -> None:
    taken = await api.register()
    url = "/api/v1/auth/register"
    cases = [
        ({"username": "ab", "password": "long-enough"}, 422, "invalid_username"),
        ({"username": "x" * 33, "password": "long-enough"}, 422, "invalid_username"),
        ({"username": "has space", "password": "long-enough"}, 422, "invalid_username"),
        ({"username": "émile", "password": "long-enough"}, 422, "invalid_username"),
        ({"username": "okname", "password": "short"}, 422, "weak_password"),
        ({"username": "okname", "password": ""}, 422, "weak_password"),
        ({"username": taken.username.upper(), "password": "long-enough"}, 409,
         "username_taken"),
        ({"username": 12345, "password": "long-enough"}, 422, "invalid_request"),
        ({"username": "okname"}, 422, "invalid_request"),
        ({"username": "okname", "password": "long-enough", "display_name": 5}, 422,
         "invalid_request"),
    ]
    for payload, status, code in cases:
        problem(await api.http.post(url, json=payload), status, code)
    problem(await api.http.post("/api/v1/auth/login", json={"username": ["x"],
                                                            "password": "y"}),
            422, "invalid_request", "username")
    problem(await api.http.post("/api/v1/auth/refresh", json={}), 422, "invalid_request",
            "refresh_token")
    names = [u.username for u in await live.services.store.list_users(1000)]
    assert names == [taken.username]


async def test_request_over_the_size_limit_is_413_and_not_stored(api: Api, live: Any) -> None:
    a, b = await quick_users(live, 2)
    cid = (await api.group(a, [b]))["id"]
    limit = live.settings.max_request_bytes
    payload = json.dumps({"client_msg_id": "huge", "body": "x" * (limit + 10)}).encode()
    url = f"/api/v1/conversations/{cid}/messages"
    problem(await api.call("POST", url, a, content=payload,
                           headers={"Content-Type": "application/json"}),
            413, "request_too_large")

    async def chunks() -> Any:
        for i in range(0, len(payload), 8192):
            yield payload[i:i + 8192]

    # Without Content-Length (chunked) the limit holds too.
    problem(await api.call("POST", url, a, content=chunks(),
                           headers={"Content-Type": "application/json"}),
            413, "request_too_large")
    assert (await api.messages(a, cid))["items"] == []
    # A request under the limit still passes.
    await api.send(a, cid, "small")


async def test_health_ready_and_unauthenticated_api(api: Api) -> None:
    assert (await api.ok("GET", "/health")) == {"status": "ok"}
    assert (await api.ok("GET", "/ready")) == {
        "status": "ready", "checks": {"database": "ok", "broker": "ok"}}
    for method, path in [("GET", "/api/v1/users/me"), ("GET", "/api/v1/conversations"),
                         ("POST", "/api/v1/conversations"), ("GET", "/api/v1/users"),
                         ("GET", "/api/v1/conversations/x/messages")]:
        problem(await api.call(method, path), 401, "unauthorized")


@pytest.mark.parametrize("db_kind", ["postgresql"])
@pytest.mark.parametrize("settings", ["via_proxy"], indirect=True)
async def test_ready_is_503_naming_the_database_when_it_goes_away(
        api: Api, pg_proxy: TcpProxy) -> None:
    await api.ok("GET", "/ready")
    await pg_proxy.cut()
    assert (await api.ok("GET", "/health")) == {"status": "ok"}
    resp = await api.call("GET", "/ready")
    assert resp.status_code == 503, resp.text
    assert resp.json()["status"] != "ready"
    assert resp.json()["checks"]["database"] == "unavailable"
    assert resp.json()["checks"]["broker"] == "ok"
    problem(await api.http.post("/api/v1/auth/login",
                                json={"username": "alice", "password": "whatever1"}),
            503, "unavailable")

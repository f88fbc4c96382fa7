"""Helpers for the REST API tests (imported by tests/integration/*): accounts on the live
server, and the check that a response is PROTOCOL.md's problem document."""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import Any

import httpx

PASSWORD = "correct-horse-1"
_names = itertools.count(1)


@dataclass
class Account:
    id: str
    username: str
    access: str
    refresh: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


def problem(resp: httpx.Response, status: int, code: str,
            field: str | None = None) -> dict[str, Any]:
    """Assert ``resp`` is the RFC 9457 problem document of PROTOCOL.md with this status/code."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body = resp.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert body["status"] == status and body["code"] == code, body
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    if field is not None:
        assert body.get("field") == field or field in body["detail"], body
    return dict(body)


class Api:
    """A thin layer over the httpx client of the ``live`` server."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    @staticmethod
    def fresh_name(prefix: str = "u") -> str:
        return f"{prefix}{next(_names)}_{secrets.token_hex(2)}"

    async def register(self, username: str | None = None, password: str = PASSWORD,
                       display_name: str | None = None) -> Account:
        payload: dict[str, Any] = {"username": username or self.fresh_name(),
                                   "password": password}
        if display_name is not None:
            payload["display_name"] = display_name
        resp = await self.http.post("/api/v1/auth/register", json=payload)
        assert resp.status_code == 201, resp.text
        body = resp.json()
        return Account(body["user"]["id"], body["user"]["username"], body["access_token"],
                       body["refresh_token"])

    async def call(self, method: str, path: str, who: Account | None = None,
                   **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            headers.update(who.auth)
        return await self.http.request(method, path, headers=headers, **kwargs)

    async def ok(self, method: str, path: str, who: Account | None = None, status: int = 200,
                 **kwargs: Any) -> Any:
        resp = await self.call(method, path, who, **kwargs)
        assert resp.status_code == status, (method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    async def group(self, owner: Account, members: list[Account], title: str = "team") -> Any:
        return await self.ok("POST", "/api/v1/conversations", owner, 201,
                             json={"kind": "group", "title": title,
                                   "member_ids": [m.id for m in members]})

    async def direct(self, a: Account, b: Account, status: int = 201) -> Any:
        return await self.ok("POST", "/api/v1/conversations", a, status,
                             json={"kind": "direct", "member_ids": [b.id]})

    async def send(self, who: Account, conv_id: str, body: str = "hi",
                   client_msg_id: str | None = None, status: int = 201) -> Any:
        return await self.ok("POST", f"/api/v1/conversations/{conv_id}/messages", who, status,
                             json={"client_msg_id": client_msg_id or secrets.token_hex(8),
                                   "body": body})

    async def messages(self, who: Account, conv_id: str, **params: Any) -> Any:
        return await self.ok("GET", f"/api/v1/conversations/{conv_id}/messages", who,
                             params=params)

    async def conversation(self, who: Account, conv_id: str) -> Any:
        return await self.ok("GET", f"/api/v1/conversations/{conv_id}", who)


async def quick_users(live: Any, n: int, prefix: str = "q") -> list[Account]:
    """``n`` users made straight in the store with access tokens signed by the server's key:
    for tests about conversations and messages, without paying argon2 per user."""
    import time

    import jwt

    out = []
    for _ in range(n):
        name = Api.fresh_name(prefix)
        user = await live.services.store.create_user(name, name, None)
        now = int(time.time())
        token = jwt.encode({"sub": user.id, "sid": secrets.token_hex(8), "iat": now,
                            "exp": now + 600, "iss": "nova", "typ": "access"},
                           live.settings.jwt_secret, algorithm="HS256")
        out.append(Account(user.id, name, token, ""))
    return out

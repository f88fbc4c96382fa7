"""A small Nova client: REST (httpx) and the WebSocket (websockets), resuming by cursor.

Used by the tests, the benchmarks and ``nova verify``; also a readable reference for client
authors. ::

    async with NovaClient("http://127.0.0.1:3000") as alice:
        await alice.register("alice", "correct horse")
        conv = await alice.create_group("team", [bob_id])
        async with alice.socket() as ws:
            await ws.send_message(conv["id"], "hello")
            event = await ws.next_event()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection


class ApiError(Exception):
    """A problem document from the server."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body.get('code')}: {body.get('detail')}")
        self.status = status
        self.code = body.get("code")
        self.body = body


class NovaClient:
    def __init__(self, base_url: str, *, verify: bool | str | ssl.SSLContext = True,
                 timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.base_url, verify=verify, timeout=timeout)
        self._verify = verify
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.user: dict[str, Any] | None = None

    async def __aenter__(self) -> NovaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    @property
    def user_id(self) -> str:
        assert self.user is not None, "not logged in"
        return str(self.user["id"])

    # --- REST ---------------------------------------------------------------------------
    async def request(self, method: str, path: str, json: Any = None,
                      params: dict[str, Any] | None = None, auth: bool = True) -> Any:
        headers = {}
        if auth and self.access_token:
            headers["Authorization"] = f"Bearer {self.access_token}"
        resp = await self.http.request(method, path, json=json, params=params, headers=headers)
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"code": "http_error", "detail": resp.text[:200]}
            raise ApiError(resp.status_code, body)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def _take_tokens(self, body: dict[str, Any]) -> dict[str, Any]:
        self.access_token = body["access_token"]
        self.refresh_token = body["refresh_token"]
        self.user = body["user"]
        return body

    async def register(self, username: str, password: str,
                       display_name: str | None = None) -> dict[str, Any]:
        payload = {"username": username, "password": password}
        if display_name:
            payload["display_name"] = display_name
        return self._take_tokens(await self.request("POST", "/api/v1/auth/register", payload,
                                                    auth=False))

    async def login(self, username: str, password: str) -> dict[str, Any]:
        return self._take_tokens(await self.request(
            "POST", "/api/v1/auth/login", {"username": username, "password": password},
            auth=False))

    async def refresh(self) -> dict[str, Any]:
        return self._take_tokens(await self.request(
            "POST", "/api/v1/auth/refresh", {"refresh_token": self.refresh_token}, auth=False))

    async def logout(self) -> None:
        await self.request("POST", "/api/v1/auth/logout")

    async def close_account(self) -> None:
        """DELETE /api/v1/users/me: disable this account and revoke all its tokens."""
        await self.request("DELETE", "/api/v1/users/me")

    async def create_direct(self, other_user_id: str) -> dict[str, Any]:
        return await self.request("POST", "/api/v1/conversations",  # type: ignore[no-any-return]
                                  {"kind": "direct", "member_ids": [other_user_id]})

    async def create_group(self, title: str, member_ids: list[str]) -> dict[str, Any]:
        return await self.request("POST", "/api/v1/conversations",  # type: ignore[no-any-return]
                                  {"kind": "group", "title": title, "member_ids": member_ids})

    async def send_message(self, conversation_id: str, body: str,
                           client_msg_id: str | None = None) -> dict[str, Any]:
        return await self.request(  # type: ignore[no-any-return]
            "POST", f"/api/v1/conversations/{conversation_id}/messages",
            {"client_msg_id": client_msg_id or uuid.uuid4().hex, "body": body})

    async def history(self, conversation_id: str, **params: Any) -> dict[str, Any]:
        return await self.request(  # type: ignore[no-any-return]
            "GET", f"/api/v1/conversations/{conversation_id}/messages", params=params)

    async def ice_servers(self) -> dict[str, Any]:
        return await self.request("GET", "/api/v1/calls/ice-servers")  # type: ignore[no-any-return]

    # --- WebSocket ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def socket(self, since: str | None = None,
                     **kwargs: Any) -> AsyncIterator[Socket]:
        sock = Socket(self, since)
        await sock.connect(**kwargs)
        try:
            yield sock
        finally:
            await sock.close()


class Socket:
    """One WebSocket. Events are queued in arrival order; ``cursor`` is the last event seen,
    so ``reconnect()`` resumes exactly after it."""

    def __init__(self, client: NovaClient, since: str | None) -> None:
        self.client = client
        self.cursor = since
        self.hello: dict[str, Any] | None = None
        self.ws: ClientConnection | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # everything else
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[tuple[int | None, str]] | None = None

    def _url(self) -> str:
        base = self.client.base_url
        scheme = "wss" if base.startswith("https") else "ws"
        url = f"{scheme}{base[base.index(':'):]}/ws"
        if self.cursor is not None:
            url += f"?since={self.cursor}"
        return url

    async def connect(self, **kwargs: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.client.access_token}"}
        extra: dict[str, Any] = {"additional_headers": headers, "max_size": 2**22,
                                 "open_timeout": 10}
        if self._url().startswith("wss"):
            verify = self.client._verify
            if isinstance(verify, ssl.SSLContext):
                extra["ssl"] = verify
            elif verify is False:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                extra["ssl"] = ctx
            elif isinstance(verify, str):
                extra["ssl"] = ssl.create_default_context(cafile=verify)
        extra.update(kwargs)
        self.ws = await websockets.connect(self._url(), **extra)
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        first = orjson.loads(await self.ws.recv())
        if first.get("type") != "hello":
            raise ApiError(401, first)
        self.hello = first
        if self.cursor is None:
            self.cursor = first["cursor"]
        self._reader = asyncio.create_task(self._read())
        return first

    async def _read(self) -> None:
        assert self.ws is not None and self.closed is not None
        try:
            async for raw in self.ws:
                frame = orjson.loads(raw)
                kind = frame.get("type")
                if kind == "event":
                    self.cursor = frame["cursor"]
                    await self.events.put(frame)
                elif kind in ("ack", "error", "pong") and str(frame.get("id")) in self._acks:
                    fut = self._acks.pop(str(frame["id"]))
                    if not fut.done():
                        fut.set_result(frame)
                else:
                    await self.frames.put(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            if not self.closed.done():
                self.closed.set_result((self.ws.close_code, self.ws.close_reason or ""))
            for fut in self._acks.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("socket closed"))

    async def request(self, frame: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        assert self.ws is not None
        if self.closed is not None and self.closed.done():
            code, reason = self.closed.result()
            raise ConnectionError(f"socket closed ({code} {reason})")
        req_id = str(next(self._ids))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[req_id] = fut
        await self.ws.send(orjson.dumps({**frame, "id": req_id}).decode())
        return await asyncio.wait_for(fut, timeout)

    async def send_message(self, conversation_id: str, body: str,
                           client_msg_id: str | None = None) -> dict[str, Any]:
        reply = await self.request({"type": "message.send", "conversation_id": conversation_id,
                                    "client_msg_id": client_msg_id or uuid.uuid4().hex,
                                    "body": body})
        if reply["type"] == "error":
            raise ApiError(0, reply)
        return reply

    async def send_raw(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send(text)

    async def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def next_frame(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def ping(self, timeout: float = 10.0) -> dict[str, Any]:
        return await self.request({"type": "ping"}, timeout)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader

    async def reconnect(self, **kwargs: Any) -> dict[str, Any]:
        """Drop this connection and resume from the last cursor seen."""
        await self.close()
        return await self.connect(**kwargs)

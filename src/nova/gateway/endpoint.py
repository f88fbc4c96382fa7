"""The WebSocket edge: ``/ws``. Parses frames, calls the services, writes frames back.

Each socket has a reader (this endpoint) and a writer task draining a bounded queue, so a
slow client never blocks fan-out: when its queue is full it is cut off with 4001
``slow_consumer`` and resumes by cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.exceptions import InvalidState

from nova import metrics
from nova.errors import ErrorCode, InvalidInput, NovaError, RateLimited, Unauthorized
from nova.gateway.close_codes import CloseCode
from nova.types import MAX_INT64

if TYPE_CHECKING:
    from nova.app import Services

log = logging.getLogger("nova.gateway")


class WebSocketFastPath:
    """Outermost middleware: ``/ws`` gets a lean stack of its own.

    A socket lives for hours, and every ASGI layer it passes through stays alive with it (a
    coroutine frame per middleware) and wraps every frame it sends. So ``/ws`` skips the
    routing and HTTP exception machinery and runs only what a WebSocket needs (``ws_stack``:
    request id, Origin check, connection cap, rate limit); and the server's own ``send`` is
    kept in the scope so that event frames, the hot path of fan-out, skip even those.
    """

    def __init__(self, app: Any, ws_stack: Any) -> None:
        self.app = app
        self.ws_stack = ws_stack

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and scope.get("path") == "/ws":
            scope["nova.raw_send"] = send
            await self.ws_stack(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def websocket_asgi(scope: Any, receive: Any, send: Any) -> None:
    """The endpoint as a bare ASGI app (``scope["app"]`` is the FastAPI app, which Starlette
    put there before any middleware ran)."""
    await websocket_endpoint(WebSocket(scope, receive, send))


class Connection:
    """A socket as the realtime service sees it (``nova.domain.realtime.Subscriber``).

    Frames wait in a bounded deque drained by one writer task; a socket costs a few small
    objects, since thousands of them sit idle at once.
    """

    __slots__ = ("_idle", "_proto", "_raw_send", "_room", "_wake", "busy", "close_code",
                 "close_reason", "frames", "limit", "user_id", "ws")

    def __init__(self, ws: WebSocket, user_id: str, queue_size: int) -> None:
        self.ws = ws
        self._raw_send = ws.scope.get("nova.raw_send")
        self._proto = _coalescing_protocol(self._raw_send)
        self.user_id = user_id
        self.frames: deque[str] = deque()
        self.limit = queue_size
        self.close_code: int | None = None
        self.close_reason = ""
        self.busy = False  # a request of this socket is being handled
        self._wake: asyncio.Future[None] | None = None  # the writer waits for frames
        self._room: asyncio.Future[None] | None = None  # a replay waits for room
        self._idle: asyncio.Future[None] | None = None  # closing waits for the request

    @staticmethod
    def _resolve(fut: asyncio.Future[None] | None) -> None:
        if fut is not None and not fut.done():
            fut.set_result(None)

    def send_frame(self, frame: str) -> bool:
        if self.close_code is not None and self.close_code != CloseCode.GOING_AWAY:
            return True  # closing: drop quietly (a shutdown still sends what it can)
        if len(self.frames) >= self.limit:
            return False
        self.frames.append(frame)
        self._resolve(self._wake)
        return True

    async def put_frame(self, frame: str) -> bool:
        while self.close_code is None and len(self.frames) >= self.limit:
            self._room = asyncio.get_running_loop().create_future()
            await self._room
        if self.close_code is not None:
            return False
        self.frames.append(frame)
        self._resolve(self._wake)
        return True

    def kick(self, code: int, reason: str) -> None:
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        if len(self.frames) >= self.limit:
            self.frames.clear()  # cut off as too slow: what it did not read is dropped
        self._resolve(self._wake)
        self._resolve(self._room)

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        if not busy:
            self._resolve(self._idle)

    async def _send(self, frame: str) -> None:
        if self._raw_send is not None:
            await self._raw_send({"type": "websocket.send", "text": frame})
        else:
            await self.ws.send_text(frame)

    async def _write_coalesced(self) -> bool:
        """Every queued frame in one transport write (uvicorn's sans-I/O WebSocket protocol):
        one system call for a burst instead of one per frame. False once the peer is gone."""
        proto = self._proto
        while self.frames:
            await proto.writable.wait()  # the transport's flow control, as uvicorn's send
            if proto.disconnected or proto.close_sent:
                return False
            conn = proto.conn
            try:
                for _ in range(min(len(self.frames), 256)):
                    conn.send_text(self.frames.popleft().encode())
            except InvalidState:
                return False
            self._resolve(self._room)
            proto.transport.write(b"".join(conn.data_to_send()))
        return True

    async def writer(self, drain_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._proto is not None:
                    if not await self._write_coalesced():
                        return
                while self.frames:
                    frame = self.frames.popleft()
                    self._resolve(self._room)
                    await self._send(frame)
                if self.close_code is not None:
                    break
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
            # Closing: let an in-flight request finish so its ack goes out first.
            if self.busy:
                self._idle = loop.create_future()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle, drain_seconds)
            if self.close_code == CloseCode.GOING_AWAY:
                while self.frames:
                    await self._send(self.frames.popleft())
            await self.ws.close(self.close_code or 1000, self.close_reason[:120])
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass


def _coalescing_protocol(raw_send: Any) -> Any:
    """uvicorn's websockets sans-I/O protocol behind the server's ``send``, when that is
    what serves this socket; None otherwise (every frame then goes through ``send``)."""
    proto = getattr(raw_send, "__self__", None)
    if type(proto).__name__ != "WebSocketsSansIOProtocol":
        return None
    needed = ("conn", "transport", "writable", "disconnected", "close_sent")
    return proto if all(hasattr(proto, a) for a in needed) else None


class _Bucket:
    """Token bucket for frames per socket."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _token(ws: WebSocket) -> str | None:
    auth = ws.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return ws.query_params.get("access_token")


async def websocket_endpoint(ws: WebSocket) -> None:
    svc: Services = ws.app.state.services
    settings = svc.settings
    # The Origin check happens in the edge middleware (nova.http.edge), before this runs.
    if svc.draining:
        await ws.close(CloseCode.GOING_AWAY)
        return
    await ws.accept()
    try:
        principal = await svc.accounts.authenticate(_token(ws))
    except Unauthorized as exc:
        metrics.WS_ERRORS.labels(reason="unauthorized").inc()
        await ws.send_text(orjson.dumps({"type": "error", "code": exc.code,
                                         "detail": exc.message}).decode())
        await ws.close(CloseCode.UNAUTHORIZED, "unauthorized")
        return
    except NovaError:
        await ws.close(CloseCode.TRY_AGAIN_LATER, "unavailable")
        return
    since_raw = ws.query_params.get("since")
    since: int | None = None
    if since_raw not in (None, ""):
        try:
            since = int(since_raw)  # type: ignore[arg-type]
            if not 0 <= since <= MAX_INT64:
                raise ValueError
        except ValueError:
            await ws.send_text(orjson.dumps({"type": "error", "code": ErrorCode.INVALID_CURSOR,
                                             "detail": "since is not a cursor"}).decode())
            await ws.close(CloseCode.POLICY, "invalid_cursor")
            return
    realtime = svc.realtime
    if realtime.sockets_of(principal.user_id) >= settings.ws_max_sockets_per_user:
        metrics.WS_ERRORS.labels(reason="too_many_sockets").inc()
        await ws.close(CloseCode.TOO_MANY_SOCKETS, "too_many_sockets")
        return
    conn = Connection(ws, principal.user_id, settings.ws_send_queue_size)
    writer = asyncio.create_task(conn.writer(settings.shutdown_grace_seconds))
    svc.gateway_connections.add(conn)
    try:
        hello = {"user_id": principal.user_id, "session_id": principal.session_id,
                 "heartbeat_interval_ms": settings.heartbeat_interval_ms}
        await realtime.attach(conn, since, hello)
        await _read_loop(ws, conn, svc)
    except WebSocketDisconnect:
        pass
    except Exception:
        metrics.WS_ERRORS.labels(reason="internal").inc()
        log.exception("websocket handler failed")
        conn.kick(CloseCode.INTERNAL, "internal_error")
    finally:
        realtime.detach(conn)
        svc.gateway_connections.discard(conn)
        if conn.close_code is None:
            conn.kick(1000, "")
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(writer, settings.shutdown_grace_seconds + 1)
        if not writer.done():
            writer.cancel()


async def _read_loop(ws: WebSocket, conn: Connection, svc: Services) -> None:
    settings = svc.settings
    bucket = _Bucket(settings.ws_frames_per_second, settings.ws_frame_burst)
    while conn.close_code is None:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text")
        if raw is None:
            raw_bytes = message.get("bytes")
            raw = raw_bytes.decode("utf-8", "replace") if raw_bytes else ""
        if settings.rate_limits_enabled and not bucket.take():
            metrics.WS_ERRORS.labels(reason="flood").inc()
            conn.kick(CloseCode.POLICY, "rate_limited")
            return
        conn.set_busy(True)
        try:
            reply = await _handle(raw, conn, svc)
        finally:
            conn.set_busy(False)
        if reply is not None:
            conn.send_frame(reply)


def _error(req_id: Any, code: str, detail: str) -> str:
    body: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if req_id is not None:
        body["id"] = req_id
    return orjson.dumps(body).decode()


def _str_field(frame: dict[str, Any], name: str) -> str:
    value = frame.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name} must be a non-empty string", field=name)
    return value


async def _handle(raw: str, conn: Connection, svc: Services) -> str | None:
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        metrics.WS_ERRORS.labels(reason="bad_frame").inc()
        return _error(None, ErrorCode.INVALID_REQUEST, "frame is not JSON")
    if not isinstance(frame, dict):
        metrics.WS_ERRORS.labels(reason="bad_frame").inc()
        return _error(None, ErrorCode.INVALID_REQUEST, "frame must be a JSON object")
    req_id = frame.get("id")
    if req_id is not None and not isinstance(req_id, str | int):
        req_id = None
    ftype = frame.get("type")
    user = conn.user_id
    try:
        if ftype == "message.send":
            msg, created = await svc.conversations.send(
                _str_field(frame, "conversation_id"), user, frame.get("client_msg_id"),
                frame.get("body"), frame.get("kind"), frame.get("reply_to"))
            if created:  # an idempotent retry is not a new message
                metrics.MESSAGES_SENT.labels(transport="ws").inc()
            return orjson.dumps({"type": "ack", "id": req_id, "message": msg.wire()}).decode()
        if ftype == "ping":
            return orjson.dumps({"type": "pong", "id": req_id} if req_id is not None
                                else {"type": "pong"}).decode()
        if ftype == "typing":
            await svc.realtime.typing(user, _str_field(frame, "conversation_id"))
            return None if req_id is None else orjson.dumps(
                {"type": "ack", "id": req_id}).decode()
        if ftype == "read":
            await svc.conversations.mark_read(_str_field(frame, "conversation_id"), user,
                                              frame.get("seq"))
            return orjson.dumps({"type": "ack", "id": req_id}).decode()
        if ftype == "call.signal":
            if svc.calls is None:
                raise InvalidInput("calls are not enabled", ErrorCode.UNKNOWN_FRAME)
            data = frame.get("data")
            to_user = frame.get("to_user_id")
            if to_user is not None and not isinstance(to_user, str):
                raise InvalidInput("to_user_id must be a user id", field="to_user_id")
            await svc.calls.signal(_str_field(frame, "call_id"), user, to_user, data)
            return orjson.dumps({"type": "ack", "id": req_id}).decode()
        metrics.WS_ERRORS.labels(reason="unknown_frame").inc()
        return _error(req_id, ErrorCode.UNKNOWN_FRAME,
                      f"unknown frame type {str(ftype)[:40]!r}")
    except RateLimited as exc:
        return _error(req_id, exc.code, exc.message)
    except NovaError as exc:
        return _error(req_id, exc.code, exc.message)


async def close_all(svc: Services, code: int = CloseCode.GOING_AWAY) -> None:
    """Shutdown: close every socket with ``code`` (1001) after its in-flight request."""
    svc.draining = True
    svc.realtime.kick_all(code, "server_shutdown")
    for conn in list(svc.gateway_connections):
        conn.kick(code, "server_shutdown")
    deadline = time.monotonic() + svc.settings.shutdown_grace_seconds
    while svc.gateway_connections and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def is_open(ws: WebSocket) -> bool:
    return ws.application_state == WebSocketState.CONNECTED

"""Baseline (a): a minimal ``websockets`` broadcast server with no persistence.

Speaks the Realtime subset of PROTOCOL.md that the load generator uses: connect to
``/ws?access_token=<anything>&rooms=c1,c2[&since=N]``, get ``hello``; ``message.send`` gets an
``ack`` with the message and every member socket (the sender's included) gets the
``message.created`` event. ``since=`` replays from a bounded in-memory log, so the reconnect
scenario can run here too. Frames are encoded once and written with ``broadcast()``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import signal
import time
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
LOG_LIMIT = 200_000  # events kept per room for since= replay


def now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class Hub:
    """Rooms, per-room seq, a global cursor and a per-room log for replay."""

    def __init__(self) -> None:
        self.rooms: dict[str, set[ServerConnection]] = defaultdict(set)
        self.seq: dict[str, int] = defaultdict(int)
        self.cursor = 0
        self.log_cursors: dict[str, list[int]] = defaultdict(list)
        self.log_frames: dict[str, list[str]] = defaultdict(list)
        self.sockets = 0

    # --- connections --------------------------------------------------------------------
    def replay(self, rooms: list[str], since: int) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        for room in rooms:
            cursors = self.log_cursors.get(room)
            if not cursors:
                continue
            i = bisect.bisect_right(cursors, since)
            out.extend(zip(cursors[i:], self.log_frames[room][i:], strict=True))
        out.sort()
        return out

    def join(self, ws: ServerConnection, rooms: list[str], since: int | None) -> None:
        """Send hello (and the backlog) and join, without yielding: nothing slips between."""
        hello = {"type": "hello", "user_id": ws.user_id, "session_id": str(id(ws)),
                 "cursor": str(self.cursor), "heartbeat_interval_ms": 25_000}
        broadcast([ws], _dumps(hello))
        if since is not None:
            for _, frame in self.replay(rooms, since):
                broadcast([ws], frame)
        for room in rooms:
            self.rooms[room].add(ws)

    def leave(self, ws: ServerConnection, rooms: list[str]) -> None:
        for room in rooms:
            self.rooms[room].discard(ws)

    # --- messages -----------------------------------------------------------------------
    def make_message(self, ws: ServerConnection, frame: dict[str, Any]) -> dict[str, Any]:
        conv = frame["conversation_id"]
        self.seq[conv] += 1
        seq = self.seq[conv]
        return {"id": f"{conv}:{seq}", "conversation_id": conv, "seq": seq,
                "sender_id": ws.user_id, "kind": "text", "body": frame["body"],
                "client_msg_id": frame.get("client_msg_id"), "reply_to": None,
                "created_at": now_iso(), "edited_at": None, "deleted": False}

    def deliver(self, ws: ServerConnection, req_id: Any, message: dict[str, Any]) -> None:
        """Ack the sender, then broadcast the event to every member socket."""
        conv = message["conversation_id"]
        self.cursor += 1
        event = _dumps({"type": "event", "cursor": str(self.cursor),
                        "event": {"type": "message.created", "message": message}})
        log_c, log_f = self.log_cursors[conv], self.log_frames[conv]
        log_c.append(self.cursor)
        log_f.append(event)
        if len(log_c) > LOG_LIMIT:
            del log_c[: LOG_LIMIT // 2], log_f[: LOG_LIMIT // 2]
        broadcast([ws], _dumps({"type": "ack", "id": req_id, "message": message}))
        broadcast(self.rooms[conv], event)

    async def on_send(self, ws: ServerConnection, frame: dict[str, Any]) -> None:
        self.deliver(ws, frame.get("id"), self.make_message(ws, frame))


def error(ws: ServerConnection, req_id: Any, code: str, detail: str) -> None:
    broadcast([ws], _dumps({"type": "error", "id": req_id, "code": code, "detail": detail}))


async def handle(hub: Hub, ws: ServerConnection) -> None:
    query = parse_qs(urlsplit(ws.request.path).query)
    token = query.get("access_token", [""])[0]
    if not token:
        await ws.close(4501, "unauthorized")
        return
    ws.user_id = token  # type: ignore[attr-defined]
    rooms = [r for r in query.get("rooms", [""])[0].split(",") if r]
    since = int(query["since"][0]) if "since" in query else None
    hub.join(ws, rooms, since)
    hub.sockets += 1
    try:
        async for raw in ws:
            try:
                frame = json.loads(raw)
                kind = frame["type"]
            except (ValueError, KeyError, TypeError):
                error(ws, None, "invalid_request", "not a JSON object with a type")
                continue
            if kind == "message.send":
                if frame.get("conversation_id") not in rooms or not frame.get("body"):
                    error(ws, frame.get("id"), "not_found", "not a member")
                    continue
                await hub.on_send(ws, frame)
            elif kind == "ping":
                broadcast([ws], '{"type":"pong"}')
            else:
                error(ws, frame.get("id"), "invalid_request", f"unknown type {kind!r}")
    except ConnectionClosed:
        pass
    finally:
        hub.sockets -= 1
        hub.leave(ws, rooms)


async def serve_hub(hub: Hub, host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)

    async def handler(ws: ServerConnection) -> None:
        await handle(hub, ws)

    async with serve(handler, host, port, compression=None, max_size=1 << 20,
                     ping_interval=25, ping_timeout=50, max_queue=64, backlog=4096):
        await stop


def parse_args(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    return parser


def run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the bench extra
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0]).parse_args()
    run(serve_hub(Hub(), args.host, args.port))


if __name__ == "__main__":
    main()

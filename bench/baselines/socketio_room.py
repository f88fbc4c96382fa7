"""Baseline (c): a python-socketio room broadcast server on aiohttp, no persistence.

Same load shape over Socket.IO's own protocol: ``connect`` with ``auth={"token", "rooms"}``
joins the rooms; the ``message.send`` event returns the ack (Socket.IO callback) and emits an
``event`` (the same frame as Nova's) to the conversation's room, the sender included.
"""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from typing import Any

import socketio
from aiohttp import web

from bench.baselines.ws_broadcast import now_iso, parse_args, run


def build() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*",
                               ping_interval=25, ping_timeout=50)
    app = web.Application()
    sio.attach(app, socketio_path="socket.io")
    seqs: dict[str, int] = defaultdict(int)
    cursor = 0
    users: dict[str, str] = {}

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> bool:
        if not auth or not auth.get("token"):
            return False
        users[sid] = auth["token"]
        for room in auth.get("rooms", []):
            await sio.enter_room(sid, room)
        await sio.emit("hello", {"type": "hello", "user_id": auth["token"], "session_id": sid,
                                 "cursor": str(cursor), "heartbeat_interval_ms": 25_000}, to=sid)
        return True

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        users.pop(sid, None)

    @sio.on("message.send")
    async def message_send(sid: str, frame: dict[str, Any]) -> dict[str, Any]:
        nonlocal cursor
        conv = frame["conversation_id"]
        seqs[conv] += 1
        cursor += 1
        message = {"id": f"{conv}:{seqs[conv]}", "conversation_id": conv, "seq": seqs[conv],
                   "sender_id": users.get(sid), "kind": "text", "body": frame["body"],
                   "client_msg_id": frame.get("client_msg_id"), "reply_to": None,
                   "created_at": now_iso(), "edited_at": None, "deleted": False}
        await sio.emit("event", {"type": "event", "cursor": str(cursor),
                                 "event": {"type": "message.created", "message": message}},
                       room=conv)
        return {"type": "ack", "id": frame.get("id"), "message": message}

    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(build(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    try:
        await stop
    finally:
        await runner.cleanup()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0]).parse_args()
    run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

"""The realtime gateway on one process (SQLite and PostgreSQL): events, acks, typing,
receipts, presence, bad frames, resume, slow consumers, limits."""

from __future__ import annotations

import asyncio
import secrets
import socket
from typing import Any

import orjson
import pytest
import websockets

from nova.client import ApiError, NovaClient

pytestmark = pytest.mark.integration


async def _pair(url: str) -> tuple[NovaClient, NovaClient, dict[str, Any]]:
    a, b = NovaClient(url), NovaClient(url)
    await a.register("alice", "secret123")
    await b.register("bob", "secret123")
    conv = await a.create_group("team", [b.user_id])
    return a, b, conv


async def _events_until(sock: Any, n: int, kind: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        frame = await sock.next_event()
        if kind is None or frame["event"]["type"] == kind:
            out.append(frame)
    return out


async def test_ws_send_is_acked_after_commit_and_fanned_out_to_every_socket(live) -> None:
    a, b, conv = await _pair(live.url)
    async with a.socket() as wa1, a.socket() as wa2, b.socket() as wb:
        ack = await wa1.send_message(conv["id"], "hello", client_msg_id="c-1")
        assert ack["type"] == "ack" and ack["message"]["seq"] == 1
        stored = await a.history(conv["id"])
        assert [m["id"] for m in stored["items"]] == [ack["message"]["id"]]
        for sock in (wa1, wa2, wb):  # the sender's socket too, and the other device
            [frame] = await _events_until(sock, 1, "message.created")
            assert frame["event"]["message"]["id"] == ack["message"]["id"]
            assert int(frame["cursor"]) > 0
        again = await wa1.send_message(conv["id"], "hello", client_msg_id="c-1")
        assert again["message"]["id"] == ack["message"]["id"]  # idempotent over the socket
    await a.aclose()
    await b.aclose()


async def test_ws_outsider_gets_no_events_and_cannot_send(live) -> None:
    a, b, conv = await _pair(live.url)
    async with NovaClient(live.url) as eve:
        await eve.register("eve", "secret123")
        async with eve.socket() as we:
            await a.send_message(conv["id"], "secret")
            reply = await we.request({"type": "message.send", "conversation_id": conv["id"],
                                      "client_msg_id": "x", "body": "hi"})
            assert reply["type"] == "error" and reply["code"] == "not_found"
            reply = await we.request({"type": "typing", "conversation_id": conv["id"]})
            assert reply["code"] == "not_found"
            assert (await we.ping())["type"] == "pong"
            assert we.events.empty()
    await a.aclose()
    await b.aclose()


async def test_ws_bad_frames_get_errors_and_the_socket_stays_open(live) -> None:
    a, b, conv = await _pair(live.url)
    async with a.socket() as ws:
        await ws.send_raw("not json")
        assert (await ws.next_frame())["code"] == "invalid_request"
        await ws.send_raw("[1, 2]")
        assert (await ws.next_frame())["code"] == "invalid_request"
        reply = await ws.request({"type": "no.such.thing"})
        assert reply["type"] == "error" and reply["code"] == "unknown_frame"
        reply = await ws.request({"type": "message.send", "conversation_id": conv["id"]})
        assert reply["type"] == "error" and reply["code"] == "invalid_request"
        reply = await ws.request({"type": "message.send", "conversation_id": conv["id"],
                                  "client_msg_id": "m", "body": 42})
        assert reply["code"] == "invalid_request"
        reply = await ws.request({"type": "message.send", "conversation_id": conv["id"],
                                  "client_msg_id": "m", "body": "x" * (16 * 1024 + 1)})
        assert reply["code"] == "message_too_large"
        reply = await ws.request({"type": "message.send", "conversation_id": conv["id"],
                                  "client_msg_id": "m", "body": "   "})
        assert reply["code"] == "empty_message"
        reply = await ws.request({"type": "read", "conversation_id": conv["id"], "seq": "1"})
        assert reply["code"] == "invalid_request"
        assert (await ws.ping())["type"] == "pong"  # still open
        assert (await a.history(conv["id"]))["items"] == []  # nothing stored
    await a.aclose()
    await b.aclose()


async def test_ws_oversize_frame_closes_with_1009(live) -> None:
    a, _, _ = await _pair(live.url)
    async with a.socket() as ws:
        await ws.send_raw("x" * (live.settings.ws_max_frame_bytes + 10))
        code, _ = await asyncio.wait_for(ws.closed, 5)
        assert code == 1009


async def test_ws_flood_closes_with_1008(make_settings) -> None:
    from tests.conftest import LiveServer

    server = LiveServer(make_settings(ws_frames_per_second=5, ws_frame_burst=5))
    await server.start()
    try:
        async with NovaClient(server.url) as a:
            await a.register("alice", "secret123")
            async with a.socket() as ws:
                for _ in range(50):
                    try:
                        await ws.send_raw('{"type":"ping"}')
                    except websockets.ConnectionClosed:
                        break
                code, reason = await asyncio.wait_for(ws.closed, 5)
                assert code == 1008 and reason == "rate_limited"
    finally:
        await server.stop()


async def test_ws_rejects_a_bad_token_and_a_bad_cursor(live) -> None:
    a, _, _ = await _pair(live.url)
    url = live.url.replace("http", "ws") + "/ws"
    async with websockets.connect(url + "?access_token=nope") as ws:
        frame = orjson.loads(await ws.recv())
        assert frame == {"type": "error", "code": "unauthorized",
                         "detail": "access token is invalid"}
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 4501
    async with websockets.connect(f"{url}?since=abc&access_token={a.access_token}") as ws:
        assert orjson.loads(await ws.recv())["code"] == "invalid_cursor"
    await a.aclose()


async def test_typing_reaches_other_members_only_and_is_never_replayed(live) -> None:
    a, b, conv = await _pair(live.url)
    async with a.socket() as wa, b.socket() as wb:
        cursor = wb.cursor
        await wa.request({"type": "typing", "conversation_id": conv["id"]})
        frame = await wb.next_frame()
        while frame["type"] == "presence":
            frame = await wb.next_frame()
        assert frame == {"type": "typing", "conversation_id": conv["id"], "user_id": a.user_id}
        await wa.send_message(conv["id"], "after typing")
        await _events_until(wa, 1, "message.created")
        heard = [wa.frames.get_nowait() for _ in range(wa.frames.qsize())]
        assert all(f["type"] != "typing" for f in heard)  # the typist does not hear itself
    async with b.socket(since=cursor) as wb2:
        [frame] = await _events_until(wb2, 1)
        assert frame["event"]["type"] == "message.created"  # typing was not stored
        assert all(wb2.frames.get_nowait()["type"] != "typing"
                   for _ in range(wb2.frames.qsize()))
    await a.aclose()
    await b.aclose()


async def test_read_receipts_are_durable_events_and_only_move_forward(live) -> None:
    a, b, conv = await _pair(live.url)
    async with a.socket() as wa, b.socket() as wb:
        for i in range(3):
            await wa.send_message(conv["id"], f"m{i}")
        await _events_until(wb, 3, "message.created")
        assert (await wb.request({"type": "read", "conversation_id": conv["id"],
                                  "seq": 2}))["type"] == "ack"
        [receipt] = await _events_until(wa, 1, "receipt.read")
        assert receipt["event"] == {"type": "receipt.read", "conversation_id": conv["id"],
                                    "user_id": b.user_id, "seq": 2}
        await wb.request({"type": "read", "conversation_id": conv["id"], "seq": 1})
        got = await b.request("GET", f"/api/v1/conversations/{conv['id']}")
        mine = next(m for m in got["members"] if m["user_id"] == b.user_id)
        assert mine["last_read_seq"] == 2 and got["unread_count"] == 1
    await a.aclose()
    await b.aclose()


async def test_presence_online_then_offline_with_last_seen(live) -> None:
    a, b, _ = await _pair(live.url)
    async with a.socket() as wa:
        async with b.socket():
            frame = await wa.next_frame()
            assert frame["type"] == "presence" and frame["user_id"] == b.user_id
            assert frame["status"] == "online"
        frame = await wa.next_frame()  # after the grace period
        assert frame["status"] == "offline" and frame["last_seen"].endswith("Z")
    await a.aclose()
    await b.aclose()


async def test_resume_replays_exactly_what_was_missed_in_order(live) -> None:
    a, b, conv = await _pair(live.url)
    async with b.socket() as wb:
        await a.send_message(conv["id"], "before")
        [first] = await _events_until(wb, 1, "message.created")
        cursor = wb.cursor
    sent = [await a.send_message(conv["id"], f"offline {i}") for i in range(25)]
    await a.request("PATCH", f"/api/v1/conversations/{conv['id']}/messages/{sent[0]['id']}",
                    {"body": "edited"})
    async with b.socket(since=cursor) as wb:
        frames = await _events_until(wb, 26)
        assert [f["event"]["type"] for f in frames] == ["message.created"] * 25 + [
            "message.updated"]
        assert [f["event"]["message"]["id"] for f in frames[:25]] == [m["id"] for m in sent]
        cursors = [int(f["cursor"]) for f in frames]
        assert cursors == sorted(cursors) and len(set(cursors)) == 26
        assert int(first["cursor"]) < cursors[0]
        live_msg = await a.send_message(conv["id"], "live again")
        [frame] = await _events_until(wb, 1)
        assert frame["event"]["message"]["id"] == live_msg["id"]
        await asyncio.sleep(0.3)
        assert wb.events.empty()  # nothing repeated
    await a.aclose()
    await b.aclose()


async def test_resume_after_membership_change_shows_only_the_member_period(live) -> None:
    a, b, conv = await _pair(live.url)
    async with NovaClient(live.url) as c:
        await c.register("carol", "secret123")
        async with c.socket() as wc:
            cursor = wc.cursor
        await a.send_message(conv["id"], "before carol")
        await a.request("POST", f"/api/v1/conversations/{conv['id']}/members",
                        {"user_ids": [c.user_id]})
        await a.send_message(conv["id"], "with carol")
        await a.request("DELETE", f"/api/v1/conversations/{conv['id']}/members/{c.user_id}")
        await a.send_message(conv["id"], "after carol")
        async with c.socket(since=cursor) as wc:
            frames = await _events_until(wc, 3)
            kinds = [(f["event"]["type"], (f["event"].get("message") or {}).get("body"))
                     for f in frames]
            assert kinds == [("member.added", None), ("message.created", "with carol"),
                             ("member.removed", None)]
            await asyncio.sleep(0.3)
            assert wc.events.empty()
    await a.aclose()
    await b.aclose()


async def test_resync_required_when_the_cursor_is_older_than_retention(live) -> None:
    a, b, conv = await _pair(live.url)
    for i in range(3):
        await a.send_message(conv["id"], f"old {i}")
    store = live.services.store
    assert await store.prune_events(older_than_ms=2**62) > 0
    async with b.socket(since="1") as wb:
        assert (await wb.next_frame())["type"] == "resync_required"
        msg = await a.send_message(conv["id"], "new")
        [frame] = await _events_until(wb, 1, "message.created")
        assert frame["event"]["message"]["id"] == msg["id"]
    await a.aclose()
    await b.aclose()


async def test_slow_consumer_is_cut_off_and_resumes_by_cursor(make_settings) -> None:
    from tests.conftest import LiveServer

    server = LiveServer(make_settings(ws_send_queue_size=10, rate_limits="off"))
    await server.start()
    try:
        a, b, conv = await _pair(server.url)
        url = server.url.replace("http", "ws") + f"/ws?access_token={b.access_token}"
        # A raw client that stops reading, with tiny buffers so the server's queue fills.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        slow = await websockets.connect(url, sock=sock, max_queue=1, max_size=2**20)
        hello = orjson.loads(await slow.recv())
        big = secrets.token_urlsafe(11_000)  # incompressible, in case deflate is on
        for i in range(400):
            await a.send_message(conv["id"], f"{i}:{big}")
        code = None
        try:
            async with asyncio.timeout(20):
                while True:
                    await slow.recv()
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        assert code == 4001
        # Resume from the start: all 400 arrive, once, in order.
        async with b.socket(since=hello["cursor"]) as wb:
            frames = await _events_until(wb, 400, "message.created")
            bodies = [int(f["event"]["message"]["body"].split(":")[0]) for f in frames]
            assert bodies == list(range(400))
        await a.aclose()
        await b.aclose()
    finally:
        await server.stop()


async def test_socket_limit_per_user(make_settings) -> None:
    from tests.conftest import LiveServer

    server = LiveServer(make_settings(ws_max_sockets_per_user=2))
    await server.start()
    try:
        async with NovaClient(server.url) as a:
            await a.register("alice", "secret123")
            async with a.socket(), a.socket():
                with pytest.raises((ApiError, websockets.ConnectionClosed)):
                    async with a.socket():
                        pass
    finally:
        await server.stop()


async def test_cursor_and_seq_past_64_bits_are_refused_cleanly(live) -> None:
    a, _, conv = await _pair(live.url)
    huge = str(2**64)
    url = live.url.replace("http", "ws") + "/ws"
    async with websockets.connect(f"{url}?since={huge}&access_token={a.access_token}") as ws:
        assert orjson.loads(await ws.recv())["code"] == "invalid_cursor"
    with pytest.raises(ApiError) as info:
        await a.history(conv["id"], before=huge)
    assert info.value.status == 422 and info.value.code == "invalid_request"
    with pytest.raises(ApiError) as info:
        await a.request("POST", f"/api/v1/conversations/{conv['id']}/read", {"seq": 2**64})
    assert info.value.status == 422
    async with a.socket() as ws2:
        assert (await ws2.ping())["type"] == "pong"
    await a.aclose()

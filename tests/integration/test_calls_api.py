"""Calls over a real server (uvicorn on a port) on SQLite and PostgreSQL: every state
transition, every refusal, multi-device ringing, ring timeout, disconnect failure, history,
resume of missed calls, the signal relay and the ICE server list."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from nova.client import ApiError, NovaClient, Socket
from nova.settings import Settings
from tests.conftest import REDIS_URL, LiveServer, missing

pytestmark = pytest.mark.integration

PASSWORD = "secret-pass-123"


@pytest.fixture
def base_settings(db_kind: str, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(db_kind)


@pytest.fixture
async def make_live(base_settings: Settings) -> AsyncIterator[Callable[..., Awaitable[LiveServer]]]:
    """A live server with setting overrides (ring timeout, disconnect grace, TURN)."""
    servers: list[LiveServer] = []

    async def start(**overrides: Any) -> LiveServer:
        server = LiveServer(base_settings.model_copy(update=overrides))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def users(url: str, *names: str) -> list[NovaClient]:
    out = []
    for name in names:
        c = NovaClient(url)
        await c.register(name, PASSWORD)
        out.append(c)
    return out


async def close(*clients: NovaClient) -> None:
    for c in clients:
        await c.aclose()


async def call_event(sock: Socket, etype: str, call_id: str | None = None,
                     timeout: float = 10.0) -> dict[str, Any]:
    """The next event of ``etype`` (for ``call_id``), skipping unrelated events."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await sock.next_event(max(0.01, deadline - time.monotonic()))
        ev: dict[str, Any] = frame["event"]
        if ev["type"] != etype:
            continue
        cid = ev["call"]["id"] if "call" in ev else ev.get("call_id")
        if call_id is None or cid == call_id:
            return ev


async def start(c: NovaClient, conv_id: str, media: str = "video") -> dict[str, Any]:
    return await c.request("POST", "/api/v1/calls",  # type: ignore[no-any-return]
                           {"conversation_id": conv_id, "media": media})


async def act(c: NovaClient, call_id: str, verb: str) -> dict[str, Any]:
    return await c.request("POST", f"/api/v1/calls/{call_id}/{verb}")  # type: ignore[no-any-return]


async def refused(coro: Awaitable[Any], status: int, code: str) -> None:
    with pytest.raises(ApiError) as err:
        await coro
    assert (err.value.status, err.value.code) == (status, code), err.value.body


def states(call: dict[str, Any]) -> dict[str, str]:
    return {p["user_id"]: p["state"] for p in call["participants"]}


# --- start and ringing -------------------------------------------------------------------

async def test_call_start_rings_every_other_members_devices(live: LiveServer) -> None:
    alice, bob, carol = await users(live.url, "alice", "bob", "carol")
    try:
        conv = await alice.create_group("team", [bob.user_id, carol.user_id])
        async with bob.socket() as b1, bob.socket() as b2, carol.socket() as c1:
            call = await start(alice, conv["id"], "audio")
            assert call["state"] == "ringing" and call["media"] == "audio"
            assert call["initiator_id"] == alice.user_id
            assert call["answered_at"] is None and call["end_reason"] is None
            assert states(call) == {alice.user_id: "joined", bob.user_id: "ringing",
                                    carol.user_id: "ringing"}
            for sock in (b1, b2, c1):
                ev = await call_event(sock, "call.ringing", call["id"])
                assert ev["call"] == call
    finally:
        await close(alice, bob, carol)


async def test_call_second_start_is_409_call_in_progress(live: LiveServer) -> None:
    alice, bob = await users(live.url, "alice", "bob")
    try:
        conv = await alice.create_direct(bob.user_id)
        first = await start(alice, conv["id"])
        await refused(start(alice, conv["id"]), 409, "call_in_progress")
        await refused(start(bob, conv["id"], "audio"), 409, "call_in_progress")
        await act(alice, first["id"], "hangup")
        again = await start(bob, conv["id"])  # the conversation is free once it ended
        assert again["id"] != first["id"] and again["state"] == "ringing"
    finally:
        await close(alice, bob)


async def test_call_start_refusals(live: LiveServer) -> None:
    alice, bob, eve = await users(live.url, "alice", "bob", "eve")
    try:
        conv = await alice.create_direct(bob.user_id)
        await refused(start(eve, conv["id"]), 404, "not_found")
        await refused(start(alice, "no-such-conversation"), 404, "not_found")
        await refused(start(alice, conv["id"], "hologram"), 422, "invalid_request")
        await refused(alice.request("POST", "/api/v1/calls", {"media": "audio"}), 422,
                      "invalid_request")
        alone = await alice.create_group("just me", [])
        await refused(start(alice, alone["id"]), 422, "invalid_request")
        async with httpx.AsyncClient(base_url=live.url) as anon:
            resp = await anon.post("/api/v1/calls",
                                   json={"conversation_id": conv["id"], "media": "audio"})
            assert resp.status_code == 401
            assert (await anon.get("/api/v1/calls/ice-servers")).status_code == 401
    finally:
        await close(alice, bob, eve)


# --- accept, decline, hangup --------------------------------------------------------------

async def test_call_accept_on_one_device_tells_the_callers_and_other_devices(
        live: LiveServer) -> None:
    alice, bob, eve = await users(live.url, "alice", "bob", "eve")
    try:
        conv = await alice.create_direct(bob.user_id)
        async with alice.socket() as a1, bob.socket() as b1, bob.socket() as b2:
            call = await start(alice, conv["id"])
            await call_event(b2, "call.ringing", call["id"])
            accepted = await act(bob, call["id"], "accept")  # "answered on b1"
            assert accepted["state"] == "active" and accepted["answered_at"] is not None
            assert states(accepted) == {alice.user_id: "joined", bob.user_id: "joined"}
            for sock in (a1, b1, b2):
                ev = await call_event(sock, "call.accepted", call["id"])
                assert ev["call"] == accepted  # b2 stops ringing: answered elsewhere
            await refused(act(bob, call["id"], "accept"), 409, "call_not_ringing")
            await refused(act(alice, call["id"], "accept"), 409, "call_not_ringing")
            await refused(act(bob, call["id"], "decline"), 409, "call_not_ringing")
            await refused(act(eve, call["id"], "accept"), 404, "not_found")
            await refused(act(eve, call["id"], "hangup"), 404, "not_found")
            await refused(act(alice, "no-such-call", "accept"), 404, "not_found")
            got = await alice.request("GET", f"/api/v1/calls/{call['id']}")
            assert got == accepted
    finally:
        await close(alice, bob, eve)


async def test_call_decline_ends_a_direct_call(live: LiveServer) -> None:
    alice, bob = await users(live.url, "alice", "bob")
    try:
        conv = await alice.create_direct(bob.user_id)
        async with alice.socket() as a1:
            call = await start(alice, conv["id"])
            await refused(act(alice, call["id"], "decline"), 409, "call_not_ringing")
            declined = await act(bob, call["id"], "decline")
            assert declined["state"] == "ended" and declined["end_reason"] == "declined"
            assert declined["ended_at"] is not None and declined["answered_at"] is None
            assert states(declined)[bob.user_id] == "declined"
            ev = await call_event(a1, "call.ended", call["id"])
            assert ev["call"] == declined
            for verb in ("accept", "decline", "hangup"):
                await refused(act(bob, call["id"], verb), 409, "call_ended")
            await refused(act(alice, call["id"], "hangup"), 409, "call_ended")
    finally:
        await close(alice, bob)


async def test_call_caller_hangup_while_ringing_is_cancelled(live: LiveServer) -> None:
    alice, bob = await users(live.url, "alice", "bob")
    try:
        conv = await alice.create_direct(bob.user_id)
        async with bob.socket() as b1, bob.socket() as b2:
            call = await start(alice, conv["id"], "audio")
            cancelled = await act(alice, call["id"], "hangup")
            assert cancelled["state"] == "ended" and cancelled["end_reason"] == "cancelled"
            assert states(cancelled)[bob.user_id] == "missed"
            for sock in (b1, b2):
                assert (await call_event(sock, "call.ended", call["id"]))["call"] == cancelled
            await refused(act(bob, call["id"], "accept"), 409, "call_ended")
    finally:
        await close(alice, bob)


async def test_call_callee_hangup_while_ringing_declines(live: LiveServer) -> None:
    alice, bob = await users(live.url, "alice", "bob")
    try:
        conv = await alice.create_direct(bob.user_id)
        call = await start(alice, conv["id"])
        ended = await act(bob, call["id"], "hangup")
        assert (ended["state"], ended["end_reason"]) == ("ended", "declined")
    finally:
        await close(alice, bob)


async def test_call_hangup_ends_an_active_call(live: LiveServer) -> None:
    alice, bob = await users(live.url, "alice", "bob")
    try:
        conv = await alice.create_direct(bob.user_id)
        async with alice.socket() as a1, bob.socket():
            call = await start(alice, conv["id"])
            await act(bob, call["id"], "accept")
            ended = await act(bob, call["id"], "hangup")
            assert (ended["state"], ended["end_reason"]) == ("ended", "hangup")
            assert ended["answered_at"] is not None and ended["ended_at"] is not None
            assert states(ended) == {alice.user_id: "joined", bob.user_id: "left"}
            assert (await call_event(a1, "call.ended", call["id"]))["call"] == ended
            await refused(act(alice, call["id"], "hangup"), 409, "call_ended")
    finally:
        await close(alice, bob)


async def test_group_call_goes_on_when_one_member_declines(live: LiveServer) -> None:
    alice, bob, carol, dave = await users(live.url, "alice", "bob", "carol", "dave")
    try:
        conv = await alice.create_group("team", [bob.user_id, carol.user_id, dave.user_id])
        async with alice.socket() as a1:
            call = await start(alice, conv["id"])
            declined = await act(bob, call["id"], "decline")
            assert declined["state"] == "ringing"
            assert states(declined)[bob.user_id] == "declined"
            assert (await call_event(a1, "call.declined", call["id"]))["call"] == declined
            active = await act(carol, call["id"], "accept")
            assert active["state"] == "active"
            await act(dave, call["id"], "accept")
            left = await act(carol, call["id"], "hangup")  # two remain: the call goes on
            assert left["state"] == "active" and states(left)[carol.user_id] == "left"
            await refused(act(carol, call["id"], "hangup"), 409, "call_ended")
            ended = await act(dave, call["id"], "hangup")
            assert (ended["state"], ended["end_reason"]) == ("ended", "hangup")
            assert (await call_event(a1, "call.ended", call["id"]))["call"] == ended
    finally:
        await close(alice, bob, carol, dave)


async def test_group_call_ends_declined_when_everyone_declines(live: LiveServer) -> None:
    alice, bob, carol = await users(live.url, "alice", "bob", "carol")
    try:
        conv = await alice.create_group("team", [bob.user_id, carol.user_id])
        call = await start(alice, conv["id"])
        assert (await act(bob, call["id"], "decline"))["state"] == "ringing"
        ended = await act(carol, call["id"], "decline")
        assert (ended["state"], ended["end_reason"]) == ("ended", "declined")
    finally:
        await close(alice, bob, carol)


# --- supervision: ring timeout, vanished participant ---------------------------------------

async def poll_call(c: NovaClient, call_id: str, state: str,
                    timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        call: dict[str, Any] = await c.request("GET", f"/api/v1/calls/{call_id}")
        if call["state"] == state or time.monotonic() > deadline:
            return call
        await asyncio.sleep(0.1)


async def test_call_ring_timeout_ends_missed_and_a_reconnecting_device_learns_it(
        make_live: Callable[..., Awaitable[LiveServer]]) -> None:
    live = await make_live(call_ring_timeout_seconds=1.0)
    alice, bob = await users(live.url, "alice", "bob")
    try:
        conv = await alice.create_direct(bob.user_id)
        async with bob.socket() as b1:
            await b1.ping()
            cursor = b1.cursor
        async with alice.socket() as a1:
            call = await start(alice, conv["id"])
            ended = await call_event(a1, "call.ended", call["id"], timeout=15)
            assert ended["call"]["end_reason"] == "missed"
            assert states(ended["call"])[bob.user_id] == "missed"
        assert await bob.request("GET", f"/api/v1/calls/{call['id']}") == ended["call"]
        async with bob.socket(since=cursor) as b2:  # bob's phone was off: it resumes
            ringing = await call_event(b2, "call.ringing", call["id"])
            missed = await call_event(b2, "call.ended", call["id"])
            assert ringing["call"]["state"] == "ringing"
            assert missed["call"] == ended["call"]
    finally:
        await close(alice, bob)


async def test_call_participant_gone_past_grace_ends_failed(
        make_live: Callable[..., Awaitable[LiveServer]]) -> None:
    live = await make_live(call_disconnect_grace_seconds=0.5)
    alice, bob = await users(live.url, "alice", "bob")
    try:
        conv = await alice.create_direct(bob.user_id)
        async with alice.socket() as a1:
            async with bob.socket():
                call = await start(alice, conv["id"])
                await act(bob, call["id"], "accept")
                await call_event(a1, "call.accepted", call["id"])
                assert (await bob.request("GET", f"/api/v1/calls/{call['id']}"))[
                    "state"] == "active"
            # bob's only socket is gone (network lost): after the grace the call fails
            ev = await call_event(a1, "call.ended", call["id"], timeout=15)
            assert ev["call"]["end_reason"] == "failed"
            assert states(ev["call"])[bob.user_id] == "left"
    finally:
        await close(alice, bob)


async def test_call_stays_active_while_participants_are_connected(
        make_live: Callable[..., Awaitable[LiveServer]]) -> None:
    live = await make_live(call_disconnect_grace_seconds=0.3, call_ring_timeout_seconds=0.5)
    alice, bob = await users(live.url, "alice", "bob")
    try:
        conv = await alice.create_direct(bob.user_id)
        async with alice.socket(), bob.socket():
            call = await start(alice, conv["id"])
            await act(bob, call["id"], "accept")
            # several supervisor passes, each past the grace and the ring timeout
            for _ in range(3):
                await live.services.calls.supervise()
                await asyncio.sleep(0.4)
            now = await alice.request("GET", f"/api/v1/calls/{call['id']}")
            assert now["state"] == "active"
    finally:
        await close(alice, bob)


# --- history -------------------------------------------------------------------------------

async def test_call_history_newest_first_for_members_only(live: LiveServer) -> None:
    alice, bob, eve = await users(live.url, "alice", "bob", "eve")
    try:
        conv = await alice.create_direct(bob.user_id)
        other = await alice.create_direct(eve.user_id)
        first = await start(alice, conv["id"])
        await act(bob, first["id"], "decline")
        second = await start(bob, conv["id"], "audio")
        third = await start(alice, other["id"])
        page = await alice.request("GET", "/api/v1/calls", params={"conversation_id": conv["id"]})
        assert [c["id"] for c in page["items"]] == [second["id"], first["id"]]
        assert page["items"][1]["end_reason"] == "declined"
        everything = await alice.request("GET", "/api/v1/calls")
        assert [c["id"] for c in everything["items"]] == [third["id"], second["id"], first["id"]]
        one = await alice.request("GET", "/api/v1/calls", params={"limit": 1})
        assert [c["id"] for c in one["items"]] == [third["id"]]
        assert [c["id"] for c in (await eve.request("GET", "/api/v1/calls"))["items"]] == [
            third["id"]]
        await refused(eve.request("GET", "/api/v1/calls", params={"conversation_id": conv["id"]}),
                      404, "not_found")
        await refused(eve.request("GET", f"/api/v1/calls/{first['id']}"), 404, "not_found")
        await refused(alice.request("GET", "/api/v1/calls", params={"limit": 0}), 422,
                      "invalid_request")
        await refused(alice.request("GET", "/api/v1/calls/nope"), 404, "not_found")
    finally:
        await close(alice, bob, eve)


# --- call.signal ---------------------------------------------------------------------------

async def signal(sock: Socket, call_id: str, data: Any,
                 to_user_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "call.signal", "call_id": call_id, "data": data}
    if to_user_id is not None:
        frame["to_user_id"] = to_user_id
    return await sock.request(frame)


async def test_call_signal_relayed_between_participants_only(live: LiveServer) -> None:
    alice, bob, eve = await users(live.url, "alice", "bob", "eve")
    try:
        conv = await alice.create_direct(bob.user_id)
        async with alice.socket() as a1, bob.socket() as b1, bob.socket() as b2, \
                eve.socket() as e1:
            call = await start(alice, conv["id"])
            offer = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}
            ack = await signal(a1, call["id"], offer)
            assert ack["type"] == "ack"
            for sock in (b1, b2):  # every device of the callee, before it answers
                ev = await call_event(sock, "call.signal", call["id"])
                assert ev == {"type": "call.signal", "call_id": call["id"],
                              "from_user_id": alice.user_id, "data": offer}
            await act(bob, call["id"], "accept")
            answer = {"type": "answer", "sdp": "v=0\r\n"}
            cand = {"type": "candidate", "candidate": "candidate:1 1 udp 1 127.0.0.1 5000 "
                    "typ relay raddr 0.0.0.0 rport 0", "sdpMid": "0"}
            assert (await signal(b1, call["id"], answer, alice.user_id))["type"] == "ack"
            assert (await signal(b1, call["id"], cand))["type"] == "ack"
            # alice's next signals are bob's two, in order: her own offer never came back
            got = [await call_event(a1, "call.signal", call["id"]) for _ in range(2)]
            assert [g["data"] for g in got] == [answer, cand]
            assert {g["from_user_id"] for g in got} == {bob.user_id}

            # refusals: each an error frame on a socket that stays open
            err = await signal(e1, call["id"], offer)
            assert (err["type"], err["code"]) == ("error", "not_found")
            err = await signal(a1, call["id"], offer, eve.user_id)
            assert (err["type"], err["code"]) == ("error", "invalid_request")
            err = await signal(a1, call["id"], offer, alice.user_id)
            assert (err["type"], err["code"]) == ("error", "invalid_request")
            err = await signal(a1, call["id"], "not an object")
            assert (err["type"], err["code"]) == ("error", "invalid_request")
            limit = live.settings.call_signal_max_bytes
            err = await signal(a1, call["id"], {"sdp": "x" * limit})
            assert (err["type"], err["code"]) == ("error", "signal_too_large")
            err = await signal(a1, "no-such-call", offer)
            assert (err["type"], err["code"]) == ("error", "not_found")

            await act(alice, call["id"], "hangup")
            err = await signal(b1, call["id"], cand)
            assert (err["type"], err["code"]) == ("error", "call_ended")
            assert (await e1.ping())["type"] == "pong"
            # nothing was relayed to eve, and nothing after the end: eve's log is empty of
            # call.signal, and bob's devices got no third signal
            ended = await call_event(b2, "call.ended", call["id"])
            assert ended["call"]["end_reason"] == "hangup"
        async with eve.socket(since="0") as e2:
            await e2.ping()
            while not e2.events.empty():
                assert e2.events.get_nowait()["event"]["type"] != "call.signal"
    finally:
        await close(alice, bob, eve)


async def test_call_signal_to_a_declined_group_member_is_refused(live: LiveServer) -> None:
    alice, bob, carol = await users(live.url, "alice", "bob", "carol")
    try:
        conv = await alice.create_group("team", [bob.user_id, carol.user_id])
        async with alice.socket() as a1, bob.socket() as b1:
            call = await start(alice, conv["id"])
            await act(bob, call["id"], "decline")
            err = await signal(a1, call["id"], {"type": "offer"}, bob.user_id)
            assert (err["type"], err["code"]) == ("error", "call_ended")
            err = await signal(b1, call["id"], {"type": "offer"})
            assert (err["type"], err["code"]) == ("error", "call_ended")
    finally:
        await close(alice, bob, carol)


# --- ICE servers ---------------------------------------------------------------------------

async def test_ice_servers_carry_turn_rest_credentials(
        make_live: Callable[..., Awaitable[LiveServer]]) -> None:
    secret = "s3cret-for-tests"
    live = await make_live(turn_shared_secret=secret, turn_ttl_seconds=600,
                           turn_urls=["turn:127.0.0.1:3478?transport=udp",
                                      "turn:127.0.0.1:3478?transport=tcp"],
                           stun_urls=["stun:127.0.0.1:3478"])
    (alice,) = await users(live.url, "alice")
    try:
        before = time.time()
        body = await alice.ice_servers()
        assert body["ttl_seconds"] == 600
        stun, turn = body["ice_servers"]
        assert stun == {"urls": ["stun:127.0.0.1:3478"]}
        assert turn["urls"] == ["turn:127.0.0.1:3478?transport=udp",
                                "turn:127.0.0.1:3478?transport=tcp"]
        expiry, user = turn["username"].split(":", 1)
        assert user == alice.user_id
        assert before + 600 - 2 <= int(expiry) <= time.time() + 600
        expected = base64.b64encode(hmac.new(secret.encode(), turn["username"].encode(),
                                             hashlib.sha1).digest()).decode()
        assert turn["credential"] == expected
        async with httpx.AsyncClient(base_url=live.url) as anon:
            metrics = (await anon.get("/metrics")).text
        issued = [line for line in metrics.splitlines()
                  if line.startswith("nova_turn_credentials_issued_total ")]
        assert issued and float(issued[0].split()[1]) >= 1
    finally:
        await close(alice)


async def test_ice_servers_without_turn_secret_list_stun_only(
        make_live: Callable[..., Awaitable[LiveServer]]) -> None:
    live = await make_live(stun_urls=["stun:127.0.0.1:3478"],
                           turn_urls=["turn:127.0.0.1:3478"])
    (alice,) = await users(live.url, "alice")
    try:
        body = await alice.ice_servers()
        assert body["ice_servers"] == [{"urls": ["stun:127.0.0.1:3478"]}]
    finally:
        await close(alice)


# --- two replicas (PostgreSQL + Redis): supervision sees sockets on the other replica --------

@pytest.fixture
def replica_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings("postgresql", redis_url=REDIS_URL,
                         redis_prefix=f"novatest{secrets.token_hex(4)}",
                         call_disconnect_grace_seconds=0.5)


async def test_call_supervision_counts_sockets_on_every_replica(
        replica_settings: Settings) -> None:
    probe = aioredis.from_url(REDIS_URL)
    try:
        await probe.ping()
    except Exception as exc:
        missing(f"Redis at {REDIS_URL}: {exc}")
    finally:
        await probe.aclose()
    a = LiveServer(replica_settings.model_copy(update={"instance_id": "replica-a"}))
    b = LiveServer(replica_settings.model_copy(update={"instance_id": "replica-b"}))
    await a.start()
    await b.start()
    alice, bob = await users(a.url, "alice", "bob")
    bob_b = NovaClient(b.url)
    try:
        await bob_b.login("bob", PASSWORD)
        conv = await alice.create_direct(bob.user_id)
        async with alice.socket() as a1:  # alice on replica A
            async with bob_b.socket() as b1:  # bob only on replica B
                call = await start(alice, conv["id"])
                await call_event(b1, "call.ringing", call["id"])
                await act(bob, call["id"], "accept")
                await call_event(a1, "call.accepted", call["id"])
                for _ in range(3):  # replica A must not fail bob: his socket is on B
                    await a.services.calls.supervise()
                    await asyncio.sleep(0.3)
                assert (await alice.request("GET", f"/api/v1/calls/{call['id']}"))[
                    "state"] == "active"
            ev = await call_event(a1, "call.ended", call["id"], timeout=20)
            assert ev["call"]["end_reason"] == "failed"
    finally:
        await close(alice, bob, bob_b)
        await a.stop()
        await b.stop()

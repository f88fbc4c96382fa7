"""A real call through a running Nova (`nova serve` subprocess) and a real coturn.

coturn runs on the shipped deploy/config/coturn/turnserver.conf with the loopback test
overrides of test_coturn.py. Nova is configured with coturn's secret and URLs; every
credential below comes from Nova's `GET /api/v1/calls/ice-servers`. Two aiortc peers, each
logged in as its own user with its own WebSocket, start and answer the call over REST and
exchange the offer, the answer and each ICE candidate (trickled, one `call.signal` each)
through Nova. ICE is relay-only, so media and data flow through coturn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aioice.turn import create_turn_endpoint
from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.sdp import candidate_from_sdp
from test_coturn import Coturn, start_coturn

from nova.calls.turncheck import TurnClient
from nova.client import NovaClient, Socket
from tests.conftest import NovaProcess

pytestmark = pytest.mark.e2e

PASSWORD = "secret-pass-123"
FRAMES = 10


@pytest.fixture
def relay_coturn(tmp_path: Path) -> Iterator[Coturn]:
    """TEST ONLY override: the peers are on 127.0.0.1, so relaying to loopback is allowed.
    ``--verbose`` makes coturn log each request with its user (checked below)."""
    server = start_coturn(tmp_path / "coturn", "--allow-loopback-peers",
                          "--allowed-peer-ip=127.0.0.1", "--verbose")
    yield server
    server.stop()


@pytest.fixture
def nova_with_turn(relay_coturn: Coturn,
                   nova_process: Callable[..., NovaProcess]) -> NovaProcess:
    port = relay_coturn.port
    return nova_process({
        "NOVA_TURN_SHARED_SECRET": relay_coturn.secret,
        "NOVA_TURN_URLS": f"turn:127.0.0.1:{port}?transport=udp,"
                          f"turn:127.0.0.1:{port}?transport=tcp",
        "NOVA_STUN_URLS": f"stun:127.0.0.1:{port}",
        "NOVA_TURN_TTL_SECONDS": "600",
    })


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split(":", 1)[1].split("?", 1)[0]
    host, port = rest.rsplit(":", 1)
    return host, int(port)


async def test_turn_allocation_with_credentials_from_nova_succeeds(
        nova_with_turn: NovaProcess, relay_coturn: Coturn) -> None:
    async with NovaClient(nova_with_turn.url) as alice:
        await alice.register("alice", PASSWORD)
        body = await alice.ice_servers()
    stun = next(s for s in body["ice_servers"] if "credential" not in s)
    turn = next(s for s in body["ice_servers"] if "credential" in s)
    assert turn["username"].endswith(":" + alice.user_id)

    host, port = _host_port(stun["urls"][0])  # STUN binding answers
    async with TurnClient(host, port) as client:
        assert await client.binding() == client.local_address

    for url in turn["urls"]:  # an allocation on each TURN URL Nova hands out
        transport = url.rsplit("=", 1)[1]
        async with TurnClient(*_host_port(url), transport) as client:  # type: ignore[arg-type]
            alloc = await client.allocate(turn["username"], turn["credential"])
            assert alloc.relayed[0] == "127.0.0.1" and alloc.lifetime > 0
            await client.refresh(0)

    # an independent TURN client (aioice) accepts the same credentials
    udp_url = next(u for u in turn["urls"] if u.endswith("udp"))
    endpoint, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol, server_addr=_host_port(udp_url),
        username=turn["username"], password=turn["credential"], lifetime=600)
    try:
        assert endpoint.get_extra_info("sockname")[0] == "127.0.0.1"
    finally:
        endpoint.close()
        await asyncio.sleep(0.3)  # aioice's Refresh(0) before the loop goes


# --- the real call -----------------------------------------------------------------------

def _split_sdp(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """The SDP without its candidates, and each candidate as a browser-style signal."""
    lines, cands = [], []
    mid: str | None = None
    index = -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:"):]
        if line.startswith("a=candidate:"):
            cands.append({"type": "candidate", "candidate": line[2:], "sdpMid": mid,
                          "sdpMLineIndex": index})
            continue
        if line == "a=end-of-candidates":
            continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n", cands


def _config(ice: dict[str, Any]) -> RTCConfiguration:
    servers = [RTCIceServer(urls=[u for u in s["urls"] if u.endswith("udp")],
                            username=s["username"], credential=s["credential"])
               for s in ice["ice_servers"] if "credential" in s]
    return RTCConfiguration(iceServers=servers,
                            iceTransportPolicy=RTCIceTransportPolicy.RELAY)


class Peer:
    """One aiortc peer whose signaling goes through Nova's WebSocket."""

    def __init__(self, client: NovaClient, sock: Socket, config: RTCConfiguration,
                 call_id: str, other: str) -> None:
        self.client = client
        self.sock = sock
        self.pc = RTCPeerConnection(config)
        self.call_id = call_id
        self.other = other
        self.sent_candidate_types: set[str] = set()
        self.received_signals = 0

    async def send(self, data: dict[str, Any]) -> None:
        ack = await self.sock.request({"type": "call.signal", "call_id": self.call_id,
                                       "to_user_id": self.other, "data": data})
        assert ack["type"] == "ack", ack

    async def send_description(self) -> None:
        desc = self.pc.localDescription
        sdp, cands = _split_sdp(desc.sdp)
        await self.send({"type": desc.type, "sdp": sdp})
        for cand in cands:
            self.sent_candidate_types.add(cand["candidate"].split(" typ ")[1].split()[0])
            await self.send(cand)
        await self.send({"type": "candidate", "candidate": None})  # end of candidates

    async def run(self) -> None:
        """Apply the other side's signals, in order, as they arrive."""
        while True:
            frame = await self.sock.next_event(timeout=60)
            ev = frame["event"]
            if ev["type"] != "call.signal":
                continue
            assert ev["call_id"] == self.call_id and ev["from_user_id"] == self.other
            self.received_signals += 1
            data = ev["data"]
            if data["type"] in ("offer", "answer"):
                await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"],
                                                                         data["type"]))
                if data["type"] == "offer":
                    await self.pc.setLocalDescription(await self.pc.createAnswer())
                    await self.send_description()
            elif data["type"] == "candidate":
                cand: RTCIceCandidate | None = None
                if data["candidate"] is not None:
                    cand = candidate_from_sdp(data["candidate"].split(":", 1)[1])
                    cand.sdpMid = data["sdpMid"]
                    cand.sdpMLineIndex = data["sdpMLineIndex"]
                await self.pc.addIceCandidate(cand)

    def nominated_pair(self) -> tuple[str, str] | None:
        """aiortc's getStats() has no candidate pairs: read aioice's nominated pair."""
        transports = [t.sender.transport for t in self.pc.getTransceivers()]
        if self.pc.sctp is not None:
            transports.append(self.pc.sctp.transport)
        pairs = []
        for dtls in transports:
            pair = dtls.transport._connection._nominated.get(1)
            if pair is None:
                return None
            pairs.append((pair.local_candidate.type, pair.remote_candidate.type))
        return pairs[0] if len(set(pairs)) == 1 else None


async def _event(sock: Socket, etype: str, call_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        ev: dict[str, Any] = (await sock.next_event(max(0.01, deadline - time.monotonic())))[
            "event"]
        if ev["type"] == etype and ev.get("call", {}).get("id") == call_id:
            return ev


async def test_real_call_relay_only_through_nova_signaling_and_coturn(
        nova_with_turn: NovaProcess, relay_coturn: Coturn) -> None:
    url = nova_with_turn.url
    async with NovaClient(url) as alice, NovaClient(url) as bob:
        await alice.register("alice", PASSWORD)
        await bob.register("bob", PASSWORD)
        conv = await alice.create_direct(bob.user_id)
        async with alice.socket() as wa, bob.socket() as wb:
            call = await alice.request("POST", "/api/v1/calls",
                                       {"conversation_id": conv["id"], "media": "video"})
            await _event(wb, "call.ringing", call["id"])
            await bob.request("POST", f"/api/v1/calls/{call['id']}/accept")
            await _event(wa, "call.accepted", call["id"])

            caller = Peer(alice, wa, _config(await alice.ice_servers()), call["id"],
                          bob.user_id)
            callee = Peer(bob, wb, _config(await bob.ice_servers()), call["id"],
                          alice.user_id)
            loop = asyncio.get_running_loop()
            reply: asyncio.Future[str] = loop.create_future()
            frames: list[tuple[int, int]] = []
            frames_done = asyncio.Event()
            readers: list[asyncio.Task[None]] = []

            @callee.pc.on("datachannel")  # type: ignore[untyped-decorator]
            def on_channel(channel: Any) -> None:
                @channel.on("message")  # type: ignore[untyped-decorator]
                def on_message(message: str) -> None:
                    channel.send("pong:" + message)

            @callee.pc.on("track")  # type: ignore[untyped-decorator]
            def on_track(track: Any) -> None:
                async def read() -> None:
                    while len(frames) < FRAMES:
                        frame = await track.recv()
                        frames.append((frame.width, frame.height))
                    frames_done.set()
                readers.append(asyncio.ensure_future(read()))

            channel = caller.pc.createDataChannel("chat")

            @channel.on("open")  # type: ignore[untyped-decorator]
            def on_open() -> None:
                channel.send("ping")

            @channel.on("message")  # type: ignore[untyped-decorator]
            def on_reply(message: str) -> None:
                if not reply.done():
                    reply.set_result(message)

            caller.pc.addTrack(VideoStreamTrack())
            tasks = [asyncio.create_task(caller.run()), asyncio.create_task(callee.run())]
            try:
                await caller.pc.setLocalDescription(await caller.pc.createOffer())
                await caller.send_description()
                assert await asyncio.wait_for(reply, 30) == "pong:ping"
                await asyncio.wait_for(frames_done.wait(), 30)
                assert len(frames) >= FRAMES and frames[0] == (640, 480)
                # only relay candidates were offered, and both peers talk relay to relay
                assert caller.sent_candidate_types == {"relay"}
                assert callee.sent_candidate_types == {"relay"}
                assert caller.nominated_pair() == ("relay", "relay")
                assert callee.nominated_pair() == ("relay", "relay")
                # every signal went through Nova: offer/answer, candidates, end marker
                assert caller.received_signals >= 3 and callee.received_signals >= 3
                for task in tasks:
                    assert not task.done(), task.exception()
            finally:
                for task in [*tasks, *readers]:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                await caller.pc.close()
                await callee.pc.close()
                await asyncio.sleep(0.5)  # aioice deallocates (Refresh lifetime 0)
            ended = await alice.request("POST", f"/api/v1/calls/{call['id']}/hangup")
            assert (ended["state"], ended["end_reason"]) == ("ended", "hangup")
            assert (await _event(wb, "call.ended", call["id"]))["call"] == ended
    # coturn saw both users relay with the credentials Nova minted for them
    log = relay_coturn.log_text()
    for user in (alice, bob):
        assert any(f":{user.user_id}>: incoming packet CHANNEL_BIND processed, success" in line
                   for line in log.splitlines()), log[-3000:]

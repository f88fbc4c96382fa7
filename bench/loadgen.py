"""The load generator: one scenario against one target, in its own process.

``python -m bench.loadgen --scenario fanout --kind ws --url http://127.0.0.1:P --server-pid N``
prints one JSON result line (and appends it to ``--out``). ``bench.run`` starts the servers
and calls this; run it by hand only against a server you started yourself.

The garbage collector is disabled here (its 40-80 ms pauses in the generator showed up as
server p99); the server keeps its own. uvloop drives the event loop when installed.

Kinds: ``ws`` (baselines a and b: membership from ``&rooms=``), ``socketio`` (baseline c) and
``nova`` (users registered and group conversations created over REST first).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import resource
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import psutil

from bench.machine import machine_info
from bench.wire import HandshakeError, WsProtocol, open_ws

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads
EventHandler = Callable[["Client", dict[str, Any]], None]
CONNECT_CONCURRENCY = 100
NOVA_PASSWORD = "bench-password-1"  # throwaway accounts, throwaway server


# --- scenario parameters -------------------------------------------------------------------

@dataclass
class Params:
    rooms: int = 100
    members: int = 10
    window: int = 4  # sends in flight per sender (fan-out): acks pace them
    rate: float = 2000.0  # offered sends/s (latency)
    idle_sockets: int = 10_000
    idle_users: int = 100  # Nova: sockets are spread over this many accounts
    resumers: int = 2000
    backlog: int = 50  # events each resumer misses
    pairs: int = 50  # concurrent caller/callee pairs (calls)
    history: int = 1000  # messages in the conversation (rest)
    concurrency: int = 32  # concurrent HTTP requests (rest)
    warmup: float = 3.0
    duration: float = 20.0

    @classmethod
    def quick(cls) -> Params:
        return cls(rooms=50, members=10, idle_sockets=2000, idle_users=20, resumers=500,
                   backlog=20, pairs=20, history=300, warmup=2.0, duration=8.0)

    @classmethod
    def tiny(cls) -> Params:
        """For the smoke test: seconds, a handful of sockets."""
        return cls(rooms=4, members=3, rate=100.0, idle_sockets=20, idle_users=4, resumers=12,
                   backlog=5, pairs=2, history=60, concurrency=4, warmup=0.5, duration=1.5)


# --- clients ---------------------------------------------------------------------------------

@dataclass
class Member:
    """One socket-to-be: who it is and which conversation it belongs to."""

    token: str
    user_id: str
    conversation_id: str
    base_url: str  # http://host:port of the replica it talks to

    def ws_url(self, kind: str, since: str | None = None) -> str:
        base = "ws" + self.base_url[len("http"):]
        url = f"{base}/ws?access_token={quote(self.token)}"
        if kind == "ws" and self.conversation_id:
            url += f"&rooms={quote(self.conversation_id)}"
        if since is not None:
            url += f"&since={quote(since)}"
        return url


FAST_EVENT: dict[str, Any] = {"type": "message.created"}


class Client:
    """A socket speaking Nova's Realtime frames: acks resolve futures, events go to a handler.

    With ``parse_events = False`` a ``message.created`` event is counted by a byte search and
    handed over as ``FAST_EVENT`` without parsing (fan-out only needs the count).
    """

    parse_events = True

    def __init__(self, member: Member, on_event: EventHandler, stats: Stats) -> None:
        self.member = member
        self.on_event = on_event
        self.stats = stats
        self.cursor: str | None = None
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.proto: WsProtocol | None = None
        self.closed = asyncio.Event()
        self.hello: asyncio.Future[dict[str, Any]] | None = None

    def url(self, kind: str, since: str | None) -> str:
        return self.member.ws_url(kind, since)

    async def open(self, kind: str, since: str | None = None) -> None:
        self.hello = asyncio.get_running_loop().create_future()
        self.proto = await open_ws(self.url(kind, since), self._on_text, self._on_close, 120,
                                   on_connect=self._on_connect)
        try:
            hello = await asyncio.wait_for(self.hello, 60)
        except BaseException:
            self.proto.close()
            raise
        self.cursor = hello.get("cursor")

    def _on_connect(self, proto: WsProtocol) -> None:
        self.proto = proto

    def _on_text(self, payload: bytes) -> None:
        if not self.parse_events and b'"message.created"' in payload:
            self.on_event(self, FAST_EVENT)
            return
        self._on_frame(_loads(payload))

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "event":
            self.cursor = frame["cursor"]
            self.on_event(self, frame["event"])
        elif kind == "ack" or kind == "error":
            if kind == "error":
                self.stats.errors += 1
                self.stats.last_error = frame
            fut = self.pending.pop(frame.get("id"), None)  # type: ignore[arg-type]
            if fut is not None and not fut.done():
                fut.set_result(frame)
        elif kind == "hello":
            if self.hello is not None and not self.hello.done():
                self.hello.set_result(frame)

    def _on_close(self) -> None:
        self.closed.set()
        if self.hello is not None and not self.hello.done():
            self.hello.set_exception(ConnectionError("closed before hello"))
            self.hello.exception()  # retrieved: open() may have failed before awaiting it
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("socket closed"))
        self.pending.clear()

    def _send(self, data: bytes) -> None:
        assert self.proto is not None
        self.proto.send_text(data)

    async def request(self, frame: dict[str, Any], want_reply: bool = True
                      ) -> asyncio.Future[dict[str, Any]] | None:
        assert self.proto is not None
        req_id = str(next(self.ids))
        frame["id"] = req_id
        fut = None
        if want_reply:
            fut = asyncio.get_running_loop().create_future()
            self.pending[req_id] = fut
        self._send(_dumps(frame).encode())
        if not self.proto.drained.is_set():
            await self.proto.drained.wait()
        return fut

    async def send_message(self, body: str, want_ack: bool = True
                           ) -> asyncio.Future[dict[str, Any]] | None:
        return await self.request(
            {"type": "message.send", "conversation_id": self.member.conversation_id,
             "client_msg_id": secrets.token_hex(8), "body": body}, want_ack)

    async def close(self) -> None:
        if self.proto is not None:
            self.proto.close()
            await asyncio.wait_for(self.closed.wait(), 10)


class SocketIOClient(Client):
    """The same interface over Socket.IO v5 / Engine.IO v4 frames (baseline c), hand-coded
    on the same lean WebSocket so that both sides of the comparison pay the same client cost:
    ``0{..}`` open, ``40{auth}`` connect, ``42["name",data]`` event, ``42N[..]`` / ``43N[..]``
    a request and its ack, ``2``/``3`` ping/pong."""

    def url(self, kind: str, since: str | None) -> str:
        base = "ws" + self.member.base_url[len("http"):]
        return f"{base}/socket.io/?EIO=4&transport=websocket"

    def _on_text(self, payload: bytes) -> None:
        head = payload[:2]
        if payload == b"2":
            self._send(b"3")
        elif head == b"42":
            if not self.parse_events and b'"message.created"' in payload:
                self.on_event(self, FAST_EVENT)
                return
            name, data = _loads(payload[2:])
            if name == "event" or name == "hello":
                self._on_frame(data)
        elif head == b"43":
            i = payload.index(b"[")
            fut = self.pending.pop(payload[2:i].decode(), None)
            if fut is not None and not fut.done():
                fut.set_result(_loads(payload[i:])[0])
        elif payload[:1] == b"0":
            auth = {"token": self.member.token, "rooms": [self.member.conversation_id]}
            self._send(b"40" + _dumps(auth).encode())
        elif head == b"44" and self.hello is not None and not self.hello.done():
            self.hello.set_exception(ConnectionError(payload.decode(errors="replace")))

    async def request(self, frame: dict[str, Any], want_reply: bool = True
                      ) -> asyncio.Future[dict[str, Any]] | None:
        assert self.proto is not None
        req_id = str(next(self.ids))
        frame["id"] = req_id
        packet = _dumps([frame["type"], frame]).encode()
        fut = None
        if want_reply:
            fut = asyncio.get_running_loop().create_future()
            self.pending[req_id] = fut
            self._send(b"42" + req_id.encode() + packet)
        else:
            self._send(b"42" + packet)
        if not self.proto.drained.is_set():
            await self.proto.drained.wait()
        return fut


@dataclass
class Stats:
    errors: int = 0
    last_error: dict[str, Any] | None = None
    connect_failures: int = 0


# --- targets ----------------------------------------------------------------------------------

class Target:
    """Where the sockets go and how members and rooms come to exist there."""

    def __init__(self, kind: str, urls: list[str], run_tag: str) -> None:
        self.kind = kind
        self.urls = urls
        self.tag = run_tag
        self.http = httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64))
        self._users = itertools.count()

    def client(self, member: Member, on_event: EventHandler, stats: Stats) -> Client:
        cls = SocketIOClient if self.kind == "socketio" else Client
        return cls(member, on_event, stats)

    def url_for(self, i: int) -> str:
        return self.urls[i % len(self.urls)]

    async def users(self, n: int) -> list[tuple[str, str]]:
        """``n`` fresh (token, user_id) pairs."""
        ids = [next(self._users) for _ in range(n)]
        if self.kind != "nova":
            return [(f"u{self.tag}{i}", f"u{self.tag}{i}") for i in ids]
        sem = asyncio.Semaphore(16)
        secret = os.environ.get("BENCH_EXTERNAL_JWT_SECRET", "")

        async def register(i: int) -> tuple[str, str]:
            async with sem:
                if secret:
                    # An externally minted token provisions the account on first use: no
                    # argon2 hash per account (about 50 ms of server CPU each).
                    token = jwt.encode({"sub": f"b{self.tag}-{i}",
                                        "exp": int(time.time()) + 86_400}, secret, "HS256")
                    r = await self.http.get(f"{self.urls[0]}/api/v1/users/me",
                                            headers={"Authorization": f"Bearer {token}"})
                    r.raise_for_status()
                    return token, r.json()["id"]
                r = await self.http.post(
                    f"{self.urls[0]}/api/v1/auth/register",
                    json={"username": f"b{self.tag}-{i}", "password": NOVA_PASSWORD})
                r.raise_for_status()
                body = r.json()
                return body["access_token"], body["user"]["id"]

        return list(await asyncio.gather(*(register(i) for i in ids)))

    async def conversation(self, creator: tuple[str, str], others: list[tuple[str, str]],
                           kind: str = "group") -> str:
        if self.kind != "nova":
            return f"c{self.tag}{secrets.token_hex(4)}"
        body: dict[str, Any] = {"kind": kind, "member_ids": [u for _, u in others]}
        if kind == "group":
            body["title"] = "bench"
        r = await self.http.post(f"{self.urls[0]}/api/v1/conversations", json=body,
                                 headers={"Authorization": f"Bearer {creator[0]}"})
        r.raise_for_status()
        return str(r.json()["id"])

    async def rooms(self, n_rooms: int, members: int) -> list[list[Member]]:
        """``n_rooms`` conversations of ``members`` distinct users each, spread over replicas."""
        people = await self.users(n_rooms * members)
        sem = asyncio.Semaphore(8)

        async def make(r: int) -> list[Member]:
            group = people[r * members:(r + 1) * members]
            async with sem:
                conv = await self.conversation(group[0], group[1:])
            return [Member(tok, uid, conv, self.url_for(r * members + i))
                    for i, (tok, uid) in enumerate(group)]

        return list(await asyncio.gather(*(make(r) for r in range(n_rooms))))

    async def aclose(self) -> None:
        await self.http.aclose()


async def open_all(target: Target, members: list[Member], on_event: EventHandler, stats: Stats,
                   since: list[str | None] | None = None) -> list[Client]:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    clients = [target.client(m, on_event, stats) for m in members]

    async def one(i: int, c: Client) -> None:
        async with sem:
            for attempt in range(3):
                try:
                    await c.open(target.kind, since[i] if since else None)
                    return
                except (OSError, TimeoutError, HandshakeError):
                    stats.connect_failures += 1
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.5)

    await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
    return clients


async def close_all(clients: list[Client]) -> None:
    sem = asyncio.Semaphore(500)

    async def one(c: Client) -> None:
        async with sem:
            try:
                await asyncio.wait_for(c.close(), 15)
            except (TimeoutError, OSError):
                pass

    await asyncio.gather(*(one(c) for c in clients))


# --- measurement --------------------------------------------------------------------------------

class CpuMeter:
    """CPU seconds of the server processes and of this generator over a window."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.me = psutil.Process()

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def snapshot(self) -> tuple[float, float, float]:
        server = sum(self._cpu(p) for p in self.procs if p.is_running())
        return time.perf_counter(), server, self._cpu(self.me)

    @staticmethod
    def percent(a: tuple[float, float, float], b: tuple[float, float, float]) -> dict[str, float]:
        wall = b[0] - a[0]
        return {"server_cpu_pct": round(100 * (b[1] - a[1]) / wall, 1),
                "loadgen_cpu_pct": round(100 * (b[2] - a[2]) / wall, 1)}

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self.procs if p.is_running())


def percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    s = sorted(samples)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))], 3)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": at(1.0)}


# --- scenarios ------------------------------------------------------------------------------------

async def fanout(target: Target, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """R x M sockets; one sender per room sends as fast as acks allow (``window`` in flight)."""
    rooms = await target.rooms(p.rooms, p.members)
    stats = Stats()
    delivered = 0

    def on_event(client: Client, event: dict[str, Any]) -> None:
        nonlocal delivered
        if event.get("type") == "message.created":
            delivered += 1

    clients = await open_all(target, [m for room in rooms for m in room], on_event, stats)
    for c in clients:
        c.parse_events = False
    senders = clients[::p.members]
    acked = 0
    stop = False

    async def send_loop(c: Client) -> None:
        nonlocal acked
        while not stop:
            fut = await c.send_message("x" * 32)
            assert fut is not None
            reply = await asyncio.wait_for(fut, 60)
            if reply.get("type") == "ack":
                acked += 1

    gc.collect()
    tasks = [asyncio.create_task(send_loop(c)) for c in senders for _ in range(p.window)]
    await asyncio.sleep(p.warmup)
    d0, a0, m0 = delivered, acked, meter.snapshot()
    await asyncio.sleep(p.duration)
    d1, a1, m1 = delivered, acked, meter.snapshot()
    stop = True
    done, _ = await asyncio.wait(tasks, timeout=60)
    failed = [t.exception() for t in done if t.exception() is not None]
    await close_all(clients)
    wall = m1[0] - m0[0]
    return {"sockets": len(clients), "senders": len(tasks),
            "delivered_per_s": round((d1 - d0) / wall, 1),
            "sends_per_s": round((a1 - a0) / wall, 1),
            **CpuMeter.percent(m0, m1), "errors": stats.errors + len(failed),
            "last_error": stats.last_error or (repr(failed[0]) if failed else None)}


async def latency(target: Target, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """A fixed offered rate of sends (open loop); send → receipt on each member socket."""
    rooms = await target.rooms(p.rooms, p.members)
    stats = Stats()
    samples: list[float] = []
    window_start = float("inf")
    received = 0

    def on_event(client: Client, event: dict[str, Any]) -> None:
        nonlocal received
        if event.get("type") != "message.created":
            return
        now = time.perf_counter_ns()
        body = event["message"]["body"]
        if body.startswith("t"):
            sent = int(body[1:])
            if sent >= window_start:
                received += 1
                samples.append((now - sent) / 1e6)

    clients = await open_all(target, [m for room in rooms for m in room], on_event, stats)
    senders = clients[::p.members]
    gc.collect()
    sent = sent_in_window = 0
    start = time.perf_counter()
    measure_from = start + p.warmup
    end = measure_from + p.duration
    sender_cycle = itertools.cycle(senders)
    m0 = None
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if m0 is None and now >= measure_from:
            window_start = time.perf_counter_ns()
            m0 = meter.snapshot()
        due = int(p.rate * (now - start)) - sent
        for _ in range(due):
            c = next(sender_cycle)
            await c.send_message(f"t{time.perf_counter_ns()}", want_ack=False)
            sent += 1
            if m0 is not None:
                sent_in_window += 1
        await asyncio.sleep(0.001)
    m1 = meter.snapshot()
    await asyncio.sleep(2.0)  # let the last sends arrive
    await close_all(clients)
    assert m0 is not None
    expected = sent_in_window * p.members
    return {"sockets": len(clients), "offered_sends_per_s": p.rate,
            "achieved_sends_per_s": round(sent_in_window / (m1[0] - m0[0]), 1),
            "recipients_per_send": p.members, "samples": len(samples),
            "delivered_fraction": round(received / expected, 4) if expected else None,
            **percentiles(samples), **CpuMeter.percent(m0, m1), "errors": stats.errors}


async def idle(target: Target, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """Many authenticated idle sockets on one process: server RSS per connection."""
    per_user = -(-p.idle_sockets // p.idle_users)
    people = await target.users(min(p.idle_users, p.idle_sockets))
    members = [Member(tok, uid, "", target.url_for(0))
               for tok, uid in people for _ in range(per_user)][:p.idle_sockets]
    stats = Stats()
    await asyncio.sleep(1.0)
    rss0 = meter.rss()
    t0 = time.perf_counter()
    clients = await open_all(target, members, lambda c, e: None, stats)
    connect_s = time.perf_counter() - t0
    gc.collect()
    await asyncio.sleep(max(2.0, p.warmup))
    m0 = meter.snapshot()
    await asyncio.sleep(min(p.duration, 5.0))
    m1 = meter.snapshot()
    rss1 = meter.rss()
    await close_all(clients)
    return {"sockets": len(clients), "rss_before_mib": round(rss0 / 2**20, 1),
            "rss_after_mib": round(rss1 / 2**20, 1),
            "rss_per_conn_kib": round((rss1 - rss0) / len(clients) / 1024, 2),
            "connects_per_s": round(len(clients) / connect_s, 1),
            "idle_server_cpu_pct": CpuMeter.percent(m0, m1)["server_cpu_pct"],
            "connect_failures": stats.connect_failures, "errors": stats.errors}


async def reconnect(target: Target, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """Resumers drop, miss ``backlog`` events each, then all resume with ``since=`` at once."""
    n_rooms = max(1, p.resumers // p.members)
    rooms = await target.rooms(n_rooms, p.members)
    stats = Stats()
    # The writers: a second socket of each room's first member; they stay connected.
    writers = await open_all(target, [room[0] for room in rooms], lambda c, e: None, stats)
    resumers = await open_all(target, [m for room in rooms for m in room], lambda c, e: None,
                              stats)
    cursors = [c.cursor for c in resumers]
    await close_all(resumers)

    async def write(w: Client) -> None:
        for _ in range(p.backlog):
            fut = await w.send_message("backlog")
            assert fut is not None
            await asyncio.wait_for(fut, 60)

    await asyncio.gather(*(write(w) for w in writers))
    seen: dict[int, list[int]] = {}
    caught_up: dict[int, float] = {}
    all_done = asyncio.Event()
    n = len(resumers)

    def on_event(client: Client, event: dict[str, Any]) -> None:
        if event.get("type") != "message.created":
            return
        key = id(client)
        got = seen.setdefault(key, [])
        got.append(event["message"]["seq"])
        if len(got) == p.backlog:
            caught_up[key] = time.perf_counter()
            if len(caught_up) == n:
                all_done.set()

    gc.collect()
    m0 = meter.snapshot()
    t0 = time.perf_counter()
    again = [Member(m.token, m.user_id, m.conversation_id, m.base_url) for m in
             (c.member for c in resumers)]
    clients_task = asyncio.create_task(open_all(target, again, on_event, stats, since=cursors))
    try:
        await asyncio.wait_for(all_done.wait(), 300)
    finally:
        clients = await clients_task
    t_all = time.perf_counter() - t0
    m1 = meter.snapshot()
    times = [(t - t0) * 1000 for t in caught_up.values()]
    out_of_order = sum(1 for s in seen.values() if s != sorted(s) or len(set(s)) != len(s))
    await close_all(clients + writers)
    return {"resumers": n, "backlog_per_resumer": p.backlog,
            "catch_up_all_s": round(t_all, 3),
            "replayed_per_s": round(n * p.backlog / t_all, 1),
            "catch_up_p50_ms": percentiles(times)["p50_ms"],
            "catch_up_p99_ms": percentiles(times)["p99_ms"],
            "out_of_order_or_duplicate": out_of_order,
            **CpuMeter.percent(m0, m1), "errors": stats.errors}


class Mailbox:
    """Futures keyed by (event type, call id): whichever comes first, event or waiter."""

    def __init__(self) -> None:
        self.boxes: dict[tuple[str, str], asyncio.Future[float]] = {}

    def box(self, key: tuple[str, str]) -> asyncio.Future[float]:
        if key not in self.boxes:
            self.boxes[key] = asyncio.get_running_loop().create_future()
        return self.boxes[key]

    def deliver(self, client: Client, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        if not kind.startswith("call."):
            return
        call_id = event["call_id"] if kind == "call.signal" else event["call"]["id"]
        fut = self.box((f"{id(client)}:{kind}", call_id))
        if not fut.done():
            fut.set_result(time.perf_counter())

    async def wait(self, client: Client, kind: str, call_id: str) -> float:
        key = (f"{id(client)}:{kind}", call_id)
        try:
            return await asyncio.wait_for(self.box(key), 30)
        finally:
            self.boxes.pop(key, None)


async def calls(target: Target, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """invite → ringing on the callee → accept → first ``call.signal`` relayed (Nova only)."""
    if target.kind != "nova":
        raise SystemExit("the calls scenario needs Nova's calls API")
    people = await target.users(2 * p.pairs)
    pairs = []
    for i in range(p.pairs):
        caller, callee = people[2 * i], people[2 * i + 1]
        conv = await target.conversation(caller, [callee], kind="direct")
        pairs.append((Member(*caller, conv, target.url_for(2 * i)),
                      Member(*callee, conv, target.url_for(2 * i + 1))))
    stats = Stats()
    mail = Mailbox()
    sockets = await open_all(target, [m for pair in pairs for m in pair], mail.deliver, stats)
    setup: list[float] = []
    ringing: list[float] = []
    signal_ms: list[float] = []
    failures = 0
    measuring = False
    stop = False

    def auth(m: Member) -> dict[str, str]:
        return {"Authorization": f"Bearer {m.token}"}

    async def call_loop(caller: Client, callee: Client) -> None:
        nonlocal failures
        http = target.http
        while not stop:
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{caller.member.base_url}/api/v1/calls", headers=auth(
                    caller.member), json={"conversation_id": caller.member.conversation_id,
                                          "media": "audio"})
                r.raise_for_status()
                call_id = r.json()["id"]
                t_ring = await mail.wait(callee, "call.ringing", call_id)
                r = await http.post(f"{callee.member.base_url}/api/v1/calls/{call_id}/accept",
                                    headers=auth(callee.member))
                r.raise_for_status()
                t_sig0 = time.perf_counter()
                await caller.request({"type": "call.signal", "call_id": call_id,
                                      "to_user_id": callee.member.user_id,
                                      "data": {"type": "offer", "sdp": "v=0 bench"}},
                                     want_reply=False)
                t_sig = await mail.wait(callee, "call.signal", call_id)
                if measuring:
                    setup.append((t_sig - t0) * 1000)
                    ringing.append((t_ring - t0) * 1000)
                    signal_ms.append((t_sig - t_sig0) * 1000)
                r = await http.post(f"{caller.member.base_url}/api/v1/calls/{call_id}/hangup",
                                    headers=auth(caller.member))
                r.raise_for_status()
            except (httpx.HTTPError, TimeoutError, KeyError) as exc:
                failures += 1
                stats.last_error = {"error": repr(exc)}
                await asyncio.sleep(0.2)

    gc.collect()
    tasks = [asyncio.create_task(call_loop(sockets[2 * i], sockets[2 * i + 1]))
             for i in range(p.pairs)]
    await asyncio.sleep(p.warmup)
    measuring = True
    m0 = meter.snapshot()
    await asyncio.sleep(p.duration)
    m1 = meter.snapshot()
    measuring = False
    stop = True
    await asyncio.wait(tasks, timeout=60)
    await close_all(sockets)
    pct = percentiles(setup)
    return {"pairs": p.pairs, "calls_per_s": round(len(setup) / (m1[0] - m0[0]), 1),
            "setup_p50_ms": pct["p50_ms"], "setup_p99_ms": pct["p99_ms"],
            "ringing_p50_ms": percentiles(ringing)["p50_ms"],
            "signal_relay_p50_ms": percentiles(signal_ms)["p50_ms"],
            "signal_relay_p99_ms": percentiles(signal_ms)["p99_ms"],
            "failures": failures, "last_error": stats.last_error,
            **CpuMeter.percent(m0, m1), "errors": stats.errors}


async def rest(target: Target, p: Params, meter: CpuMeter) -> dict[str, Any]:
    """History page fetches (limit 50) at random points of one conversation (Nova only)."""
    if target.kind != "nova":
        raise SystemExit("the rest scenario needs Nova's REST API")
    (room,) = await target.rooms(1, 2)
    stats = Stats()
    (writer,) = await open_all(target, [room[0]], lambda c, e: None, stats)
    for chunk in range(0, p.history, 50):
        futs = [await writer.send_message(f"history {i}")
                for i in range(chunk, min(p.history, chunk + 50))]
        await asyncio.gather(*(asyncio.wait_for(f, 60) for f in futs if f is not None))
    await close_all([writer])
    member = room[1]
    url = f"{member.base_url}/api/v1/conversations/{member.conversation_id}/messages"
    headers = {"Authorization": f"Bearer {member.token}"}
    samples: list[float] = []
    ok = bad = 0
    measuring = stop = False
    http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=p.concurrency))

    async def worker() -> None:
        nonlocal ok, bad
        rng = random.Random()
        while not stop:
            before = rng.randint(51, p.history + 1)
            t0 = time.perf_counter()
            r = await http.get(url, params={"limit": 50, "before": before}, headers=headers)
            dt = (time.perf_counter() - t0) * 1000
            if not measuring:
                continue
            if r.status_code == 200 and len(r.json()["items"]) == 50:
                ok += 1
                samples.append(dt)
            else:
                bad += 1

    gc.collect()
    tasks = [asyncio.create_task(worker()) for _ in range(p.concurrency)]
    try:
        await asyncio.sleep(p.warmup)
        measuring = True
        m0 = meter.snapshot()
        await asyncio.sleep(p.duration)
        m1 = meter.snapshot()
        measuring = False
        stop = True
        await asyncio.wait(tasks, timeout=60)
    finally:
        await http.aclose()
    return {"history": p.history, "concurrency": p.concurrency, "page": 50,
            "requests_per_s": round(ok / (m1[0] - m0[0]), 1), **percentiles(samples),
            "bad_responses": bad, **CpuMeter.percent(m0, m1)}


SCENARIOS: dict[str, Callable[[Target, Params, CpuMeter], Awaitable[dict[str, Any]]]] = {
    "fanout": fanout, "latency": latency, "idle": idle, "reconnect": reconnect,
    "calls": calls, "rest": rest,
}


# --- entry point ---------------------------------------------------------------------------------

def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build_params(args: argparse.Namespace) -> Params:
    p = Params.tiny() if args.tiny else Params.quick() if args.quick else Params()
    overrides = {k: v for k, v in (args.set or [])}
    for key, value in overrides.items():
        if key not in asdict(p):
            raise SystemExit(f"unknown parameter {key!r}; one of {sorted(asdict(p))}")
        setattr(p, key, type(getattr(p, key))(value))
    return p


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    params = build_params(args)
    target = Target(args.kind, args.url.split(","), args.tag or secrets.token_hex(3))
    meter = CpuMeter([int(x) for x in args.server_pid.split(",") if x])
    load_before = os.getloadavg()[0]
    try:
        metrics = await SCENARIOS[args.scenario](target, params, meter)
    finally:
        await target.aclose()
    return {"run_id": args.run_id, "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scenario": args.scenario, "target": args.label or args.kind,
            "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
            "params": asdict(params), "metrics": metrics,
            # Other work on a shared machine shows up here: judge the figures by it.
            "loadavg_1m": {"before": round(load_before, 2),
                           "after": round(os.getloadavg()[0], 2)},
            "machine": machine_info(), "loadgen": {"gc": "disabled", "pid": os.getpid(),
                                                   "cpus": sorted(os.sched_getaffinity(0)),
                                                   "loop": type(asyncio.get_running_loop())
                                                   .__module__}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--kind", choices=["ws", "socketio", "nova"], required=True)
    parser.add_argument("--url", required=True, help="http://host:port[,http://host:port]")
    parser.add_argument("--server-pid", default="", help="server pids (comma separated)")
    parser.add_argument("--label", default="", help="target name in the result")
    parser.add_argument("--run-id", default="")
    parser.add_argument("--tag", default="", help="unique prefix for users and rooms")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--set", nargs=2, action="append", metavar=("PARAM", "VALUE"),
                        help="override a scenario parameter, e.g. --set rooms 20")
    parser.add_argument("--out", type=Path, default=None, help="append the JSON line here")
    args = parser.parse_args(argv)
    raise_fd_limit()
    gc.disable()  # see the module docstring
    gc.freeze()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the bench extra
        result = asyncio.run(main_async(args))
    else:
        result = uvloop.run(main_async(args))
    line = json.dumps(result, sort_keys=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as fh:
            fh.write(line + "\n")
    sys.stdout.write(line + "\n")


if __name__ == "__main__":
    main()

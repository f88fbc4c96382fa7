"""Two `nova serve` replicas sharing the real PostgreSQL and Redis: delivery across replicas,
a replica killed with SIGKILL mid-stream, Redis restarted mid-stream, many senders with
recipients resuming at random moments, and graceful shutdown with 1001."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from nova.client import NovaClient, Socket
from tests.conftest import REDIS_URL, NovaProcess, _truncate, free_port, missing

pytestmark = pytest.mark.e2e


@pytest.fixture
def replica_env(pg_database: str) -> dict[str, str]:
    asyncio.run(_truncate(pg_database))
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        missing(f"Redis at {REDIS_URL}: {exc}")
    return {"NOVA_DATABASE_URL": pg_database, "NOVA_REDIS_URL": REDIS_URL,
            "NOVA_REDIS_PREFIX": f"nova-test-{secrets.token_hex(4)}",
            "NOVA_RATE_LIMITS": "off", "NOVA_DISPATCH_TICK_MS": "200",
            "NOVA_PRESENCE_GRACE_MS": "100"}


class RedisServer:
    """A redis-server of the test's own, on its own port, that the test can restart."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            missing("redis-server is not installed")
        self.proc = subprocess.Popen(
            [str(exe), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def _users(url: str, n: int, prefix: str) -> list[NovaClient]:
    clients = []
    for i in range(n):
        c = NovaClient(url)
        await c.register(f"{prefix}{i}", "secret123")
        clients.append(c)
    return clients


def _on(client: NovaClient, url: str) -> NovaClient:
    """The same account, talking to another replica."""
    other = NovaClient(url)
    other.access_token, other.refresh_token, other.user = (
        client.access_token, client.refresh_token, client.user)
    return other


async def _collect(sock: Socket, into: dict[str, dict[str, Any]], order: list[str],
                   stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            frame = await sock.next_event(timeout=0.5)
        except TimeoutError:
            continue
        ev = frame["event"]
        if ev["type"] == "message.created":
            mid = ev["message"]["id"]
            assert mid not in into, f"message {mid} delivered twice"
            into[mid] = ev["message"]
            order.append(mid)


def _assert_in_seq_order(messages: dict[str, dict[str, Any]], order: list[str]) -> None:
    seqs = [messages[m]["seq"] for m in order]
    assert seqs == sorted(seqs), "events arrived out of order"


async def test_replica_killed_mid_stream_recipient_resumes_on_the_other(
        replica_env: dict[str, str], nova_process: Callable[..., NovaProcess]) -> None:
    r1 = nova_process(replica_env, name="r1")
    r2 = nova_process(replica_env, name="r2")
    alice, bob = await _users(r1.url, 2, "kill")
    conv = await alice.create_group("kill", [bob.user_id])
    bob2 = _on(bob, r2.url)
    got: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    total = 120
    async with alice.socket() as wa:
        sock = bob2.socket()
        s = await sock.__aenter__()
        sent: list[str] = []
        for i in range(total):
            ack = await wa.send_message(conv["id"], f"m{i}")
            sent.append(ack["message"]["id"])
            # Read what has arrived so far on replica 2.
            while not s.events.empty():
                ev = s.events.get_nowait()["event"]
                if ev["type"] == "message.created":
                    assert ev["message"]["id"] not in got
                    got[ev["message"]["id"]] = ev["message"]
                    order.append(ev["message"]["id"])
            if i == total // 2:
                r2.stop(sig=signal.SIGKILL)  # mid-stream, no goodbye
            await asyncio.sleep(0.005)
        cursor = s.cursor
        await s.close()
        assert 0 < len(got) < total  # some arrived before the kill, not all
        bob1 = _on(bob, r1.url)
        async with bob1.socket(since=cursor) as s1:
            deadline = time.monotonic() + 20
            while len(got) < total and time.monotonic() < deadline:
                try:
                    frame = await s1.next_event(timeout=1)
                except TimeoutError:
                    continue
                ev = frame["event"]
                if ev["type"] == "message.created":
                    assert ev["message"]["id"] not in got, "delivered twice"
                    got[ev["message"]["id"]] = ev["message"]
                    order.append(ev["message"]["id"])
        await bob1.aclose()
    assert order == sent  # every message exactly once, in order
    for c in (alice, bob, bob2):
        await c.aclose()


async def test_redis_restart_mid_stream_delivery_catches_up(
        replica_env: dict[str, str], own_redis: RedisServer,
        nova_process: Callable[..., NovaProcess]) -> None:
    env = {**replica_env, "NOVA_REDIS_URL": own_redis.url}
    r1 = nova_process(env, name="r1")
    r2 = nova_process(env, name="r2")
    alice, bob = await _users(r1.url, 2, "redis")
    conv = await alice.create_group("redis", [bob.user_id])
    bob2 = _on(bob, r2.url)
    got: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    stop = asyncio.Event()
    sent: list[str] = []
    async with alice.socket() as wa, bob2.socket() as wb:
        reader = asyncio.create_task(_collect(wb, got, order, stop))
        for i in range(150):
            ack = await wa.send_message(conv["id"], f"r{i}")
            sent.append(ack["message"]["id"])
            if i == 50:
                own_redis.stop()
            if i == 100:
                own_redis.start()  # same port: the subscribers reconnect
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 20
        while len(got) < len(sent) and time.monotonic() < deadline:  # noqa: ASYNC110 (bounded poll)
            await asyncio.sleep(0.1)
        stop.set()
        await reader
    assert order == sent
    for c in (alice, bob, bob2):
        await c.aclose()


async def test_many_senders_on_both_replicas_recipients_resume_at_random(
        replica_env: dict[str, str], nova_process: Callable[..., NovaProcess]) -> None:
    r1 = nova_process(replica_env, name="r1")
    r2 = nova_process(replica_env, name="r2")
    urls = [r1.url, r2.url]
    senders = await _users(r1.url, 4, "snd")
    receivers = await _users(r1.url, 3, "rcv")
    conv = await senders[0].create_group("busy", [u.user_id for u in senders[1:] + receivers])
    rng = random.Random(int(os.environ.get("NOVA_TEST_SEED", "7")))
    done = asyncio.Event()

    async def send_all(i: int, client: NovaClient) -> None:
        c = _on(client, urls[i % 2])
        async with c.socket() as ws:
            for j in range(40):
                await ws.send_message(conv["id"], f"s{i}-{j}")
                await asyncio.sleep(rng.random() * 0.01)
        await c.aclose()

    async def receive_all(client: NovaClient) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        cursor: str | None = None  # of the last event this client PROCESSED

        def take(frame: dict[str, Any]) -> None:
            nonlocal cursor
            cursor = frame["cursor"]
            ev = frame["event"]
            if ev["type"] == "message.created":
                mid = ev["message"]["id"]
                assert mid not in seen, "delivered twice across a resume"
                seen[mid] = ev["message"]
                order.append(mid)

        while True:
            finishing = done.is_set()
            c = _on(client, rng.choice(urls))
            async with c.socket(since=cursor) as ws:
                if cursor is None:
                    cursor = ws.cursor
                until = time.monotonic() + (1.0 if finishing else rng.uniform(0.05, 0.6))
                while time.monotonic() < until:
                    try:
                        take(await ws.next_event(timeout=0.05))
                    except TimeoutError:
                        continue
                # Frames received but not processed are dropped here on purpose: the
                # resume from ``cursor`` must bring them again.
            await c.aclose()
            if finishing:
                return [seen[m] for m in order]

    receiving = [asyncio.create_task(receive_all(r)) for r in receivers]
    await asyncio.sleep(0.3)
    await asyncio.gather(*(send_all(i, s) for i, s in enumerate(senders)))
    done.set()
    results = await asyncio.gather(*receiving)
    history = await senders[0].history(conv["id"], limit=200)
    committed = [m["id"] for m in history["items"]]
    assert len(committed) == 160 and [m["seq"] for m in history["items"]] == list(
        range(1, 161))
    for got in results:
        assert [m["id"] for m in got] == committed
    for c in senders + receivers:
        await c.aclose()


async def test_sigterm_closes_sockets_with_1001(
        nova_process: Callable[..., NovaProcess]) -> None:
    r = nova_process({}, name="term")
    async with NovaClient(r.url) as a:
        await a.register("term", "secret123")
        async with a.socket() as ws:
            assert (await ws.ping())["type"] == "pong"
            r.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            code, _ = await asyncio.wait_for(ws.closed, 15)  # type: ignore[arg-type]
            assert code == 1001
    assert r.proc.wait(20) in (0, -signal.SIGTERM)  # type: ignore[union-attr]

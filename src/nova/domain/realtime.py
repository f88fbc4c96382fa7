"""Realtime delivery: durable events from the log to sockets, exactly once and in order;
typing and presence as ephemeral signals through the broker.

How exactness holds, on one replica or many:
- The store hands out event positions in commit order (see ``SqlStore._append``), so the
  log read in position order never skips a position that commits later.
- Each replica runs ONE dispatcher that reads the log after its position ``pos`` and hands
  each event to the local sockets of its audience. The broker only rings the doorbell; a
  periodic tick and every broker reconnect also read the log, so a lost doorbell only delays.
- A socket attaching with ``since`` is registered first (synchronously, so every event the
  dispatcher handles afterwards is queued for it), then replays (since, D] from the store
  where D is the dispatcher position at registration, then drains its queue, skipping
  what it already has. Both steps are in position order, so nothing is missed or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from nova import metrics
from nova.domain.models import StoredEvent
from nova.domain.ports import Store
from nova.errors import NotFound
from nova.types import iso, now_ms

log = logging.getLogger("nova.realtime")

BATCH = 1000
REPLAY_BATCH = 500
_MEMBER_EVENTS = frozenset({"member.added", "member.removed", "conversation.created"})


class Subscriber(Protocol):
    """One socket, as the realtime service sees it (the gateway implements it)."""

    user_id: str

    def send_frame(self, frame: str) -> bool:
        """Queue a text frame; False when the socket's bounded queue is full."""

    async def put_frame(self, frame: str) -> bool:
        """Queue a text frame, waiting for room (replay); False if the socket closed."""

    def kick(self, code: int, reason: str) -> None:
        """Close the socket soon with this close code."""


class BrokerPort(Protocol):
    async def start(self, handler: Any, on_reconnect: Callable[[], None]) -> None: ...
    def publish(self, channel: str, data: bytes) -> None: ...
    async def close(self) -> None: ...


class PresencePort(Protocol):
    async def adjust(self, user_id: str, delta: int) -> int: ...
    async def heartbeat(self) -> None: ...
    async def close(self) -> None: ...


@dataclass(eq=False, slots=True)
class _Conn:
    sub: Subscriber
    cursor: int
    live: bool = False
    pending: list[tuple[int, str]] = field(default_factory=list)


class SlowConsumer(Exception):
    pass


def event_frame(pos: int, payload: str) -> str:
    """The ``event`` frame, built once per event and shared by every recipient."""
    return f'{{"type":"event","cursor":"{pos}","event":{payload}}}'


class Realtime:
    def __init__(self, store: Store, broker: BrokerPort, presence: PresencePort, *,
                 tick_seconds: float = 1.0, presence_grace_seconds: float = 5.0,
                 typing_interval_seconds: float = 1.0, retention_seconds: float = 30 * 86400,
                 max_pending: int = 1000, period_cache_size: int = 50_000) -> None:
        self.store = store
        self.broker = broker
        self.presence = presence
        self.tick = tick_seconds
        self.presence_grace = presence_grace_seconds
        self.typing_interval = typing_interval_seconds
        self.retention = retention_seconds
        self.max_pending = max_pending
        self.pos = 0
        self._by_user: dict[str, set[_Conn]] = {}
        self._conn_of: dict[int, _Conn] = {}
        self._periods: OrderedDict[str, list[list[Any]]] = OrderedDict()
        self._period_cache_size = period_cache_size
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._typing_seen: dict[tuple[str, str], float] = {}
        self._offline_timers: dict[str, asyncio.TimerHandle] = {}
        self._presence_tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self.on_event: list[Callable[[StoredEvent], None]] = []  # e.g. call supervision

    # --- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self.pos = await self.store.head_position()
        self._running = True
        await self.broker.start(self._on_broker, self._on_broker_reconnect)
        await self.presence.heartbeat()
        for coro, name in ((self._dispatch_loop(), "dispatcher"), (self._tick_loop(), "tick"),
                           (self._housekeeping_loop(), "housekeeping")):
            self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        self._running = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for h in self._offline_timers.values():
            h.cancel()
        for t in list(self._presence_tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 2)
        with contextlib.suppress(Exception):
            await self.presence.close()
        await self.broker.close()

    def kick_all(self, code: int, reason: str) -> None:
        for conns in list(self._by_user.values()):
            for c in list(conns):
                c.sub.kick(code, reason)

    @property
    def socket_count(self) -> int:
        return len(self._conn_of)

    def sockets_of(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    # --- the doorbell -------------------------------------------------------------------
    def events_committed(self, last_pos: int) -> None:
        """EventNotifier: a local commit appended events."""
        self._wake.set()
        self.broker.publish("events", b"1")

    def _on_broker_reconnect(self) -> None:
        metrics.DISPATCH_CATCHUPS.labels(reason="broker_reconnect").inc()
        self._wake.set()

    async def _on_broker(self, channel: str, data: bytes) -> None:
        if channel == "events":
            self._wake.set()
        elif channel == "ephemeral":
            try:
                msg = orjson.loads(data)
            except orjson.JSONDecodeError:
                return
            await self._ephemeral(msg)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self._wake.set()

    async def _housekeeping_loop(self) -> None:
        last_prune = 0.0
        while True:
            try:
                await self.presence.heartbeat()
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    cutoff = now_ms() - int(self.retention * 1000)
                    gone = await self.store.prune_events(cutoff)
                    if gone:
                        log.info("pruned %d events older than the retention", gone)
            except Exception as exc:  # a dependency blip must not kill the loop
                log.warning("housekeeping failed: %s", exc)
            await asyncio.sleep(10)

    # --- the dispatcher -----------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while True:
                    batch = await self.store.events_after(self.pos, BATCH)
                    for ev in batch:
                        await self._dispatch(ev)
                    if len(batch) < BATCH:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dispatch failed, retrying on the next tick: %s", exc)

    async def _dispatch(self, ev: StoredEvent) -> None:
        # Await what the audience needs BEFORE touching sockets; from the lookup of local
        # sockets to moving ``pos`` nothing awaits, so attach() sees a consistent state.
        if ev.user_id is None and ev.conversation_id is not None:
            periods = await self._periods_of(ev.conversation_id)
            if ev.type in _MEMBER_EVENTS:
                self._apply_member_event(ev, periods)
            audience = [p[0] for p in periods
                        if p[1] <= ev.pos and (p[2] is None or ev.pos <= p[2])]
        else:
            audience = [ev.user_id] if ev.user_id else []
        frame = event_frame(ev.pos, ev.payload)
        sent = 0
        for uid in audience:
            for conn in self._by_user.get(uid, ()):
                if conn.live:
                    if ev.pos > conn.cursor:
                        conn.cursor = ev.pos
                        if conn.sub.send_frame(frame):
                            sent += 1
                        else:
                            self._slow(conn)
                else:
                    conn.pending.append((ev.pos, frame))
                    if len(conn.pending) > self.max_pending:
                        self._slow(conn)
        self.pos = ev.pos
        metrics.EVENTS_FANNED_OUT.inc(sent)
        if ev.type == "message.created":
            metrics.MESSAGES_DELIVERED.inc(sent)
        metrics.DISPATCH_LAG.observe(max(0, now_ms() - ev.created_at) / 1000)
        for hook in self.on_event:
            hook(ev)

    def _slow(self, conn: _Conn) -> None:
        metrics.WS_SLOW_CONSUMERS.inc()
        conn.live = False
        conn.pending.clear()
        conn.sub.kick(4001, "slow_consumer")
        self._forget(conn)

    async def _periods_of(self, conversation_id: str) -> list[list[Any]]:
        cached = self._periods.get(conversation_id)
        if cached is not None:
            self._periods.move_to_end(conversation_id)
            return cached
        rows = await self.store.membership_periods(conversation_id)
        cached = self._periods.get(conversation_id)  # another task may have loaded it
        if cached is None:
            cached = [list(r) for r in rows]
            self._periods[conversation_id] = cached
            if len(self._periods) > self._period_cache_size:
                self._periods.popitem(last=False)
        return cached

    @staticmethod
    def _apply_member_event(ev: StoredEvent, periods: list[list[Any]]) -> None:
        """Keep a cached conversation's periods current (idempotent: the cache may have
        been loaded after the change committed)."""
        body = orjson.loads(ev.payload)
        if ev.type == "conversation.created":
            users = [m["user_id"] for m in body["conversation"]["members"]]
        else:
            users = [body["user_id"]]
        for uid in users:
            if ev.type == "member.removed":
                for p in periods:
                    if p[0] == uid and p[1] <= ev.pos and p[2] is None:
                        p[2] = ev.pos
            elif not any(p[0] == uid and p[1] == ev.pos for p in periods):
                periods.append([uid, ev.pos, None])

    # --- sockets ------------------------------------------------------------------------
    async def attach(self, sub: Subscriber, since: int | None, hello: dict[str, Any]) -> None:
        """Register a socket, send ``hello``, replay from ``since``, then go live."""
        conn = _Conn(sub, cursor=self.pos)
        first_here = sub.user_id not in self._by_user
        self._by_user.setdefault(sub.user_id, set()).add(conn)
        self._conn_of[id(sub)] = conn
        upto = self.pos
        timer = self._offline_timers.pop(sub.user_id, None)
        if timer is not None:
            timer.cancel()  # back within the grace period: still counted online
        elif first_here:
            self._spawn(self._went_online(sub.user_id))
        metrics.WS_CONNECTIONS.inc()
        if since is None:
            # No backlog: start at the log's head now (which may be ahead of this
            # replica's dispatcher); what the dispatcher queues up to it is skipped.
            head = max(upto, await self.store.head_position())
            sub.send_frame(orjson.dumps({"type": "hello", **hello, "cursor": str(head)})
                           .decode())
            conn.cursor = head
            await self._go_live(conn)
            return
        sub.send_frame(orjson.dumps({"type": "hello", **hello, "cursor": str(since)}).decode())
        floor = await self.store.retention_floor()
        if since < floor:
            sub.send_frame('{"type":"resync_required"}')
            conn.cursor = upto
            await self._go_live(conn)
            return
        after = since
        replayed = 0
        while after < upto:
            batch = await self.store.events_for_user(sub.user_id, after, upto, REPLAY_BATCH)
            for ev in batch:
                if not await sub.put_frame(event_frame(ev.pos, ev.payload)):
                    self._forget(conn)
                    return
            replayed += len(batch)
            if len(batch) < REPLAY_BATCH:
                break
            after = batch[-1].pos
        metrics.EVENTS_REPLAYED.inc(replayed)
        conn.cursor = max(since, upto)
        await self._go_live(conn)

    async def _go_live(self, conn: _Conn) -> None:
        # Drain what the dispatcher queued meanwhile, waiting for room in the socket's
        # queue; the last check and ``live = True`` happen without an await in between.
        while conn.pending:
            if id(conn.sub) not in self._conn_of:
                return  # detached or cut off meanwhile
            pos, frame = conn.pending.pop(0)
            if pos > conn.cursor:
                conn.cursor = pos
                if not await conn.sub.put_frame(frame):
                    self._forget(conn)
                    return
        if id(conn.sub) in self._conn_of:
            conn.live = True

    def detach(self, sub: Subscriber) -> None:
        conn = self._conn_of.get(id(sub))
        if conn is not None:
            self._forget(conn)

    def _forget(self, conn: _Conn) -> None:
        if self._conn_of.pop(id(conn.sub), None) is None:
            return
        metrics.WS_CONNECTIONS.dec()
        uid = conn.sub.user_id
        conns = self._by_user.get(uid)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_user[uid]
                self._schedule_offline(uid)

    # --- presence -----------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._presence_tasks.add(task)
        task.add_done_callback(self._presence_tasks.discard)

    async def _went_online(self, user_id: str) -> None:
        try:
            total = await self.presence.adjust(user_id, +1)
            if total == 1:
                await self._announce(user_id, "online", None)
        except Exception as exc:
            log.warning("presence update failed: %s", exc)

    def _schedule_offline(self, user_id: str) -> None:
        if not self._running:
            self._spawn(self._went_offline(user_id))
            return
        loop = asyncio.get_running_loop()
        self._offline_timers[user_id] = loop.call_later(
            self.presence_grace, lambda: self._spawn(self._went_offline(user_id)))

    async def _went_offline(self, user_id: str) -> None:
        self._offline_timers.pop(user_id, None)
        if user_id in self._by_user:
            return
        try:
            total = await self.presence.adjust(user_id, -1)
            if total == 0:
                seen = now_ms()
                await self.store.set_last_seen(user_id, seen)
                await self._announce(user_id, "offline", seen)
        except Exception as exc:
            log.warning("presence update failed: %s", exc)

    async def _announce(self, user_id: str, status: str, last_seen: int | None) -> None:
        audience = sorted(await self.store.contacts(user_id) - {user_id})
        if not audience:
            return
        self.broker.publish("ephemeral", orjson.dumps(
            {"k": "presence", "u": user_id, "s": status, "ls": iso(last_seen),
             "a": audience}))

    # --- typing -------------------------------------------------------------------------
    async def typing(self, user_id: str, conversation_id: str) -> None:
        """Relay a typing signal to the other members (never stored; rate-limited)."""
        periods = await self._periods_of(conversation_id)
        if not any(p[0] == user_id and p[2] is None for p in periods):
            # The cache may predate a join this replica has not dispatched yet.
            if await self.store.member_role(conversation_id, user_id) is None:
                raise NotFound("conversation not found")
        key = (user_id, conversation_id)
        now = time.monotonic()
        if now - self._typing_seen.get(key, -1e9) < self.typing_interval:
            return
        if len(self._typing_seen) > 100_000:
            self._typing_seen.clear()
        self._typing_seen[key] = now
        self.broker.publish("ephemeral", orjson.dumps(
            {"k": "typing", "c": conversation_id, "u": user_id}))

    async def _ephemeral(self, msg: dict[str, Any]) -> None:
        kind = msg.get("k")
        if kind == "typing":
            conv, uid = msg.get("c"), msg.get("u")
            if not isinstance(conv, str) or not isinstance(uid, str):
                return
            periods = await self._periods_of(conv)
            frame = orjson.dumps({"type": "typing", "conversation_id": conv,
                                  "user_id": uid}).decode()
            for p in periods:
                if p[2] is None and p[0] != uid:
                    self._send_live(p[0], frame)
        elif kind == "presence":
            frame = orjson.dumps({"type": "presence", "user_id": msg.get("u"),
                                  "status": msg.get("s"), "last_seen": msg.get("ls")}).decode()
            for uid in msg.get("a") or ():
                self._send_live(uid, frame)

    def _send_live(self, user_id: str, frame: str) -> None:
        for conn in list(self._by_user.get(user_id, ())):
            if conn.live and not conn.sub.send_frame(frame):
                self._slow(conn)

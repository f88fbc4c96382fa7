"""RedisBroker: pub/sub between replicas.

Publishing is pipelined: messages queued in one loop iteration go out in one round trip
(unpipelined publishing tops out at a few thousand per second from Python). The subscriber
reconnects with backoff and calls ``on_reconnect`` so the replica catches up from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from nova import metrics
from nova.broker.base import Handler

log = logging.getLogger("nova.broker")


class RedisBroker:
    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._pub = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                            health_check_interval=30)
        self._queue: list[tuple[str, bytes]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._sub_task: asyncio.Task[None] | None = None
        self._closed = False

    def channel(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    @property
    def client(self) -> aioredis.Redis:
        return self._pub

    async def start(self, handler: Handler, on_reconnect: Callable[[], None]) -> None:
        self._sub_task = asyncio.create_task(self._subscribe(handler, on_reconnect),
                                             name="redis-subscriber")

    async def _subscribe(self, handler: Handler, on_reconnect: Callable[[], None]) -> None:
        names = {self.channel(n): n for n in ("events", "ephemeral")}
        delay = 0.1
        first = True
        while not self._closed:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=5)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*names)
                if not first:
                    log.info("redis subscriber reconnected")
                    on_reconnect()
                first = False
                delay = 0.1
                while not self._closed:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    chan = msg["channel"].decode() if isinstance(msg["channel"], bytes) \
                        else msg["channel"]
                    result = handler(names.get(chan, chan), msg["data"])
                    if inspect.isawaitable(result):
                        await result
            except (RedisError, OSError) as exc:
                if self._closed:
                    break
                log.warning("redis subscriber lost: %s; retrying in %.1fs", exc, delay)
                metrics.BROKER_RECONNECTS.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()

    def publish(self, channel: str, data: bytes) -> None:
        if self._closed:
            return
        self._queue.append((self.channel(channel), data))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let this loop iteration queue more
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                async with self._pub.pipeline(transaction=False) as pipe:
                    for chan, data in batch:
                        pipe.publish(chan, data)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                metrics.BROKER_PUBLISH_ERRORS.inc()
                log.warning("redis publish failed (%d messages): %s", len(batch), exc)

    async def ping(self) -> None:
        await self._pub.ping()

    async def close(self) -> None:
        self._closed = True
        for task in (self._sub_task, self._flush_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._pub.aclose()

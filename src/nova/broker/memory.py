"""MemoryBroker: one process, no network. Messages loop back to this process's handler."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

from nova.broker.base import Handler


class MemoryBroker:
    def __init__(self) -> None:
        self._handler: Handler | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self, handler: Handler, on_reconnect: Callable[[], None]) -> None:
        self._handler = handler

    def publish(self, channel: str, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        result = handler(channel, data)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._handler = None

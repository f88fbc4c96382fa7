"""The broker contract (centrifuge's shape: publish + one handler per subscription)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

Handler = Callable[[str, bytes], Awaitable[None] | None]


class Broker(Protocol):
    """Channels are names (``events``, ``ephemeral``); engines add their own prefix."""

    async def start(self, handler: Handler, on_reconnect: Callable[[], None]) -> None: ...

    def publish(self, channel: str, data: bytes) -> None:
        """Queue a message; never blocks, never raises (delivery is best effort: the event
        log, not the broker, is the source of truth)."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

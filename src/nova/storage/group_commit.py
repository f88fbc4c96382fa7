"""Group commit for message sends on PostgreSQL: sends that arrive while a batch is being
written are written together in the next one (one transaction, one commit, the event-log
lock taken once). If a batch fails as a whole (say a concurrent duplicate on another
replica), each of its sends is retried on its own, so one bad send never fails others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

log = logging.getLogger("nova.storage")

MAX_BATCH = 128


@dataclass(frozen=True, slots=True)
class _SendArgs:
    conversation_id: str
    sender_id: str
    kind: str
    body: str
    client_msg_id: str
    reply_to: str | None


class GroupCommit:
    def __init__(self, write_batch: Callable[[list[_SendArgs]], Awaitable[list[Any]]],
                 write_one: Callable[[_SendArgs], Awaitable[Any]]) -> None:
        self._write_batch = write_batch
        self._write_one = write_one
        self._pending: list[tuple[_SendArgs, asyncio.Future[Any]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def send(self, args: _SendArgs) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((args, fut))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await fut

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            args = [a for a, _ in batch]
            try:
                if len(args) == 1:
                    results: list[Any] = [await self._write_one(args[0])]
                else:
                    results = await self._write_batch(args)
            except IntegrityError:
                results = await asyncio.gather(*(self._write_one(a) for a in args),
                                               return_exceptions=True)
            except Exception as exc:  # the database is down: every send fails alike
                results = [exc] * len(args)
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

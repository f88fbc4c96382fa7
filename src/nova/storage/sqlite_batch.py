"""Group commit for message sends on SQLite.

Under load, concurrent sends queue up; one writer takes every pending send and stores them
all in ONE transaction, run as plain sqlite3 code on a dedicated thread (one thread hop and
one commit per batch instead of a hop per statement and a commit per message). The disk
sync stays off the event loop. Each send still gets its own result: a rule broken by one
send (not a member, a bad ``reply_to``, a reused ``client_msg_id``) fails that send only,
because every check runs before that send writes anything.

Acknowledgements go out only after the batch's COMMIT returned, so "acknowledged" still
means "durably stored".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import orjson

from nova import metrics
from nova.domain.models import Message
from nova.errors import Conflict, ErrorCode, InvalidInput, NotFound, NovaError, Unavailable
from nova.types import new_id, now_ms

MAX_BATCH = 256


@dataclass(slots=True)
class _Send:
    conversation_id: str
    sender_id: str
    kind: str
    body: str
    client_msg_id: str
    reply_to: str | None
    future: asyncio.Future[tuple[Message, bool]]


def _row_message(r: tuple[Any, ...]) -> Message:
    return Message(id=r[0], conversation_id=r[1], seq=r[2], sender_id=r[3], kind=r[4],
                   body=r[5], client_msg_id=r[6], reply_to=r[7], created_at=r[8],
                   edited_at=r[9], deleted=bool(r[10]))


_SELECT_MSG = ("SELECT id, conversation_id, seq, sender_id, kind, body, client_msg_id, "
               "reply_to, created_at, edited_at, deleted FROM messages ")


class SqliteMessageWriter:
    def __init__(self, path: str, write_lock: asyncio.Lock) -> None:
        self.path = path
        self._lock = write_lock
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nova-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Send] = []
        self._runner: asyncio.Task[None] | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
        return self._conn

    async def send(self, conversation_id: str, sender_id: str, kind: str, body: str,
                   client_msg_id: str, reply_to: str | None) -> tuple[Message, bool]:
        fut: asyncio.Future[tuple[Message, bool]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Send(conversation_id, sender_id, kind, body, client_msg_id,
                                   reply_to, fut))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            start = time.perf_counter()
            try:
                async with self._lock:
                    results = await loop.run_in_executor(self._pool, self._write, batch)
            except sqlite3.Error as exc:
                metrics.DATABASE_ERRORS.labels(operation="send_message").inc()
                err = Unavailable("the database is unavailable")
                err.__cause__ = exc
                results = [err] * len(batch)
            except BaseException as exc:  # cancelled while writing: fail the callers
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(Unavailable("shutting down"))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise
            metrics.DATABASE_QUERY_DURATION.labels(operation="send_message").observe(
                time.perf_counter() - start)
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    def _write(self, batch: list[_Send]) -> list[tuple[Message, bool] | NovaError]:
        """One transaction for the whole batch (runs on the writer thread)."""
        conn = self._connect()
        out: list[tuple[Message, bool] | NovaError] = []
        appended: list[str] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for item in batch:
                try:
                    out.append(self._one(conn, item, appended))
                except NovaError as exc:
                    out.append(exc)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        for etype in appended:
            metrics.EVENTS_APPENDED.labels(type=etype).inc()
        return out

    @staticmethod
    def _one(conn: sqlite3.Connection, s: _Send,
             appended: list[str]) -> tuple[Message, bool]:
        # Checks first: nothing below may fail once this send has written.
        row = conn.execute(_SELECT_MSG + "WHERE sender_id = ? AND client_msg_id = ?",
                           (s.sender_id, s.client_msg_id)).fetchone()
        if row is not None:
            existing = _row_message(row)
            if existing.conversation_id != s.conversation_id:
                raise Conflict("client_msg_id was already used for another conversation",
                               ErrorCode.CLIENT_MSG_ID_CONFLICT, field="client_msg_id")
            return existing, False
        member = conn.execute(
            "SELECT 1 FROM members WHERE conversation_id = ? AND user_id = ?",
            (s.conversation_id, s.sender_id)).fetchone()
        if member is None:
            raise NotFound("conversation not found")
        if s.reply_to is not None and conn.execute(
                "SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?",
                (s.reply_to, s.conversation_id)).fetchone() is None:
            raise InvalidInput("reply_to is not a message of this conversation",
                               field="reply_to")
        now = now_ms()
        mid = new_id()
        seq = conn.execute(
            "UPDATE conversations SET last_seq = last_seq + 1, updated_at = ?, "
            "last_message_id = ? WHERE id = ? RETURNING last_seq",
            (now, mid, s.conversation_id)).fetchone()[0]
        msg = Message(id=mid, conversation_id=s.conversation_id, seq=seq,
                      sender_id=s.sender_id, kind=s.kind, body=s.body,
                      client_msg_id=s.client_msg_id, reply_to=s.reply_to, created_at=now,
                      edited_at=None, deleted=False)
        conn.execute(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, kind, body, "
            "client_msg_id, reply_to, created_at, edited_at, deleted) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 0)",
            (mid, s.conversation_id, seq, s.sender_id, s.kind, s.body, s.client_msg_id,
             s.reply_to, now))
        conn.execute("UPDATE members SET last_read_seq = ? WHERE conversation_id = ? "
                     "AND user_id = ?", (seq, s.conversation_id, s.sender_id))
        payload = orjson.dumps({"type": "message.created", "message": msg.wire()}).decode()
        conn.execute("INSERT INTO events (conversation_id, user_id, type, payload, created_at)"
                     " VALUES (?, NULL, 'message.created', ?, ?)",
                     (s.conversation_id, payload, now))
        appended.append("message.created")
        return msg, True

    async def close(self) -> None:
        if self._runner is not None and not self._runner.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner, 10)
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, conn.close)
        self._pool.shutdown(wait=False)

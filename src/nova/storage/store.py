"""``SqlStore``: the one storage implementation, for SQLite and PostgreSQL alike.

Rules that keep the event log exact:
- every transaction that changes a conversation first locks its row (``_touch``), so the
  writers of one conversation are serialized and ``seq`` is gap-free;
- events are appended LAST in a transaction (``_append``). On PostgreSQL the append takes a
  transaction-scoped advisory lock, so positions are handed out and committed in the same
  order: once a reader sees position 11, position 10 is already visible or never will be. On
  SQLite one process holds one writer lock, which gives the same guarantee.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, func, insert, or_, select, text, union_all, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nova import metrics
from nova.domain.models import (
    Call,
    Conversation,
    Member,
    Message,
    NewEvent,
    Participant,
    StoredEvent,
    User,
)
from nova.errors import Conflict, ErrorCode, Forbidden, InvalidInput, NotFound, Unavailable
from nova.storage.group_commit import GroupCommit, _SendArgs
from nova.storage.sqlite_batch import SqliteMessageWriter
from nova.storage.tables import (
    calls,
    conversations,
    events,
    members,
    membership_periods,
    messages,
    meta,
    refresh_tokens,
    users,
)
from nova.types import new_id, now_ms

_EVENT_LOCK_KEY = 0x4E4F5645  # "NOVE": the event-log append lock on PostgreSQL


def _user(row: Any) -> User:
    return User(id=row.id, username=row.username, display_name=row.display_name,
                created_at=row.created_at, disabled=bool(row.disabled),
                last_seen_at=row.last_seen_at)


def _message(row: Any) -> Message:
    return Message(id=row.id, conversation_id=row.conversation_id, seq=row.seq,
                   sender_id=row.sender_id, kind=row.kind, body=row.body,
                   client_msg_id=row.client_msg_id, reply_to=row.reply_to,
                   created_at=row.created_at, edited_at=row.edited_at,
                   deleted=bool(row.deleted))


def _call(row: Any) -> Call:
    parts = tuple(Participant(p["user_id"], p["state"]) for p in orjson.loads(row.participants))
    return Call(id=row.id, conversation_id=row.conversation_id, initiator_id=row.initiator_id,
                media=row.media, state=row.state, participants=parts,
                created_at=row.created_at, answered_at=row.answered_at,
                ended_at=row.ended_at, end_reason=row.end_reason)


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


def decode_cursor(cursor: str, n: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = orjson.loads(raw)
    except (ValueError, orjson.JSONDecodeError):
        raise InvalidInput("cursor is not valid", ErrorCode.INVALID_CURSOR,
                           field="cursor") from None
    if not isinstance(parts, list) or len(parts) != n:
        raise InvalidInput("cursor is not valid", ErrorCode.INVALID_CURSOR, field="cursor")
    return parts


class SqlStore:
    """Storage for every domain service; see ``nova.domain.ports.Store`` for the contract."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._sqlite_writer = asyncio.Lock() if self.dialect == "sqlite" else None
        self._batcher: SqliteMessageWriter | None = None
        self._pg_batcher = GroupCommit(self._send_batch, self._send_one)
        path = engine.url.database
        if self._sqlite_writer is not None and path and path != ":memory:":
            self._batcher = SqliteMessageWriter(path, self._sqlite_writer)

    # --- plumbing ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _read(self, operation: str) -> AsyncIterator[AsyncConnection]:
        async with self._observed(operation, write=False) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _write(self, operation: str) -> AsyncIterator[AsyncConnection]:
        """One transaction (on SQLite, under the process's single-writer lock)."""
        async with self._observed(operation, write=True) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _observed(self, operation: str, write: bool) -> AsyncIterator[AsyncConnection]:
        """Time the operation; map a lost database to ``Unavailable`` (integrity errors go
        up as they are: callers turn them into answers)."""
        start = time.perf_counter()
        lock = (self._sqlite_writer if write else None) or contextlib.nullcontext()
        try:
            async with lock, (self.engine.begin() if write else self.engine.connect()) as conn:
                yield conn
        except (DBAPIError, OSError) as exc:
            if isinstance(exc, IntegrityError):
                raise
            metrics.DATABASE_ERRORS.labels(operation=operation).inc()
            raise Unavailable("the database is unavailable") from exc
        finally:
            metrics.DATABASE_QUERY_DURATION.labels(operation=operation).observe(
                time.perf_counter() - start)

    async def ping(self) -> None:
        async with self._read("ping") as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        await self.engine.dispose()

    async def _append(self, conn: AsyncConnection, new: Sequence[NewEvent],
                      now: int) -> list[StoredEvent]:
        """Append events; MUST be the last writes of the transaction but for period rows."""
        if not new:
            return []
        if self.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _EVENT_LOCK_KEY})
        rows = [
            {"conversation_id": e.conversation_id, "user_id": e.user_id, "type": e.type,
             "payload": orjson.dumps({"type": e.type, **e.payload}).decode(),
             "created_at": now}
            for e in new
        ]
        out: list[StoredEvent] = []
        if self.dialect == "postgresql" and len(rows) > 1:
            # Take the positions first (in order, under the lock), then insert in one go.
            positions = (await conn.execute(text(
                "SELECT nextval(pg_get_serial_sequence('events', 'pos')) "
                "FROM generate_series(1, :n)"), {"n": len(rows)})).scalars().all()
            for row, pos in zip(rows, sorted(positions), strict=True):
                row["pos"] = pos
            await conn.execute(insert(events), rows)
        else:
            # One statement per event keeps positions in list order.
            for row in rows:
                row["pos"] = (await conn.execute(
                    insert(events).values(**row).returning(events.c.pos))).scalar_one()
        for row in rows:
            out.append(StoredEvent(pos=row["pos"], type=row["type"],
                                   conversation_id=row["conversation_id"],
                                   user_id=row["user_id"], payload=row["payload"],
                                   created_at=now))
        for e in out:
            metrics.EVENTS_APPENDED.labels(type=e.type).inc()
        return out

    async def _touch(self, conn: AsyncConnection, conversation_id: str, now: int,
                     **values: Any) -> Any:
        """Lock the conversation row (first write of every conversation transaction)."""
        row = (await conn.execute(
            update(conversations).where(conversations.c.id == conversation_id)
            .values(updated_at=now, **values)
            .returning(conversations.c.last_seq, conversations.c.kind)
        )).first()
        if row is None:
            raise NotFound("conversation not found")
        return row

    # --- users ---------------------------------------------------------------------------
    async def create_user(self, username: str, display_name: str,
                          password_hash: str | None, user_id: str | None = None) -> User:
        now = now_ms()
        uid = user_id or new_id()
        try:
            async with self._write("create_user") as conn:
                await conn.execute(insert(users).values(
                    id=uid, username=username, username_key=username.lower(),
                    display_name=display_name, password_hash=password_hash, disabled=False,
                    created_at=now))
        except IntegrityError:
            raise Conflict("that username is taken", ErrorCode.USERNAME_TAKEN,
                           field="username") from None
        return User(uid, username, display_name, now)

    async def get_user(self, user_id: str) -> User | None:
        async with self._read("get_user") as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        return _user(row) if row else None

    async def get_login(self, username: str) -> tuple[User, str | None] | None:
        async with self._read("get_login") as conn:
            row = (await conn.execute(
                select(users).where(users.c.username_key == username.lower()))).first()
        return (_user(row), row.password_hash) if row else None

    async def search_users(self, prefix: str, limit: int) -> list[User]:
        q = select(users).where(users.c.disabled.is_(False))
        if prefix:
            escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%")\
                .replace("_", "\\_")
            q = q.where(users.c.username_key.like(escaped + "%", escape="\\"))
        q = q.order_by(users.c.username_key).limit(limit)
        async with self._read("search_users") as conn:
            return [_user(r) for r in (await conn.execute(q)).all()]

    async def list_users(self, limit: int) -> list[User]:
        async with self._read("list_users") as conn:
            rows = (await conn.execute(
                select(users).order_by(users.c.created_at).limit(limit))).all()
        return [_user(r) for r in rows]

    async def set_user_disabled(self, username: str, disabled: bool) -> User:
        async with self._write("disable_user") as conn:
            row = (await conn.execute(
                update(users).where(users.c.username_key == username.lower())
                .values(disabled=disabled).returning(*users.c))).first()
            if row is None:
                raise NotFound(f"no user {username!r}")
            if disabled:
                await conn.execute(update(refresh_tokens)
                                   .where(refresh_tokens.c.user_id == row.id,
                                          refresh_tokens.c.revoked_at.is_(None))
                                   .values(revoked_at=now_ms()))
        return _user(row)

    async def set_last_seen(self, user_id: str, at: int) -> None:
        async with self._write("set_last_seen") as conn:
            await conn.execute(update(users).where(users.c.id == user_id)
                               .values(last_seen_at=at))

    async def existing_user_ids(self, user_ids: Iterable[str]) -> set[str]:
        ids = list(set(user_ids))
        if not ids:
            return set()
        async with self._read("existing_users") as conn:
            rows = (await conn.execute(select(users.c.id).where(
                users.c.id.in_(ids), users.c.disabled.is_(False)))).all()
        return {r.id for r in rows}

    # --- refresh tokens --------------------------------------------------------------------
    async def add_refresh_token(self, token_hash: str, family_id: str, user_id: str,
                                expires_at: int) -> None:
        async with self._write("add_refresh_token") as conn:
            await conn.execute(insert(refresh_tokens).values(
                token_hash=token_hash, family_id=family_id, user_id=user_id,
                created_at=now_ms(), expires_at=expires_at))

    async def rotate_refresh_token(self, old_hash: str, new_hash: str,
                                   expires_at: int) -> tuple[str, str | None, str | None]:
        """Spend ``old_hash`` and store ``new_hash`` in its family.

        Returns ``("ok", user_id, family_id)``, ``("reused", user_id, family_id)`` after
        revoking the whole family, or ``("invalid", None, None)``.
        """
        now = now_ms()
        async with self._write("rotate_refresh_token") as conn:
            row = (await conn.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.token_hash == old_hash,
                       refresh_tokens.c.used_at.is_(None),
                       refresh_tokens.c.revoked_at.is_(None),
                       refresh_tokens.c.expires_at > now)
                .values(used_at=now)
                .returning(refresh_tokens.c.user_id, refresh_tokens.c.family_id))).first()
            if row is not None:
                await conn.execute(insert(refresh_tokens).values(
                    token_hash=new_hash, family_id=row.family_id, user_id=row.user_id,
                    created_at=now, expires_at=expires_at))
                return "ok", row.user_id, row.family_id
            old = (await conn.execute(select(refresh_tokens).where(
                refresh_tokens.c.token_hash == old_hash))).first()
            if old is None:
                return "invalid", None, None
            if old.used_at is not None:
                await conn.execute(update(refresh_tokens)
                                   .where(refresh_tokens.c.family_id == old.family_id,
                                          refresh_tokens.c.revoked_at.is_(None))
                                   .values(revoked_at=now))
                return "reused", old.user_id, old.family_id
            return "invalid", None, None

    async def revoke_family(self, family_id: str) -> None:
        async with self._write("revoke_family") as conn:
            await conn.execute(update(refresh_tokens)
                               .where(refresh_tokens.c.family_id == family_id,
                                      refresh_tokens.c.revoked_at.is_(None))
                               .values(revoked_at=now_ms()))

    async def family_active(self, family_id: str) -> bool:
        """True while the session has an unrevoked refresh token."""
        async with self._read("family_active") as conn:
            row = (await conn.execute(select(func.count()).select_from(refresh_tokens).where(
                refresh_tokens.c.family_id == family_id,
                refresh_tokens.c.revoked_at.is_(None)))).scalar_one()
        return bool(row)

    # --- conversations -------------------------------------------------------------------
    async def _load_conversations(self, conn: AsyncConnection, ids: list[str],
                                  viewer: str | None) -> dict[str, Conversation]:
        if not ids:
            return {}
        conv_rows = (await conn.execute(
            select(conversations).where(conversations.c.id.in_(ids)))).all()
        member_rows = (await conn.execute(
            select(members).where(members.c.conversation_id.in_(ids))
            .order_by(members.c.joined_at, members.c.user_id))).all()
        last_ids = [r.last_message_id for r in conv_rows if r.last_message_id]
        last_msgs: dict[str, Message] = {}
        if last_ids:
            for r in (await conn.execute(select(messages).where(
                    messages.c.id.in_(last_ids)))).all():
                last_msgs[r.id] = _message(r)
        mems: dict[str, list[Member]] = {i: [] for i in ids}
        for r in member_rows:
            mems[r.conversation_id].append(Member(r.user_id, r.role, r.last_read_seq))
        unread: dict[str, int] = {}
        if viewer is not None:
            mine = members.alias("mine")
            q = (select(messages.c.conversation_id, func.count())
                 .join(mine, and_(mine.c.conversation_id == messages.c.conversation_id,
                                  mine.c.user_id == viewer))
                 .where(messages.c.conversation_id.in_(ids),
                        messages.c.seq > mine.c.last_read_seq,
                        messages.c.sender_id != viewer,
                        messages.c.deleted.is_(False))
                 .group_by(messages.c.conversation_id))
            unread = {r[0]: r[1] for r in (await conn.execute(q)).all()}
        out = {}
        for r in conv_rows:
            out[r.id] = Conversation(
                id=r.id, kind=r.kind, title=r.title, members=tuple(mems[r.id]),
                last_seq=r.last_seq, created_at=r.created_at, updated_at=r.updated_at,
                last_message=last_msgs.get(r.last_message_id) if r.last_message_id else None,
                unread_count=unread.get(r.id, 0))
        return out

    async def get_conversation(self, conversation_id: str,
                               viewer: str | None = None) -> Conversation | None:
        """The conversation, or None if it does not exist or ``viewer`` is not a member."""
        async with self._read("get_conversation") as conn:
            found = await self._load_conversations(conn, [conversation_id], viewer)
        conv = found.get(conversation_id)
        if conv is None or (viewer is not None and conv.member(viewer) is None):
            return None
        return conv

    async def list_conversations(self, viewer: str, limit: int,
                                 cursor: str | None) -> tuple[list[Conversation], str | None]:
        q = (select(conversations.c.id, conversations.c.updated_at)
             .join(members, and_(members.c.conversation_id == conversations.c.id,
                                 members.c.user_id == viewer)))
        if cursor:
            at, cid = decode_cursor(cursor, 2)
            if not isinstance(at, int) or not isinstance(cid, str):
                raise InvalidInput("cursor is not valid", ErrorCode.INVALID_CURSOR,
                                   field="cursor")
            q = q.where(or_(conversations.c.updated_at < at,
                            and_(conversations.c.updated_at == at, conversations.c.id < cid)))
        q = q.order_by(conversations.c.updated_at.desc(), conversations.c.id.desc())\
            .limit(limit + 1)
        async with self._read("list_conversations") as conn:
            rows = (await conn.execute(q)).all()
            page = rows[:limit]
            loaded = await self._load_conversations(conn, [r.id for r in page], viewer)
        items = [loaded[r.id] for r in page]
        next_cursor = None
        if len(rows) > limit:
            last = page[-1]
            next_cursor = encode_cursor(last.updated_at, last.id)
        return items, next_cursor

    async def create_conversation(self, kind: str, title: str | None, creator: str,
                                  member_ids: list[str],
                                  direct_key: str | None) -> tuple[Conversation, bool]:
        """Create it (and its ``conversation.created`` event); for a direct pair that exists
        already, return that one. Returns ``(conversation, created)``."""
        now = now_ms()
        cid = new_id()
        if direct_key is not None:
            async with self._read("find_direct") as conn:
                existing = (await conn.execute(select(conversations.c.id).where(
                    conversations.c.direct_key == direct_key))).first()
            if existing is not None:
                conv = await self.get_conversation(existing.id, creator)
                if conv is not None:
                    return conv, False
        roles = {creator: "admin"}
        for uid in member_ids:
            roles.setdefault(uid, "admin" if kind == "direct" else "member")
        try:
            async with self._write("create_conversation") as conn:
                await conn.execute(insert(conversations).values(
                    id=cid, kind=kind, title=title, direct_key=direct_key, created_by=creator,
                    created_at=now, updated_at=now, last_seq=0))
                await conn.execute(insert(members), [
                    {"conversation_id": cid, "user_id": uid, "role": role,
                     "last_read_seq": 0, "joined_at": now}
                    for uid, role in roles.items()])
                conv = Conversation(id=cid, kind=kind, title=title,
                                    members=tuple(Member(u, r, 0) for u, r in roles.items()),
                                    last_seq=0, created_at=now, updated_at=now)
                [ev] = await self._append(conn, [NewEvent(
                    "conversation.created", {"conversation": conv.shared_wire()},
                    conversation_id=cid)], now)
                await conn.execute(insert(membership_periods), [
                    {"conversation_id": cid, "user_id": uid, "from_pos": ev.pos}
                    for uid in roles])
        except IntegrityError:
            if direct_key is None:
                raise
            # A concurrent request created the same pair first.
            async with self._read("find_direct") as conn:
                existing = (await conn.execute(select(conversations.c.id).where(
                    conversations.c.direct_key == direct_key))).first()
            found = await self.get_conversation(existing.id, creator) if existing else None
            if found is None:
                raise
            return found, False
        return conv, True

    async def update_conversation(self, conversation_id: str, title: str) -> Conversation:
        now = now_ms()
        async with self._write("update_conversation") as conn:
            await self._touch(conn, conversation_id, now, title=title)
            conv = (await self._load_conversations(conn, [conversation_id], None))[
                conversation_id]
            await self._append(conn, [NewEvent("conversation.updated",
                                               {"conversation": conv.shared_wire()},
                                               conversation_id=conversation_id)], now)
        return conv

    async def add_members(self, conversation_id: str, user_ids: list[str],
                          max_members: int) -> Conversation:
        now = now_ms()
        async with self._write("add_members") as conn:
            await self._touch(conn, conversation_id, now)
            current = {r.user_id for r in (await conn.execute(select(members.c.user_id).where(
                members.c.conversation_id == conversation_id))).all()}
            new = [u for u in dict.fromkeys(user_ids) if u not in current]
            if len(current) + len(new) > max_members:
                raise InvalidInput(f"a group has at most {max_members} members",
                                   ErrorCode.TOO_MANY_MEMBERS, field="user_ids")
            if new:
                await conn.execute(insert(members), [
                    {"conversation_id": conversation_id, "user_id": u, "role": "member",
                     "last_read_seq": 0, "joined_at": now} for u in new])
            conv = (await self._load_conversations(conn, [conversation_id], None))[
                conversation_id]
            evs = await self._append(conn, [
                NewEvent("member.added", {"conversation": conv.shared_wire(), "user_id": u},
                         conversation_id=conversation_id) for u in new], now)
            if evs:
                await conn.execute(insert(membership_periods), [
                    {"conversation_id": conversation_id, "user_id": u, "from_pos": ev.pos}
                    for u, ev in zip(new, evs, strict=True)])
        return conv

    async def remove_member(self, conversation_id: str, user_id: str) -> Conversation:
        now = now_ms()
        async with self._write("remove_member") as conn:
            await self._touch(conn, conversation_id, now)
            gone = (await conn.execute(members.delete().where(
                members.c.conversation_id == conversation_id, members.c.user_id == user_id)
            )).rowcount
            if not gone:
                raise NotFound("that user is not a member")
            # The last admin leaving a group hands the role to the longest-standing member.
            admins = (await conn.execute(select(func.count()).select_from(members).where(
                members.c.conversation_id == conversation_id, members.c.role == "admin"))
            ).scalar_one()
            if admins == 0:
                heir = (await conn.execute(select(members.c.user_id).where(
                    members.c.conversation_id == conversation_id)
                    .order_by(members.c.joined_at, members.c.user_id).limit(1))).first()
                if heir is not None:
                    await conn.execute(update(members).where(
                        members.c.conversation_id == conversation_id,
                        members.c.user_id == heir.user_id).values(role="admin"))
            conv = (await self._load_conversations(conn, [conversation_id], None))[
                conversation_id]
            [ev] = await self._append(conn, [NewEvent(
                "member.removed", {"conversation": conv.shared_wire(), "user_id": user_id},
                conversation_id=conversation_id)], now)
            await conn.execute(update(membership_periods).where(
                membership_periods.c.conversation_id == conversation_id,
                membership_periods.c.user_id == user_id,
                membership_periods.c.to_pos.is_(None)).values(to_pos=ev.pos))
        return conv

    async def member_role(self, conversation_id: str, user_id: str) -> str | None:
        async with self._read("member_role") as conn:
            row = (await conn.execute(select(members.c.role).where(
                members.c.conversation_id == conversation_id,
                members.c.user_id == user_id))).first()
        return row.role if row else None

    async def member_ids(self, conversation_id: str) -> list[str]:
        async with self._read("member_ids") as conn:
            rows = (await conn.execute(select(members.c.user_id).where(
                members.c.conversation_id == conversation_id))).all()
        return [r.user_id for r in rows]

    async def contacts(self, user_id: str) -> set[str]:
        """Every user who shares a conversation with ``user_id`` (presence audience)."""
        mine = members.alias("mine")
        q = (select(members.c.user_id).distinct()
             .join(mine, mine.c.conversation_id == members.c.conversation_id)
             .where(mine.c.user_id == user_id))
        async with self._read("contacts") as conn:
            return {r.user_id for r in (await conn.execute(q)).all()}

    # --- messages ------------------------------------------------------------------------
    async def find_message_by_client_id(self, sender_id: str,
                                        client_msg_id: str) -> Message | None:
        async with self._read("find_message") as conn:
            row = (await conn.execute(select(messages).where(
                messages.c.sender_id == sender_id,
                messages.c.client_msg_id == client_msg_id))).first()
        return _message(row) if row else None

    async def send_message(self, conversation_id: str, sender_id: str, kind: str, body: str,
                           client_msg_id: str, reply_to: str | None) -> tuple[Message, bool]:
        """Store a message with the next ``seq``; ``(message, created)``. The same
        ``client_msg_id`` from the same sender returns the stored message, never a copy."""
        if self._batcher is not None:  # SQLite: group commit on the writer thread
            return await self._batcher.send(conversation_id, sender_id, kind, body,
                                            client_msg_id, reply_to)
        if self.dialect == "postgresql":  # group commit in one transaction
            return await self._pg_batcher.send(_SendArgs(conversation_id, sender_id, kind,
                                                         body, client_msg_id, reply_to))
        return await self._send_one(_SendArgs(conversation_id, sender_id, kind, body,
                                              client_msg_id, reply_to))

    async def _send_one(self, a: _SendArgs) -> tuple[Message, bool]:
        """One send in its own transaction (and the fallback of a failed batch)."""
        conversation_id, sender_id, kind, body = a.conversation_id, a.sender_id, a.kind, a.body
        client_msg_id, reply_to = a.client_msg_id, a.reply_to
        existing = await self.find_message_by_client_id(sender_id, client_msg_id)
        if existing is not None:
            return self._same_message(existing, conversation_id), False
        now = now_ms()
        mid = new_id()
        try:
            async with self._write("send_message") as conn:
                row = (await conn.execute(
                    update(conversations).where(
                        conversations.c.id == conversation_id,
                        conversations.c.id.in_(select(members.c.conversation_id).where(
                            members.c.conversation_id == conversation_id,
                            members.c.user_id == sender_id)))
                    .values(last_seq=conversations.c.last_seq + 1, updated_at=now,
                            last_message_id=mid)
                    .returning(conversations.c.last_seq))).first()
                if row is None:
                    raise NotFound("conversation not found")
                seq = row.last_seq
                if reply_to is not None:
                    ok = (await conn.execute(select(messages.c.id).where(
                        messages.c.id == reply_to,
                        messages.c.conversation_id == conversation_id))).first()
                    if ok is None:
                        raise InvalidInput("reply_to is not a message of this conversation",
                                           field="reply_to")
                msg = Message(id=mid, conversation_id=conversation_id, seq=seq,
                              sender_id=sender_id, kind=kind, body=body,
                              client_msg_id=client_msg_id, reply_to=reply_to, created_at=now,
                              edited_at=None, deleted=False)
                await conn.execute(insert(messages).values(
                    id=mid, conversation_id=conversation_id, seq=seq, sender_id=sender_id,
                    kind=kind, body=body, client_msg_id=client_msg_id, reply_to=reply_to,
                    created_at=now, deleted=False))
                await conn.execute(update(members).where(
                    members.c.conversation_id == conversation_id,
                    members.c.user_id == sender_id).values(last_read_seq=seq))
                await self._append(conn, [NewEvent("message.created", {"message": msg.wire()},
                                                   conversation_id=conversation_id)], now)
        except IntegrityError:
            # A concurrent request with the same client_msg_id won; ours rolled back whole.
            existing = await self.find_message_by_client_id(sender_id, client_msg_id)
            if existing is None:
                raise
            return self._same_message(existing, conversation_id), False
        return msg, True

    async def _send_batch(self, batch: list[_SendArgs]) -> list[tuple[Message, bool] | Exception]:
        """Many sends in ONE transaction (PostgreSQL). Row locks are taken in conversation-id
        order and the events are appended last, as everywhere. Any database error fails the
        whole batch; the caller then retries each send on its own."""
        now = now_ms()
        results: list[tuple[Message, bool] | Exception | None] = [None] * len(batch)
        async with self._write("send_message_batch") as conn:
            conv_ids = sorted({a.conversation_id for a in batch})
            # Row locks in id order (no deadlock between batches); last_seq is stable
            # from here to the commit.
            locked = {r.id: r.last_seq for r in (await conn.execute(
                select(conversations.c.id, conversations.c.last_seq)
                .where(conversations.c.id.in_(conv_ids))
                .order_by(conversations.c.id).with_for_update())).all()}
            pairs = {(a.conversation_id, a.sender_id) for a in batch}
            member_of = {(r.conversation_id, r.user_id) for r in (await conn.execute(
                select(members.c.conversation_id, members.c.user_id).where(or_(*[
                    and_(members.c.conversation_id == c, members.c.user_id == u)
                    for c, u in pairs])))).all()}
            keys = {(a.sender_id, a.client_msg_id) for a in batch}
            stored = {(r.sender_id, r.client_msg_id): _message(r) for r in (await conn.execute(
                select(messages).where(or_(*[
                    and_(messages.c.sender_id == u, messages.c.client_msg_id == k)
                    for u, k in keys])))).all()}
            replies = {a.reply_to for a in batch if a.reply_to}
            reply_conv = {r.id: r.conversation_id for r in (await conn.execute(
                select(messages.c.id, messages.c.conversation_id).where(
                    messages.c.id.in_(replies))))} if replies else {}
            fresh: dict[tuple[str, str], int] = {}  # (sender, client_msg_id) -> batch index
            by_conv: dict[str, list[int]] = {}
            for i, a in enumerate(batch):
                key = (a.sender_id, a.client_msg_id)
                if key in stored:
                    try:
                        results[i] = (self._same_message(stored[key], a.conversation_id), False)
                    except Conflict as exc:
                        results[i] = exc
                elif a.conversation_id not in locked or (
                        a.conversation_id, a.sender_id) not in member_of:
                    results[i] = NotFound("conversation not found")
                elif a.reply_to is not None and reply_conv.get(a.reply_to) != a.conversation_id:
                    results[i] = InvalidInput("reply_to is not a message of this conversation",
                                              field="reply_to")
                elif key in fresh:
                    continue  # a repeat within the batch: answered from the first below
                else:
                    fresh[key] = i
                    by_conv.setdefault(a.conversation_id, []).append(i)
            rows: list[dict[str, Any]] = []
            new_events: list[NewEvent] = []
            conv_updates: list[dict[str, Any]] = []
            for conv_id in sorted(by_conv):
                idxs = by_conv[conv_id]
                mids = [new_id() for _ in idxs]
                first = locked[conv_id] + 1
                conv_updates.append({"cid": conv_id, "seq": first + len(idxs) - 1,
                                     "mid": mids[-1]})
                for n, (i, mid) in enumerate(zip(idxs, mids, strict=True)):
                    a = batch[i]
                    msg = Message(id=mid, conversation_id=conv_id, seq=first + n,
                                  sender_id=a.sender_id, kind=a.kind, body=a.body,
                                  client_msg_id=a.client_msg_id, reply_to=a.reply_to,
                                  created_at=now, edited_at=None, deleted=False)
                    results[i] = (msg, True)
                    rows.append({"id": mid, "conversation_id": conv_id, "seq": msg.seq,
                                 "sender_id": a.sender_id, "kind": a.kind, "body": a.body,
                                 "client_msg_id": a.client_msg_id, "reply_to": a.reply_to,
                                 "created_at": now, "deleted": False})
                    new_events.append(NewEvent("message.created", {"message": msg.wire()},
                                               conversation_id=conv_id))
            if rows:
                await conn.execute(
                    update(conversations).where(conversations.c.id == bindparam("cid"))
                    .values(last_seq=bindparam("seq"), updated_at=now,
                            last_message_id=bindparam("mid")), conv_updates)
                await conn.execute(insert(messages), rows)
                reads: dict[tuple[str, str], int] = {}
                for r in rows:
                    reads[(r["conversation_id"], r["sender_id"])] = r["seq"]
                await conn.execute(
                    update(members).where(members.c.conversation_id == bindparam("c"),
                                          members.c.user_id == bindparam("u"),
                                          members.c.last_read_seq < bindparam("s"))
                    .values(last_read_seq=bindparam("s")),
                    [{"c": c, "u": u, "s": seq} for (c, u), seq in reads.items()])
                await self._append(conn, new_events, now)
        for i, a in enumerate(batch):
            if results[i] is None:  # repeat within the batch
                first_result = results[fresh[(a.sender_id, a.client_msg_id)]]
                assert isinstance(first_result, tuple)
                msg = first_result[0]
                results[i] = ((msg, False) if msg.conversation_id == a.conversation_id else
                              Conflict("client_msg_id was already used for another "
                                       "conversation", ErrorCode.CLIENT_MSG_ID_CONFLICT,
                                       field="client_msg_id"))
        return [r for r in results if r is not None]

    @staticmethod
    def _same_message(existing: Message, conversation_id: str) -> Message:
        if existing.conversation_id != conversation_id:
            raise Conflict("client_msg_id was already used for another conversation",
                           ErrorCode.CLIENT_MSG_ID_CONFLICT, field="client_msg_id")
        return existing

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None:
        async with self._read("get_message") as conn:
            row = (await conn.execute(select(messages).where(
                messages.c.id == message_id,
                messages.c.conversation_id == conversation_id))).first()
        return _message(row) if row else None

    async def list_messages(self, conversation_id: str, before: int | None,
                            after: int | None, limit: int) -> tuple[list[Message], bool]:
        q = select(messages).where(messages.c.conversation_id == conversation_id)
        if before is not None:
            q = q.where(messages.c.seq < before)
        if after is not None:
            q = q.where(messages.c.seq > after)
        # With only `before` (or nothing) the newest page is wanted; with `after`, the oldest.
        newest_first = after is None
        q = q.order_by(messages.c.seq.desc() if newest_first else messages.c.seq)\
            .limit(limit + 1)
        async with self._read("list_messages") as conn:
            rows = (await conn.execute(q)).all()
        has_more = len(rows) > limit
        items = [_message(r) for r in rows[:limit]]
        if newest_first:
            items.reverse()
        return items, has_more

    async def change_message(self, conversation_id: str, message_id: str, actor: str,
                             body: str | None) -> Message:
        """Edit (``body`` given) or delete (``body`` None) a message of ``actor``'s."""
        now = now_ms()
        async with self._write("change_message") as conn:
            await self._touch_quiet(conn, conversation_id)
            row = (await conn.execute(select(messages).where(
                messages.c.id == message_id,
                messages.c.conversation_id == conversation_id))).first()
            if row is None:
                raise NotFound("message not found")
            if row.sender_id != actor:
                raise Forbidden("only the sender may change a message")
            if row.deleted:
                if body is None:
                    return _message(row)  # deleting twice is harmless
                raise Conflict("the message was deleted", ErrorCode.MESSAGE_DELETED)
            values: dict[str, Any] = ({"body": body, "edited_at": now} if body is not None
                                      else {"body": None, "deleted": True, "edited_at": now})
            new_row = (await conn.execute(update(messages).where(messages.c.id == message_id)
                                          .values(**values).returning(*messages.c))).one()
            msg = _message(new_row)
            etype = "message.updated" if body is not None else "message.deleted"
            await self._append(conn, [NewEvent(etype, {"message": msg.wire()},
                                               conversation_id=conversation_id)], now)
        return msg

    async def _touch_quiet(self, conn: AsyncConnection, conversation_id: str) -> None:
        """Lock the conversation row without counting it as activity."""
        row = (await conn.execute(
            update(conversations).where(conversations.c.id == conversation_id)
            .values(last_seq=conversations.c.last_seq).returning(conversations.c.id))).first()
        if row is None:
            raise NotFound("conversation not found")

    async def mark_read(self, conversation_id: str, user_id: str, seq: int) -> int | None:
        """Move the read position forward (never back, never past last_seq). Returns the
        new position if it moved, else None."""
        now = now_ms()
        async with self._write("mark_read") as conn:
            await self._touch_quiet(conn, conversation_id)
            last = (await conn.execute(select(conversations.c.last_seq).where(
                conversations.c.id == conversation_id))).scalar_one()
            target = min(seq, last)
            moved = (await conn.execute(update(members).where(
                members.c.conversation_id == conversation_id, members.c.user_id == user_id,
                members.c.last_read_seq < target).values(last_read_seq=target))).rowcount
            if not moved:
                return None
            await self._append(conn, [NewEvent(
                "receipt.read",
                {"conversation_id": conversation_id, "user_id": user_id, "seq": target},
                conversation_id=conversation_id)], now)
        return target

    # --- the event log -------------------------------------------------------------------
    async def append_events(self, new: Sequence[NewEvent]) -> list[StoredEvent]:
        """Append events that change no other table (e.g. call signals)."""
        async with self._write("append_events") as conn:
            return await self._append(conn, new, now_ms())

    async def head_position(self) -> int:
        async with self._read("head_position") as conn:
            pos = (await conn.execute(select(func.max(events.c.pos)))).scalar()
            if pos is None:
                pos = int(await self._meta(conn, "retention_floor") or 0)
        return int(pos)

    async def events_after(self, pos: int, limit: int) -> list[StoredEvent]:
        """The log after ``pos``, for the dispatcher (every audience)."""
        async with self._read("events_after") as conn:
            rows = (await conn.execute(select(events).where(events.c.pos > pos)
                                       .order_by(events.c.pos).limit(limit))).all()
        return [StoredEvent(r.pos, r.type, r.conversation_id, r.user_id, r.payload,
                            r.created_at) for r in rows]

    async def events_for_user(self, user_id: str, after: int, upto: int,
                              limit: int) -> list[StoredEvent]:
        """Events in (after, upto] that ``user_id`` may see, in position order."""
        p = membership_periods
        conv_q = (select(events).join(p, p.c.conversation_id == events.c.conversation_id)
                  .where(p.c.user_id == user_id, events.c.user_id.is_(None),
                         events.c.pos > after, events.c.pos <= upto,
                         events.c.pos >= p.c.from_pos,
                         or_(p.c.to_pos.is_(None), events.c.pos <= p.c.to_pos)))
        own_q = select(events).where(events.c.user_id == user_id, events.c.pos > after,
                                     events.c.pos <= upto)
        u = union_all(conv_q, own_q).subquery()
        q = select(u).order_by(u.c.pos).limit(limit)
        async with self._read("events_for_user") as conn:
            rows = (await conn.execute(q)).all()
        return [StoredEvent(r.pos, r.type, r.conversation_id, r.user_id, r.payload,
                            r.created_at) for r in rows]

    async def membership_periods(self, conversation_id: str) -> list[tuple[str, int, int | None]]:
        async with self._read("membership_periods") as conn:
            rows = (await conn.execute(select(
                membership_periods.c.user_id, membership_periods.c.from_pos,
                membership_periods.c.to_pos).where(
                membership_periods.c.conversation_id == conversation_id))).all()
        return [(r.user_id, r.from_pos, r.to_pos) for r in rows]

    async def _meta(self, conn: AsyncConnection, key: str) -> str | None:
        row = (await conn.execute(select(meta.c.value).where(meta.c.key == key))).first()
        return row.value if row else None

    async def retention_floor(self) -> int:
        """Positions at or below this were pruned: a cursor below it needs a resync."""
        async with self._read("retention_floor") as conn:
            return int(await self._meta(conn, "retention_floor") or 0)

    async def prune_events(self, older_than_ms: int) -> int:
        """Delete events older than the cutoff; returns how many went."""
        async with self._write("prune_events") as conn:
            top = (await conn.execute(select(func.max(events.c.pos)).where(
                events.c.created_at < older_than_ms))).scalar()
            if top is None:
                return 0
            gone = (await conn.execute(events.delete().where(events.c.pos <= top))).rowcount
            if (await self._meta(conn, "retention_floor")) is None:
                await conn.execute(insert(meta).values(key="retention_floor", value=str(top)))
            else:
                await conn.execute(update(meta).where(meta.c.key == "retention_floor")
                                   .values(value=str(top)))
            await conn.execute(membership_periods.delete().where(
                membership_periods.c.to_pos.is_not(None), membership_periods.c.to_pos <= top))
        return int(gone or 0)

    # --- calls ---------------------------------------------------------------------------
    async def create_call(self, call: Call) -> Call:
        now = call.created_at
        try:
            async with self._write("create_call") as conn:
                await self._touch_quiet(conn, call.conversation_id)
                await conn.execute(insert(calls).values(
                    id=call.id, conversation_id=call.conversation_id,
                    initiator_id=call.initiator_id, media=call.media, state=call.state,
                    participants=orjson.dumps([p.wire() for p in call.participants]).decode(),
                    live_key=call.conversation_id, created_at=now))
                await self._append(conn, [NewEvent("call.ringing", {"call": call.wire()},
                                                   conversation_id=call.conversation_id)], now)
        except IntegrityError:
            raise Conflict("a call is already in progress in this conversation",
                           ErrorCode.CALL_IN_PROGRESS) from None
        return call

    async def get_call(self, call_id: str) -> Call | None:
        async with self._read("get_call") as conn:
            row = (await conn.execute(select(calls).where(calls.c.id == call_id))).first()
        return _call(row) if row else None

    async def update_call(self, call_id: str, expected_state: str, new: Call,
                          event_type: str,
                          expected_participants: tuple[Participant, ...] | None = None,
                          ) -> Call | None:
        """Compare-and-set a call's state (and, when given, its participants: two members
        of a group call acting at once must not overwrite each other); append
        ``event_type``. None if the state moved."""
        now = now_ms()
        cond = [calls.c.id == call_id, calls.c.state == expected_state]
        if expected_participants is not None:
            cond.append(calls.c.participants == orjson.dumps(
                [p.wire() for p in expected_participants]).decode())
        async with self._write("update_call") as conn:
            await self._touch_quiet(conn, new.conversation_id)
            done = (await conn.execute(update(calls).where(*cond).values(
                state=new.state,
                participants=orjson.dumps([p.wire() for p in new.participants]).decode(),
                live_key=None if new.state == "ended" else new.conversation_id,
                answered_at=new.answered_at, ended_at=new.ended_at,
                end_reason=new.end_reason))).rowcount
            if not done:
                return None
            await self._append(conn, [NewEvent(event_type, {"call": new.wire()},
                                               conversation_id=new.conversation_id)], now)
        return new

    async def list_calls(self, viewer: str, conversation_id: str | None,
                         limit: int) -> list[Call]:
        q = (select(calls).join(members, and_(members.c.conversation_id ==
                                              calls.c.conversation_id,
                                              members.c.user_id == viewer)))
        if conversation_id is not None:
            q = q.where(calls.c.conversation_id == conversation_id)
        q = q.order_by(calls.c.created_at.desc(), calls.c.id.desc()).limit(limit)
        async with self._read("list_calls") as conn:
            return [_call(r) for r in (await conn.execute(q)).all()]

    async def live_calls(self) -> list[Call]:
        async with self._read("live_calls") as conn:
            rows = (await conn.execute(select(calls).where(calls.c.state != "ended"))).all()
        return [_call(r) for r in rows]

"""Conversations, members, messages and read positions: the rules, not the storage."""

from __future__ import annotations

import re
from typing import Any

from nova.domain.models import Conversation, Message
from nova.domain.ports import EventNotifier, Store
from nova.errors import ErrorCode, Forbidden, InvalidInput, NotFound
from nova.types import MAX_INT64

KIND_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
MAX_TITLE = 200


def _int_or_none(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT64:
        raise InvalidInput(f"{name} must be a non-negative 64-bit integer", field=name)
    return value


def page_size(limit: Any, default: int, maximum: int) -> int:
    """The ``limit`` of a list request: ``default`` when absent, else 1..``maximum``."""
    if limit is None:
        return default
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise InvalidInput(f"limit must be an integer from 1 to {maximum}", field="limit")
    return limit


class ConversationService:
    def __init__(self, store: Store, notifier: EventNotifier, *, max_message_bytes: int,
                 max_group_members: int, max_client_msg_id: int, default_page: int,
                 max_page: int) -> None:
        self.store = store
        self.notifier = notifier
        self.max_message_bytes = max_message_bytes
        self.max_group_members = max_group_members
        self.max_client_msg_id = max_client_msg_id
        self.default_page = default_page
        self.max_page = max_page

    async def _rang(self) -> None:
        # The doorbell: replicas read the log from their position, so the exact last
        # position does not matter; 0 means "something new, go look".
        self.notifier.events_committed(0)

    def page_size(self, limit: Any) -> int:
        return page_size(limit, self.default_page, self.max_page)

    # --- conversations ----------------------------------------------------------------
    async def visible(self, conversation_id: str, viewer: str) -> Conversation:
        conv = await self.store.get_conversation(conversation_id, viewer)
        if conv is None:
            raise NotFound("conversation not found")
        return conv

    async def create(self, creator: str, kind: Any, member_ids: Any,
                     title: Any = None) -> tuple[Conversation, bool]:
        if kind not in ("direct", "group"):
            raise InvalidInput('kind must be "direct" or "group"', field="kind")
        if not isinstance(member_ids, list) or not all(isinstance(m, str) for m in member_ids):
            raise InvalidInput("member_ids must be a list of user ids", field="member_ids")
        others = [m for m in dict.fromkeys(member_ids) if m != creator]
        if kind == "direct":
            if len(others) != 1:
                raise InvalidInput("a direct conversation has exactly one other member",
                                   field="member_ids")
            if title is not None:
                raise InvalidInput("a direct conversation has no title", field="title")
        else:
            title = self._title(title)
            if len(others) + 1 > self.max_group_members:
                raise InvalidInput(f"a group has at most {self.max_group_members} members",
                                   ErrorCode.TOO_MANY_MEMBERS, field="member_ids")
        known = await self.store.existing_user_ids(others)
        missing = [m for m in others if m not in known]
        if missing:
            raise NotFound(f"unknown user: {missing[0]}")
        direct_key = ":".join(sorted([creator, others[0]])) if kind == "direct" else None
        conv, created = await self.store.create_conversation(kind, title, creator, others,
                                                             direct_key)
        if created:
            await self._rang()
            conv = await self.visible(conv.id, creator)
        return conv, created

    @staticmethod
    def _title(title: Any) -> str:
        if not isinstance(title, str) or not title.strip():
            raise InvalidInput("a group needs a non-empty title", field="title")
        if len(title) > MAX_TITLE:
            raise InvalidInput(f"title is at most {MAX_TITLE} characters", field="title")
        return title.strip()

    async def list(self, viewer: str, limit: Any, cursor: str | None
                   ) -> tuple[list[Conversation], str | None]:
        return await self.store.list_conversations(viewer, self.page_size(limit), cursor)

    async def _admin_of_group(self, conversation_id: str, actor: str) -> Conversation:
        conv = await self.visible(conversation_id, actor)
        if conv.kind != "group":
            raise Forbidden("a direct conversation cannot be changed")
        me = conv.member(actor)
        if me is None or me.role != "admin":
            raise Forbidden("only a group admin may do this")
        return conv

    async def rename(self, conversation_id: str, actor: str, title: Any) -> Conversation:
        title = self._title(title)
        await self._admin_of_group(conversation_id, actor)
        await self.store.update_conversation(conversation_id, title)
        await self._rang()
        return await self.visible(conversation_id, actor)

    async def add_members(self, conversation_id: str, actor: str,
                          user_ids: Any) -> Conversation:
        if (not isinstance(user_ids, list) or not user_ids
                or not all(isinstance(u, str) for u in user_ids)):
            raise InvalidInput("user_ids must be a non-empty list of user ids",
                               field="user_ids")
        await self._admin_of_group(conversation_id, actor)
        known = await self.store.existing_user_ids(user_ids)
        missing = [u for u in user_ids if u not in known]
        if missing:
            raise NotFound(f"unknown user: {missing[0]}")
        await self.store.add_members(conversation_id, user_ids, self.max_group_members)
        await self._rang()
        return await self.visible(conversation_id, actor)

    async def remove_member(self, conversation_id: str, actor: str, user_id: str) -> None:
        conv = await self.visible(conversation_id, actor)
        if conv.kind != "group":
            raise Forbidden("nobody leaves a direct conversation")
        if user_id != actor:
            me = conv.member(actor)
            if me is None or me.role != "admin":
                raise Forbidden("only a group admin may remove others")
            if conv.member(user_id) is None:
                raise NotFound("that user is not a member")
        await self.store.remove_member(conversation_id, user_id)
        await self._rang()

    # --- messages -----------------------------------------------------------------------
    def _body(self, body: Any) -> str:
        if not isinstance(body, str):
            raise InvalidInput("body must be a string", field="body")
        if len(body.encode("utf-8", "surrogatepass")) > self.max_message_bytes:
            raise InvalidInput(f"body is larger than {self.max_message_bytes} bytes",
                               ErrorCode.MESSAGE_TOO_LARGE, field="body")
        if not body.strip():
            raise InvalidInput("body is empty", ErrorCode.EMPTY_MESSAGE, field="body")
        try:
            body.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput("body is not valid UTF-8", field="body") from None
        return body

    async def send(self, conversation_id: str, sender: str, client_msg_id: Any, body: Any,
                   kind: Any = None, reply_to: Any = None) -> tuple[Message, bool]:
        """Store a message; ``(message, created)``. Acknowledge only after this returns."""
        if (not isinstance(client_msg_id, str) or not client_msg_id
                or len(client_msg_id) > self.max_client_msg_id):
            raise InvalidInput(f"client_msg_id must be a string of 1-{self.max_client_msg_id}"
                               " characters", field="client_msg_id")
        text = self._body(body)
        kind = "text" if kind is None else kind
        if not isinstance(kind, str) or not KIND_RE.match(kind):
            raise InvalidInput("kind must be a short lower-case word", field="kind")
        if reply_to is not None and not isinstance(reply_to, str):
            raise InvalidInput("reply_to must be a message id", field="reply_to")
        msg, created = await self.store.send_message(conversation_id, sender, kind, text,
                                                     client_msg_id, reply_to)
        if created:
            await self._rang()
        return msg, created

    async def history(self, conversation_id: str, viewer: str, before: Any, after: Any,
                      limit: Any) -> tuple[list[Message], bool]:
        before = _int_or_none(before, "before")
        after = _int_or_none(after, "after")
        size = self.page_size(limit)
        if await self.store.member_role(conversation_id, viewer) is None:
            raise NotFound("conversation not found")
        return await self.store.list_messages(conversation_id, before, after, size)

    async def edit(self, conversation_id: str, message_id: str, actor: str,
                   body: Any) -> Message:
        text = self._body(body)
        await self._member(conversation_id, actor)
        msg = await self.store.change_message(conversation_id, message_id, actor, text)
        await self._rang()
        return msg

    async def delete(self, conversation_id: str, message_id: str, actor: str) -> Message:
        await self._member(conversation_id, actor)
        msg = await self.store.change_message(conversation_id, message_id, actor, None)
        await self._rang()
        return msg

    async def _member(self, conversation_id: str, user_id: str) -> None:
        if await self.store.member_role(conversation_id, user_id) is None:
            raise NotFound("conversation not found")

    async def mark_read(self, conversation_id: str, user_id: str, seq: Any) -> None:
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_INT64:
            raise InvalidInput("seq must be a non-negative integer", field="seq")
        await self._member(conversation_id, user_id)
        if await self.store.mark_read(conversation_id, user_id, seq) is not None:
            await self._rang()


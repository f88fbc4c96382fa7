"""Domain models (frozen dataclasses) and their wire form, which PROTOCOL.md fixes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nova.types import iso


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    display_name: str
    created_at: int
    disabled: bool = False
    last_seen_at: int | None = None

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "display_name": self.display_name,
                "created_at": iso(self.created_at)}


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    role: str
    last_read_seq: int

    def wire(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "role": self.role, "last_read_seq": self.last_read_seq}


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    conversation_id: str
    seq: int
    sender_id: str
    kind: str
    body: str | None
    client_msg_id: str
    reply_to: str | None
    created_at: int
    edited_at: int | None
    deleted: bool

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "conversation_id": self.conversation_id, "seq": self.seq,
            "sender_id": self.sender_id, "kind": self.kind,
            "body": None if self.deleted else self.body,
            "client_msg_id": self.client_msg_id, "reply_to": self.reply_to,
            "created_at": iso(self.created_at), "edited_at": iso(self.edited_at),
            "deleted": self.deleted,
        }


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    kind: str
    title: str | None
    members: tuple[Member, ...]
    last_seq: int
    created_at: int
    updated_at: int
    last_message: Message | None = None
    unread_count: int = 0

    def member(self, user_id: str) -> Member | None:
        for m in self.members:
            if m.user_id == user_id:
                return m
        return None

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "title": self.title,
            "members": [m.wire() for m in self.members], "last_seq": self.last_seq,
            "last_message": self.last_message.wire() if self.last_message else None,
            "unread_count": self.unread_count,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
        }

    def shared_wire(self) -> dict[str, Any]:
        """The form sent in events to every member: no per-reader fields."""
        out = self.wire()
        out.pop("unread_count")
        return out


@dataclass(frozen=True, slots=True)
class Participant:
    user_id: str
    state: str  # invited | ringing | joined | declined | left

    def wire(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "state": self.state}


@dataclass(frozen=True, slots=True)
class Call:
    id: str
    conversation_id: str
    initiator_id: str
    media: str
    state: str  # ringing | active | ended
    participants: tuple[Participant, ...]
    created_at: int
    answered_at: int | None = None
    ended_at: int | None = None
    end_reason: str | None = None

    def participant(self, user_id: str) -> Participant | None:
        for p in self.participants:
            if p.user_id == user_id:
                return p
        return None

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "conversation_id": self.conversation_id,
            "initiator_id": self.initiator_id, "media": self.media, "state": self.state,
            "participants": [p.wire() for p in self.participants],
            "created_at": iso(self.created_at), "answered_at": iso(self.answered_at),
            "ended_at": iso(self.ended_at), "end_reason": self.end_reason,
        }


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append to the durable log. Its audience is the members of
    ``conversation_id`` at its position, or only ``user_id`` when that is set."""

    type: str
    payload: dict[str, Any]
    conversation_id: str | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    pos: int
    type: str
    conversation_id: str | None
    user_id: str | None
    payload: str  # the event object as JSON text, serialized once at append time
    created_at: int


@dataclass(frozen=True, slots=True)
class Tokens:
    user: User
    access_token: str
    refresh_token: str
    expires_in: int

    def wire(self) -> dict[str, Any]:
        return {"user": self.user.wire(), "access_token": self.access_token,
                "refresh_token": self.refresh_token, "token_type": "Bearer",
                "expires_in": self.expires_in}


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None = None
    has_more: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

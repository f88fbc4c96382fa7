"""Wire models for the OpenAPI schema and request parsing (PROTOCOL.md fixes the names).

Requests are parsed strictly (a number is not a string); the domain checks the rules
(lengths, sizes, who may do what) and names the stable error ``code``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RegisterIn(_In):
    username: StrictStr = Field(examples=["alice"], description="3-32 of [a-z0-9_.-]")
    password: StrictStr = Field(description="at least 8 characters")
    display_name: StrictStr | None = None


class LoginIn(_In):
    username: StrictStr
    password: StrictStr


class RefreshIn(_In):
    refresh_token: StrictStr


class ConversationIn(_In):
    kind: Literal["direct", "group"]
    member_ids: list[StrictStr]
    title: StrictStr | None = None


class ConversationPatch(_In):
    title: StrictStr


class MembersIn(_In):
    user_ids: list[StrictStr]


class MessageIn(_In):
    client_msg_id: StrictStr = Field(description="client-chosen, at most 64 characters, "
                                     "unique per sender: a retry returns the same message")
    body: StrictStr = Field(description="at most 16 KiB of UTF-8 (413 message_too_large)")
    kind: StrictStr | None = Field(default=None, examples=["text"])
    reply_to: StrictStr | None = None


class MessagePatch(_In):
    body: StrictStr


class ReadIn(_In):
    seq: StrictInt = Field(ge=0)


class CallIn(_In):
    conversation_id: StrictStr
    media: Literal["audio", "video"]


# --- responses (documentation only: handlers return the domain's wire dicts) -------------
class UserOut(BaseModel):
    id: str
    username: str
    display_name: str
    created_at: str


class TokensOut(BaseModel):
    user: UserOut
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"]
    expires_in: int


class MemberOut(BaseModel):
    user_id: str
    role: Literal["admin", "member"]
    last_read_seq: int


class MessageOut(BaseModel):
    id: str
    conversation_id: str
    seq: int
    sender_id: str
    kind: str
    body: str | None
    client_msg_id: str
    reply_to: str | None
    created_at: str
    edited_at: str | None
    deleted: bool


class ConversationOut(BaseModel):
    id: str
    kind: Literal["direct", "group"]
    title: str | None
    members: list[MemberOut]
    last_seq: int
    last_message: MessageOut | None
    unread_count: int
    created_at: str
    updated_at: str


class UserList(BaseModel):
    items: list[UserOut]


class ConversationList(BaseModel):
    items: list[ConversationOut]
    next_cursor: str | None


class MessageList(BaseModel):
    items: list[MessageOut]
    has_more: bool


class ParticipantOut(BaseModel):
    user_id: str
    state: str


class CallOut(BaseModel):
    id: str
    conversation_id: str
    initiator_id: str
    media: Literal["audio", "video"]
    state: Literal["ringing", "active", "ended"]
    participants: list[ParticipantOut]
    created_at: str
    answered_at: str | None
    ended_at: str | None
    end_reason: Literal["declined", "missed", "cancelled", "hangup", "failed"] | None


class CallList(BaseModel):
    items: list[CallOut]


class IceServer(BaseModel):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceServersOut(BaseModel):
    ice_servers: list[IceServer]
    ttl_seconds: int


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="stable machine-readable error code")


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]

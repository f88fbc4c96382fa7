"""Shared aliases and small helpers: ids, time in milliseconds, RFC 3339 formatting."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import NewType

UserId = NewType("UserId", str)
ConversationId = NewType("ConversationId", str)
MessageId = NewType("MessageId", str)
CallId = NewType("CallId", str)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A 32-character id, sortable by creation time (48-bit ms clock + 80 random bits)."""
    return f"{now_ms():012x}{secrets.token_hex(10)}"


def iso(ms: int | None) -> str | None:
    """RFC 3339 UTC with milliseconds: ``2026-11-26T03:19:19.123Z``."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"

"""Shared aliases and small helpers: ids, time in milliseconds, RFC 3339 formatting."""

from __future__ import annotations

import secrets
import time
from typing import NewType

# Positions, seqs and cursors are signed 64-bit in both databases.
MAX_INT64 = 2**63 - 1

UserId = NewType("UserId", str)
ConversationId = NewType("ConversationId", str)
MessageId = NewType("MessageId", str)
CallId = NewType("CallId", str)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A 32-character id, sortable by creation time (48-bit ms clock + 80 random bits)."""
    return f"{now_ms():012x}{secrets.token_hex(10)}"


# (second, "YYYY-MM-DDTHH:MM:SS.") of the last call, swapped as one tuple so that threads
# (the SQLite writer formats timestamps too) never see a half-updated cache.
_last_second: tuple[int, str] = (-1, "")


def iso(ms: int | None) -> str | None:
    """RFC 3339 UTC with milliseconds: ``2026-11-26T03:19:19.123Z``."""
    global _last_second
    if ms is None:
        return None
    second, millis = divmod(ms, 1000)
    cached = _last_second
    if cached[0] != second:  # hot path: many timestamps share their second
        cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)))
        _last_second = cached
    return f"{cached[1]}{millis:03d}Z"

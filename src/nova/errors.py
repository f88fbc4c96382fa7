"""Nova's error model: one exception family, stable machine-readable codes.

Only ``nova.http.errors`` knows HTTP statuses; the gateway turns the same errors into
``error`` frames. ``ErrorCode`` values are part of the client contract (PROTOCOL.md).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable snake_case error codes sent to clients."""

    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    INVALID_CREDENTIALS = "invalid_credentials"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REUSED = "token_reused"
    ACCOUNT_DISABLED = "account_disabled"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    USERNAME_TAKEN = "username_taken"
    WEAK_PASSWORD = "weak_password"
    INVALID_USERNAME = "invalid_username"
    MESSAGE_TOO_LARGE = "message_too_large"
    EMPTY_MESSAGE = "empty_message"
    REQUEST_TOO_LARGE = "request_too_large"
    INVALID_CURSOR = "invalid_cursor"
    CONFLICT = "conflict"
    CLIENT_MSG_ID_CONFLICT = "client_msg_id_conflict"
    MESSAGE_DELETED = "message_deleted"
    TOO_MANY_MEMBERS = "too_many_members"
    CALL_IN_PROGRESS = "call_in_progress"
    CALL_ENDED = "call_ended"
    CALL_NOT_RINGING = "call_not_ringing"
    SIGNAL_TOO_LARGE = "signal_too_large"
    RATE_LIMITED = "rate_limited"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    UNKNOWN_FRAME = "unknown_frame"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal_error"


class NovaError(Exception):
    """Base of every error Nova reports to a client."""

    default_code = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None, *,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.field = field


class InvalidInput(NovaError):
    """The request is well-formed HTTP but its content breaks a rule (422 or 413)."""

    default_code = ErrorCode.INVALID_REQUEST


class Unauthorized(NovaError):
    """No valid credentials: missing, malformed, expired or revoked (401)."""

    default_code = ErrorCode.UNAUTHORIZED


class Forbidden(NovaError):
    """The caller can see the resource but may not do this to it (403)."""

    default_code = ErrorCode.FORBIDDEN


class NotFound(NovaError):
    """No such resource, or one the caller may not see (404: existence does not leak)."""

    default_code = ErrorCode.NOT_FOUND


class Conflict(NovaError):
    """The request conflicts with the current state (409)."""

    default_code = ErrorCode.CONFLICT


class RateLimited(NovaError):
    """Too many requests; retry after ``retry_after`` seconds (429)."""

    default_code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, retry_after: float, code: ErrorCode | None = None) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after


class Unavailable(NovaError):
    """A dependency (database, Redis, TURN) cannot be reached (503)."""

    default_code = ErrorCode.UNAVAILABLE


__all__ = [
    "Conflict",
    "ErrorCode",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "NovaError",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
]

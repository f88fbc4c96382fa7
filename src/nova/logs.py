"""Structured logging: one JSON object per line, a request id per request, secrets redacted.

``configure_logging(level, fmt)`` installs ONE handler on the root logger (idempotent) with
``RedactingFilter`` and a JSON (or plain text) formatter. Each line carries ``ts``, ``level``,
``logger``, ``msg``, ``request_id`` (from the ``request_id`` contextvar that the HTTP
middleware sets) and every ``extra={...}`` field. Secrets and message bodies never reach a line:
``extra`` keys such as ``password``, ``token``, ``authorization``, ``body`` are masked (also in
nested dicts), and ``access_token=…``, ``Bearer …``, ``"password": "…"`` are masked in messages
and exception text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "configure_logging",
    "redact_text",
    "redact_value",
    "request_id",
]

REDACTED = "[REDACTED]"

#: The current request's id ("-" outside a request); set by ObservabilityMiddleware.
request_id: ContextVar[str | None] = ContextVar("nova_request_id", default=None)

# A key is sensitive if it CONTAINS one of these (case-insensitive) ...
_SENSITIVE_PARTS = (
    "password", "passwd", "secret", "token", "authorization", "credential", "cookie",
    "api_key", "apikey", "private_key", "signature",
)
# ... or IS one of these / ends with ``_body`` (message content is private).
_SENSITIVE_KEYS = frozenset({"body", "content", "text", "sdp", "candidate", "data", "auth"})

_KEY_ALT = (
    r"access_token|refresh_token|id_token|token|password|passwd|secret|api_key|apikey|"
    r"credential|client_secret|shared_secret|turn_secret|signature|authorization"
)
# key=value in query strings / logfmt, key: value, "key": "value" (JSON).
_KV_RE = re.compile(
    rf"""(?ix)
    (?P<key>["']?(?:[a-z0-9_]*?(?:{_KEY_ALT}))["']?)   # key, maybe quoted, maybe prefixed
    (?P<sep>\s*[=:]\s*)
    (?P<value>"[^"]*"|'[^']*'|[^\s&,;"'}}\]]+)
    """
)
_BEARER_RE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
# user:password@ in URLs (database, redis).
_URL_CRED_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^@\s/]+@")

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


def _is_sensitive_key(key: str) -> bool:
    k = key.lower()
    return k in _SENSITIVE_KEYS or k.endswith("_body") or any(p in k for p in _SENSITIVE_PARTS)


def redact_text(text: str) -> str:
    """Mask credentials inside free text (messages, exception traces, URLs)."""
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _URL_CRED_RE.sub(lambda m: f"{m.group(1)}:{REDACTED}@", text)

    def _kv(m: re.Match[str]) -> str:
        value = m.group("value")
        quote = value[0] if value[:1] in "\"'" else ""
        return f"{m.group('key')}{m.group('sep')}{quote}{REDACTED}{quote}"

    return _KV_RE.sub(_kv, text)


def redact_value(key: str, value: Any) -> Any:
    """The value to log for ``key``: masked if the key is sensitive, recursing into containers."""
    if _is_sensitive_key(key):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value("", v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


class RedactingFilter(logging.Filter):
    """Masks secrets in a record before any formatter sees it (attach to the handler).

    The message is rendered once (``msg % args``), redacted, and stored back with no args;
    ``extra`` fields are masked by key; exception text is rendered and redacted too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact_text(message)
        record.args = None
        for key in list(vars(record)):
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                setattr(record, key, redact_value(key, getattr(record, key)))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        record.exc_info = None  # exc_text carries it, already redacted
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in vars(record).items()
        if k not in _STANDARD_ATTRS and not k.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> str:
    ts = datetime.fromtimestamp(record.created, tz=UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        for key, value in _extras(record).items():
            if key not in line:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Human-readable: ``ts level logger [request_id] msg key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        rid = request_id.get() or "-"
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name} [{rid}] "
        line += record.getMessage() + (f" {extras}" if extras else "")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class _NovaHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker type, so that configure_logging replaces its own handler and nothing else."""


def configure_logging(
    level: str = "info",
    fmt: Literal["json", "text"] = "json",
    *,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record (Nova's, uvicorn's, libraries') through one redacting handler.

    Idempotent: a second call replaces the handler it installed before. uvicorn's own
    handlers are removed so its records propagate here (run uvicorn with ``log_config=None``);
    ``uvicorn.access`` is silenced because ObservabilityMiddleware writes the access log
    without query strings (which may carry ``?access_token=``).
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r}")
    handler = _NovaHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _NovaHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)

    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
        lg.setLevel(logging.NOTSET)
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    return handler

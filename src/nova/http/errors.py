"""The one place that knows HTTP statuses: NovaError → RFC 9457 problem document."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from nova.errors import (
    Conflict,
    ErrorCode,
    Forbidden,
    InvalidInput,
    NotFound,
    NovaError,
    RateLimited,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger("nova.http")

_STATUS: list[tuple[type[NovaError], int]] = [
    (InvalidInput, 422), (Unauthorized, 401), (Forbidden, 403), (NotFound, 404),
    (Conflict, 409), (RateLimited, 429), (Unavailable, 503),
]
_CODE_STATUS = {ErrorCode.MESSAGE_TOO_LARGE: 413, ErrorCode.REQUEST_TOO_LARGE: 413,
                ErrorCode.SIGNAL_TOO_LARGE: 413}
_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
           415: "Unsupported Media Type", 422: "Unprocessable Content",
           429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}


def status_of(exc: NovaError) -> int:
    if exc.code in _CODE_STATUS:
        return _CODE_STATUS[exc.code]
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def problem(status: int, code: str, detail: str, *, field: str | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://nova.dev/problems/{code.replace('_', '-')}",
        "title": _TITLES.get(status, "Error"), "status": status, "detail": detail,
        "code": code,
    }
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers,
                        media_type="application/problem+json")


async def _nova_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, NovaError)
    status = status_of(exc)
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))}
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    if status >= 500:
        log.warning("dependency failure: %s", exc.message)
    return problem(status, exc.code, exc.message, field=exc.field, headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str | None:
    # loc starts with where the value came from ("body", "query", ...); a field may itself
    # be called "body" (a message's text), so only the first element is the location.
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    return ".".join(str(p) for p in loc) or None


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    field = _field_of(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return problem(422, ErrorCode.INVALID_REQUEST, "the body is not valid JSON")
    if first.get("type") == "missing" and field is None:
        return problem(422, ErrorCode.INVALID_REQUEST, "a JSON body is required")
    msg = str(first.get("msg", "invalid value"))
    detail = f"{field}: {msg}" if field else msg
    return problem(422, ErrorCode.INVALID_REQUEST, detail, field=field)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: ErrorCode.NOT_FOUND, 401: ErrorCode.UNAUTHORIZED,
            405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return problem(exc.status_code, str(code), str(exc.detail), headers=exc.headers)


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, ErrorCode.INTERNAL, "an internal error occurred")


def install(app: FastAPI) -> None:
    app.add_exception_handler(NovaError, _nova_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

"""Request-scoped helpers: the services of the app, and the caller's identity."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nova import metrics
from nova.domain.accounts import Principal
from nova.errors import RateLimited

if TYPE_CHECKING:
    from nova.app import Services

_bearer = HTTPBearer(auto_error=False, description="Access token from /api/v1/auth/*")


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    token = creds.credentials if creds is not None else None
    who = await services(request).accounts.authenticate(token)
    limiter = getattr(request.app.state, "user_limiter", None)
    if limiter is not None:
        wait = await limiter.hit(f"user:{who.user_id}")
        if wait is not None:
            metrics.record_rate_limited("user")
            raise RateLimited("too many requests for this user", retry_after=wait)
    return who


Caller = Annotated[Principal, Depends(principal)]

"""Accounts and tokens: /api/v1/auth/*."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from nova.http.deps import Caller, services
from nova.http.responses import Json, errors
from nova.http.schemas import LoginIn, RefreshIn, RegisterIn, TokensOut

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


@router.post("/register", status_code=201, response_model=None,
             responses={201: {"model": TokensOut}, **errors(409, 422)})
async def register(body: RegisterIn, request: Request) -> Json:
    """Create an account and a session. 409 `username_taken`, 422 `weak_password`."""
    tokens = await services(request).accounts.register(body.username, body.password,
                                                       body.display_name)
    return Json(tokens.wire(), status_code=201)


@router.post("/login", response_model=None,
             responses={200: {"model": TokensOut}, **errors(401, 422)})
async def login(body: LoginIn, request: Request) -> Json:
    """Start a session. A wrong pair is 401 `invalid_credentials`."""
    tokens = await services(request).accounts.login(body.username, body.password)
    return Json(tokens.wire())


@router.post("/refresh", response_model=None,
             responses={200: {"model": TokensOut}, **errors(401, 422)})
async def refresh(body: RefreshIn, request: Request) -> Json:
    """Trade a refresh token for a new pair; the old one is spent. Reusing a spent token is
    401 `token_reused` and revokes the whole session."""
    tokens = await services(request).accounts.refresh(body.refresh_token)
    return Json(tokens.wire())


@router.post("/logout", status_code=204, response_class=Response, responses=errors(401))
async def logout(caller: Caller, request: Request) -> Response:
    """End this session: its refresh token is revoked."""
    await services(request).accounts.logout(caller)
    return Response(status_code=204)

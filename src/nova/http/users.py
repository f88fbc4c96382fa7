"""Users: /api/v1/users*."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from nova.http.deps import Caller, services
from nova.http.responses import Json, errors
from nova.http.schemas import UserList, UserOut

router = APIRouter(prefix="/api/v1/users", tags=["users"])


@router.get("/me", response_model=None, responses={200: {"model": UserOut}, **errors(401)})
async def me(caller: Caller, request: Request) -> Json:
    user = await services(request).accounts.get_user(caller.user_id)
    return Json(user.wire())


@router.delete("/me", status_code=204, response_class=Response, responses=errors(401))
async def close_me(caller: Caller, request: Request) -> Response:
    """Close the caller's own account: it is disabled (no more logins, the username stays
    taken) and every session's refresh token is revoked; access tokens stop working. Sent
    messages stay in their conversations. Used by `nova verify` to clean up its probe
    account; an operator re-enables an account only through the database."""
    await services(request).accounts.close_account(caller)
    return Response(status_code=204)


@router.get("", response_model=None, responses={200: {"model": UserList}, **errors(401, 422)})
async def search(caller: Caller, request: Request,
                 q: str = Query("", max_length=64, description="username prefix"),
                 limit: int | None = Query(None, description="1-200, default 50")) -> Json:
    svc = services(request)
    size = svc.conversations.page_size(limit)
    users = await svc.accounts.search(q, size)
    return Json({"items": [u.wire() for u in users]})


@router.get("/{user_id}", response_model=None,
            responses={200: {"model": UserOut}, **errors(401, 404)})
async def get_user(user_id: str, caller: Caller, request: Request) -> Json:
    user = await services(request).accounts.get_user(user_id)
    return Json(user.wire())

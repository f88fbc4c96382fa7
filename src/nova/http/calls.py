"""Calls: /api/v1/calls* (PROTOCOL.md "Calls"). Signaling itself goes over the WebSocket
(``call.signal``); these routes start, answer, end and list calls and hand out ICE servers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from nova.errors import ErrorCode, InvalidInput
from nova.http.deps import Caller, services
from nova.http.responses import Json, errors
from nova.http.schemas import CallIn, CallList, CallOut, IceServersOut

router = APIRouter(prefix="/api/v1/calls", tags=["calls"])


def _calls(request: Request) -> Any:
    calls = services(request).calls
    if calls is None:
        raise InvalidInput("calls are not enabled", ErrorCode.INVALID_REQUEST)
    return calls


# Declared before /{call_id} so that "ice-servers" is never taken for a call id.
@router.get("/ice-servers", response_model=None,
            responses={200: {"model": IceServersOut}, **errors(401)})
async def get_ice_servers(caller: Caller, request: Request) -> Json:
    """STUN URLs and TURN URLs with TURN REST credentials valid for ``ttl_seconds``."""
    return Json(_calls(request).ice_servers(caller.user_id))


@router.post("", status_code=201, response_model=None,
             responses={201: {"model": CallOut}, **errors(401, 404, 409, 422)})
async def start_call(body: CallIn, caller: Caller, request: Request) -> Json:
    """Rings every other member's devices (``call.ringing``). One live call per
    conversation: a second start is 409 ``call_in_progress``."""
    call = await _calls(request).start_call(caller.user_id, body.conversation_id, body.media)
    return Json(call.wire(), status_code=201)


@router.get("", response_model=None,
            responses={200: {"model": CallList}, **errors(401, 404, 422)})
async def list_calls(caller: Caller, request: Request,
                     conversation_id: str | None = Query(None, max_length=64),
                     limit: int | None = Query(None, description="1-200, default 50")) -> Json:
    """Call history, newest first."""
    items = await _calls(request).list_calls(caller.user_id, conversation_id, limit)
    return Json({"items": [c.wire() for c in items]})


@router.get("/{call_id}", response_model=None,
            responses={200: {"model": CallOut}, **errors(401, 404)})
async def get_call(call_id: str, caller: Caller, request: Request) -> Json:
    call = await _calls(request).get(call_id, caller.user_id)
    return Json(call.wire())


@router.post("/{call_id}/accept", response_model=None,
             responses={200: {"model": CallOut}, **errors(401, 404, 409)})
async def accept(call_id: str, caller: Caller, request: Request) -> Json:
    """The call becomes ``active``; the caller and the callee's other devices get
    ``call.accepted``. 409 ``call_not_ringing`` / ``call_ended`` otherwise."""
    call = await _calls(request).accept(call_id, caller.user_id)
    return Json(call.wire())


@router.post("/{call_id}/decline", response_model=None,
             responses={200: {"model": CallOut}, **errors(401, 404, 409)})
async def decline(call_id: str, caller: Caller, request: Request) -> Json:
    call = await _calls(request).decline(call_id, caller.user_id)
    return Json(call.wire())


@router.post("/{call_id}/hangup", response_model=None,
             responses={200: {"model": CallOut}, **errors(401, 404, 409)})
async def hangup(call_id: str, caller: Caller, request: Request) -> Json:
    """The caller while ringing: ``cancelled``; otherwise the call ends (``hangup``) when
    fewer than two participants remain."""
    call = await _calls(request).hangup(call_id, caller.user_id)
    return Json(call.wire())

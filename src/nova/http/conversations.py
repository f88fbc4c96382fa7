"""Conversations and members: /api/v1/conversations*."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from nova.http.deps import Caller, services
from nova.http.responses import Json, errors
from nova.http.schemas import (
    ConversationIn,
    ConversationList,
    ConversationOut,
    ConversationPatch,
    MembersIn,
)

router = APIRouter(prefix="/api/v1/conversations", tags=["conversations"])


@router.post("", status_code=201, response_model=None,
             responses={201: {"model": ConversationOut},
                        200: {"model": ConversationOut,
                              "description": "the existing direct conversation of the pair"},
                        **errors(401, 404, 422)})
async def create(body: ConversationIn, caller: Caller, request: Request) -> Json:
    """Direct: idempotent per pair (200 with the existing one). Group: the creator is admin."""
    conv, created = await services(request).conversations.create(
        caller.user_id, body.kind, body.member_ids, body.title)
    return Json(conv.wire(), status_code=201 if created else 200)


@router.get("", response_model=None,
            responses={200: {"model": ConversationList}, **errors(401, 422)})
async def list_conversations(caller: Caller, request: Request,
                             limit: int | None = Query(None, description="1-200, default 50"),
                             cursor: str | None = Query(None, max_length=200)) -> Json:
    """Most recently active first."""
    items, next_cursor = await services(request).conversations.list(caller.user_id, limit,
                                                                    cursor)
    return Json({"items": [c.wire() for c in items], "next_cursor": next_cursor})


@router.get("/{conversation_id}", response_model=None,
            responses={200: {"model": ConversationOut}, **errors(401, 404)})
async def get_conversation(conversation_id: str, caller: Caller, request: Request) -> Json:
    conv = await services(request).conversations.visible(conversation_id, caller.user_id)
    return Json(conv.wire())


@router.patch("/{conversation_id}", response_model=None,
              responses={200: {"model": ConversationOut}, **errors(401, 403, 404, 422)})
async def rename(conversation_id: str, body: ConversationPatch, caller: Caller,
                 request: Request) -> Json:
    """Group admins only."""
    conv = await services(request).conversations.rename(conversation_id, caller.user_id,
                                                        body.title)
    return Json(conv.wire())


@router.post("/{conversation_id}/members", response_model=None,
             responses={200: {"model": ConversationOut}, **errors(401, 403, 404, 422)})
async def add_members(conversation_id: str, body: MembersIn, caller: Caller,
                      request: Request) -> Json:
    """Group admins only."""
    conv = await services(request).conversations.add_members(conversation_id, caller.user_id,
                                                             body.user_ids)
    return Json(conv.wire())


@router.delete("/{conversation_id}/members/{user_id}", status_code=204,
               response_class=Response, responses=errors(401, 403, 404))
async def remove_member(conversation_id: str, user_id: str, caller: Caller,
                        request: Request) -> Response:
    """An admin removes a member, or a member leaves."""
    await services(request).conversations.remove_member(conversation_id, caller.user_id,
                                                        user_id)
    return Response(status_code=204)

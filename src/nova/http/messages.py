"""Messages and read positions: /api/v1/conversations/{id}/messages*, /read."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from nova import metrics
from nova.http.deps import Caller, services
from nova.http.responses import Json, errors
from nova.http.schemas import MessageIn, MessageList, MessageOut, MessagePatch, ReadIn

router = APIRouter(prefix="/api/v1/conversations/{conversation_id}", tags=["messages"])


@router.post("/messages", status_code=201, response_model=None,
             responses={201: {"model": MessageOut},
                        200: {"model": MessageOut,
                              "description": "a retry: the message stored earlier"},
                        **errors(401, 404, 409, 413, 422)})
async def send(conversation_id: str, body: MessageIn, caller: Caller,
               request: Request) -> Json:
    """Acknowledged (201) only after the message is durably stored. The same
    `client_msg_id` again returns 200 and the same message."""
    msg, created = await services(request).conversations.send(
        conversation_id, caller.user_id, body.client_msg_id, body.body, body.kind,
        body.reply_to)
    if created:
        metrics.MESSAGES_SENT.labels(transport="http").inc()
    return Json(msg.wire(), status_code=201 if created else 200)


@router.get("/messages", response_model=None,
            responses={200: {"model": MessageList}, **errors(401, 404, 422)})
async def history(conversation_id: str, caller: Caller, request: Request,
                  before: int | None = Query(None, ge=0, description="seq, exclusive"),
                  after: int | None = Query(None, ge=0, description="seq, exclusive"),
                  limit: int | None = Query(None, description="1-200, default 50")) -> Json:
    """Ascending by seq. With `after`, the oldest page after it; otherwise the newest page
    (before `before`, when given)."""
    items, has_more = await services(request).conversations.history(
        conversation_id, caller.user_id, before, after, limit)
    return Json({"items": [m.wire() for m in items], "has_more": has_more})


@router.patch("/messages/{message_id}", response_model=None,
              responses={200: {"model": MessageOut}, **errors(401, 403, 404, 409, 413, 422)})
async def edit(conversation_id: str, message_id: str, body: MessagePatch, caller: Caller,
               request: Request) -> Json:
    """The sender only; sets `edited_at`."""
    msg = await services(request).conversations.edit(conversation_id, message_id,
                                                     caller.user_id, body.body)
    return Json(msg.wire())


@router.delete("/messages/{message_id}", status_code=204, response_class=Response,
               responses=errors(401, 403, 404))
async def delete(conversation_id: str, message_id: str, caller: Caller,
                 request: Request) -> Response:
    """The sender only; the message stays as a tombstone (`deleted: true, body: null`)."""
    await services(request).conversations.delete(conversation_id, message_id, caller.user_id)
    return Response(status_code=204)


@router.post("/read", status_code=204, response_class=Response,
             responses=errors(401, 404, 422))
async def mark_read(conversation_id: str, body: ReadIn, caller: Caller,
                    request: Request) -> Response:
    """Move the caller's read position forward (never back)."""
    await services(request).conversations.mark_read(conversation_id, caller.user_id, body.seq)
    return Response(status_code=204)

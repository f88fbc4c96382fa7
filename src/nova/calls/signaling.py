"""Call lifecycle and signaling relay: the rules, not the storage or the transport.

States (PROTOCOL.md "Calls"): ``ringing → active → ended`` or ``ringing → ended``, with
``end_reason`` one of ``declined``, ``missed``, ``cancelled``, ``hangup``, ``failed``.
Participant states: ``joined`` (the initiator at start, a callee once it accepts),
``ringing``, ``declined``, ``left`` and ``missed`` (still ringing when the call ended or
when the ring timed out for it).

Every change is one compare-and-set in the store (``update_call``) that also appends ONE
durable event carrying the whole call, to every member of the conversation:

- ``call.ringing``  on start (``store.create_call``);
- ``call.accepted`` when a callee accepts (the caller and the callee's other devices learn
  that the call was answered, and stop ringing);
- ``call.declined`` when a participant declines or leaves and the call goes on (groups);
- ``call.ended``    exactly once, when the call ends, whatever the reason.

So a client replaces its copy of the call with ``event.call`` on every ``call.*`` event.
Signals (SDP, ICE candidates) are durable ``call.signal`` events addressed to one user's
devices, so a device that reconnects with ``since=`` gets the ones it missed.

The supervisor (``start``/``stop``) ends calls that rang too long (``missed``) and active
calls whose participant has had no socket on any replica for longer than the grace period
(``failed``). Every replica may run it: the compare-and-set lets one of them win.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from nova import metrics
from nova.calls.turn import ice_servers, validate_ice_url
from nova.domain.conversations import page_size
from nova.domain.models import Call, NewEvent, Participant
from nova.domain.ports import EventNotifier, SocketCounter, Store
from nova.errors import Conflict, ErrorCode, InvalidInput, NotFound, NovaError
from nova.types import new_id, now_ms

__all__ = ["MEDIA", "CallService"]

log = logging.getLogger("nova.calls")

MEDIA = ("audio", "video")
_IN_CALL = ("joined", "ringing")  # participant states that may send and receive signals
_CAS_ATTEMPTS = 8


class CallService:
    """Start, answer, decline, hang up and list calls; relay signals; supervise timeouts."""

    def __init__(self, store: Store, notifier: EventNotifier, sockets: SocketCounter, *,
                 ring_timeout_seconds: float, disconnect_grace_seconds: float,
                 signal_max_bytes: int, stun_urls: list[str], turn_urls: list[str],
                 turn_secret: str, turn_ttl_seconds: int, default_page: int = 50,
                 max_page: int = 200, tick_seconds: float = 0.5,
                 clock: Callable[[], int] = now_ms) -> None:
        for url in [*stun_urls, *turn_urls]:
            validate_ice_url(url)  # a bad URL stops the start, not a client later
        self.store = store
        self.notifier = notifier
        self.sockets = sockets
        self.ring_timeout_ms = int(ring_timeout_seconds * 1000)
        self.disconnect_grace = disconnect_grace_seconds
        self.signal_max_bytes = signal_max_bytes
        self.stun_urls = list(stun_urls)
        self.turn_urls = list(turn_urls)
        self.turn_secret = turn_secret
        self.turn_ttl = turn_ttl_seconds
        self.default_page = default_page
        self.max_page = max_page
        self.tick = tick_seconds
        self.clock = clock
        self._absent_since: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    # --- ICE servers ------------------------------------------------------------------
    def ice_servers(self, user_id: str) -> dict[str, Any]:
        """``GET /api/v1/calls/ice-servers``: STUN URLs plus fresh TURN REST credentials."""
        body = ice_servers(stun_urls=self.stun_urls, turn_urls=self.turn_urls,
                           secret=self.turn_secret, ttl_seconds=self.turn_ttl,
                           user_id=user_id)
        if any("credential" in s for s in body["ice_servers"]):
            metrics.TURN_CREDENTIALS_ISSUED.inc()
        return body

    # --- reading ----------------------------------------------------------------------
    async def get(self, call_id: str, viewer: str) -> Call:
        """A call its participants and the conversation's current members may see."""
        call = await self.store.get_call(call_id)
        if call is None or (call.participant(viewer) is None and await self.store.member_role(
                call.conversation_id, viewer) is None):
            raise NotFound("call not found")
        return call

    async def list_calls(self, viewer: str, conversation_id: Any = None,
                   limit: Any = None) -> list[Call]:
        """Call history, newest first: the conversation's, or of every conversation the
        viewer is a member of."""
        limit = page_size(limit, self.default_page, self.max_page)
        if conversation_id is not None:
            if not isinstance(conversation_id, str) or await self.store.member_role(
                    conversation_id, viewer) is None:
                raise NotFound("conversation not found")
        return await self.store.list_calls(viewer, conversation_id, limit)

    # --- the lifecycle ----------------------------------------------------------------
    async def start_call(self, caller: str, conversation_id: Any, media: Any) -> Call:
        """Ring every other member (``call.ringing``). One live call per conversation:
        a second start is ``409 call_in_progress``."""
        if media not in MEDIA:
            raise InvalidInput('media must be "audio" or "video"', field="media")
        if not isinstance(conversation_id, str) or await self.store.member_role(
                conversation_id, caller) is None:
            raise NotFound("conversation not found")
        others = [m for m in await self.store.member_ids(conversation_id) if m != caller]
        if not others:
            raise InvalidInput("there is nobody else in this conversation to call",
                               field="conversation_id")
        call = Call(id=new_id(), conversation_id=conversation_id, initiator_id=caller,
                    media=media, state="ringing",
                    participants=(Participant(caller, "joined"),
                                  *(Participant(m, "ringing") for m in others)),
                    created_at=self.clock())
        call = await self.store.create_call(call)
        self.notifier.events_committed(0)
        return call

    async def accept(self, call_id: str, user_id: str) -> Call:
        """A ringing callee answers (on one of its devices): ``call.accepted``."""

        def change(call: Call) -> tuple[Call, str]:
            self._must_ring(call, user_id)
            return replace(call, state="active",
                           answered_at=call.answered_at or self.clock(),
                           participants=_set(call.participants, user_id, "joined")
                           ), "call.accepted"

        return await self._update(call_id, user_id, change)

    async def decline(self, call_id: str, user_id: str) -> Call:
        """A ringing callee declines. The call ends (``declined``) when nobody is left to
        answer it and nobody answered; in a group call in progress it goes on."""

        def change(call: Call) -> tuple[Call, str]:
            self._must_ring(call, user_id)
            return self._leave(call, user_id, "declined")

        return await self._update(call_id, user_id, change)

    async def hangup(self, call_id: str, user_id: str) -> Call:
        """The caller hanging up while it rings cancels the call (``cancelled``); a ringing
        callee hanging up declines; a joined participant leaves, and the call ends
        (``hangup``) when fewer than two participants remain in it."""

        def change(call: Call) -> tuple[Call, str]:
            me = _require(call, user_id)
            if call.state == "ended":
                raise Conflict("the call has ended", ErrorCode.CALL_ENDED)
            if call.state == "ringing" and user_id == call.initiator_id:
                return _end(call, "cancelled", self.clock()), "call.ended"
            if me.state == "ringing":
                return self._leave(call, user_id, "declined")
            if me.state != "joined":
                raise Conflict("you are not in this call", ErrorCode.CALL_ENDED)
            return self._leave(call, user_id, "left")

        return await self._update(call_id, user_id, change)

    def _leave(self, call: Call, user_id: str, as_state: str) -> tuple[Call, str]:
        parts = _set(call.participants, user_id, as_state)
        joined = sum(1 for p in parts if p.state == "joined")
        ringing = sum(1 for p in parts if p.state == "ringing")
        new = replace(call, participants=parts)
        if call.state == "ringing" and ringing == 0:
            return _end(new, "declined" if as_state == "declined" else "cancelled",
                        self.clock()), "call.ended"
        if call.state == "active" and joined < 2 and (joined == 0 or ringing == 0):
            reason = "hangup" if as_state == "left" else "declined"
            return _end(new, reason, self.clock()), "call.ended"
        return new, "call.declined"

    @staticmethod
    def _must_ring(call: Call, user_id: str) -> None:
        me = _require(call, user_id)
        if call.state == "ended":
            raise Conflict("the call has ended", ErrorCode.CALL_ENDED)
        if me.state != "ringing":
            raise Conflict("the call is not ringing for you", ErrorCode.CALL_NOT_RINGING)

    async def _update(self, call_id: str, user_id: str | None,
                      change: Callable[[Call], tuple[Call, str]]) -> Call:
        """Read, apply ``change`` (which may raise), compare-and-set; retry if another
        request or replica moved the call meanwhile."""
        for _ in range(_CAS_ATTEMPTS):
            call = await self.store.get_call(call_id)
            if call is None:
                raise NotFound("call not found")
            new, event_type = change(call)
            done = await self.store.update_call(call_id, call.state, new, event_type,
                                                expected_participants=call.participants)
            if done is not None:
                if new.state == "ended":
                    metrics.record_call(new.end_reason or "other")
                elif new.state == "active" and call.state == "ringing":
                    metrics.record_call("answered")
                self.notifier.events_committed(0)
                return done
        raise Conflict("the call changed too often; retry", ErrorCode.CONFLICT)

    # --- signaling --------------------------------------------------------------------
    async def signal(self, call_id: str, user_id: str, to_user_id: str | None,
                     data: Any) -> None:
        """Relay an SDP offer/answer or ICE candidate to one participant (``to_user_id``)
        or to every other participant still in the call, as durable ``call.signal``
        events to each target's devices."""
        if not isinstance(data, dict):
            raise InvalidInput("data must be a JSON object", field="data")
        size = len(orjson.dumps(data))
        if size > self.signal_max_bytes:
            raise InvalidInput(f"signal data is {size} bytes; the limit is "
                               f"{self.signal_max_bytes}", ErrorCode.SIGNAL_TOO_LARGE,
                               field="data")
        call = await self.store.get_call(call_id)
        if call is None:
            raise NotFound("call not found")
        me = _require(call, user_id)
        if call.state == "ended":
            raise Conflict("the call has ended", ErrorCode.CALL_ENDED)
        if me.state not in _IN_CALL:
            raise Conflict("you are no longer in this call", ErrorCode.CALL_ENDED)
        if to_user_id is not None:
            target = call.participant(to_user_id)
            if target is None or to_user_id == user_id:
                raise InvalidInput("to_user_id is not another participant of the call",
                                   field="to_user_id")
            if target.state not in _IN_CALL:
                raise Conflict("that participant is no longer in the call",
                               ErrorCode.CALL_ENDED)
            targets = [to_user_id]
        else:
            targets = [p.user_id for p in call.participants
                       if p.user_id != user_id and p.state in _IN_CALL]
        payload = {"call_id": call.id, "from_user_id": user_id, "data": data}
        await self.store.append_events([NewEvent("call.signal", payload, user_id=t)
                                        for t in targets])
        self.notifier.events_committed(0)

    # --- supervision ------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise_loop(), name="call-supervisor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _supervise_loop(self) -> None:
        while True:
            try:
                await self.supervise()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database blip must not stop supervision
                log.warning("call supervision failed: %s", exc)
            await asyncio.sleep(self.tick)

    async def supervise(self) -> None:
        """One pass over the live calls: ring timeouts and vanished participants."""
        now = self.clock()
        seen: set[tuple[str, str]] = set()
        for call in await self.store.live_calls():
            try:
                if call.state == "ringing" and now - call.created_at >= self.ring_timeout_ms:
                    await self._timeout(call.id, "ringing")
                elif call.state == "active":
                    if now - call.created_at >= self.ring_timeout_ms and any(
                            p.state == "ringing" for p in call.participants):
                        await self._timeout(call.id, "active")
                    await self._check_sockets(call, seen)
            except NovaError:
                continue  # the call moved meanwhile (another replica or request)
        for key in list(self._absent_since):
            if key not in seen:
                del self._absent_since[key]

    async def _timeout(self, call_id: str, expected: str) -> None:
        def change(call: Call) -> tuple[Call, str]:
            if call.state != expected:
                raise Conflict("moved", ErrorCode.CONFLICT)
            parts = tuple(Participant(p.user_id, "missed") if p.state == "ringing" else p
                          for p in call.participants)
            new = replace(call, participants=parts)
            if call.state == "ringing":
                return _end(new, "missed", self.clock()), "call.ended"
            return new, "call.declined"

        await self._update(call_id, None, change)

    async def _check_sockets(self, call: Call, seen: set[tuple[str, str]]) -> None:
        for p in call.participants:
            if p.state != "joined":
                continue
            key = (call.id, p.user_id)
            seen.add(key)
            if await self.sockets.adjust(p.user_id, 0) > 0:
                self._absent_since.pop(key, None)
                continue
            since = self._absent_since.setdefault(key, time.monotonic())
            if time.monotonic() - since < self.disconnect_grace:
                continue

            def change(current: Call, gone: str = p.user_id) -> tuple[Call, str]:
                if current.state != "active":
                    raise Conflict("moved", ErrorCode.CONFLICT)
                parts = _set(current.participants, gone, "left")
                if sum(1 for q in parts if q.state == "joined") >= 2:
                    return replace(current, participants=parts), "call.declined"
                return _end(replace(current, participants=parts), "failed",
                            self.clock()), "call.ended"

            log.info("call %s: %s has had no socket for %.0f s", call.id, p.user_id,
                     self.disconnect_grace)
            await self._update(call.id, None, change)
            self._absent_since.pop(key, None)
            return


def _require(call: Call, user_id: str) -> Participant:
    me = call.participant(user_id)
    if me is None:
        raise NotFound("call not found")
    return me


def _set(parts: tuple[Participant, ...], user_id: str,
         state: str) -> tuple[Participant, ...]:
    return tuple(Participant(p.user_id, state) if p.user_id == user_id else p for p in parts)


def _end(call: Call, reason: str, now: int) -> Call:
    parts = tuple(Participant(p.user_id, "missed") if p.state == "ringing" else p
                  for p in call.participants)
    return replace(call, state="ended", ended_at=now, end_reason=reason, participants=parts)

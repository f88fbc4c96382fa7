"""Messages over HTTP, on SQLite and PostgreSQL: idempotent client_msg_id, history pages,
edits and tombstone deletes by the sender only, replies, size limits."""

from __future__ import annotations

import re
from typing import Any

import pytest
from _api import Api, problem, quick_users

pytestmark = pytest.mark.integration

MSG_KEYS = {"id", "conversation_id", "seq", "sender_id", "kind", "body", "client_msg_id",
            "reply_to", "created_at", "edited_at", "deleted"}
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_send_is_idempotent_per_sender_and_client_msg_id(api: Api, live: Any) -> None:
    a, b = await quick_users(live, 2)
    cid = (await api.group(a, [b]))["id"]
    other = (await api.group(a, [b], title="other"))["id"]
    msg = await api.send(a, cid, "hello", client_msg_id="c-1", status=201)
    assert set(msg) == MSG_KEYS
    assert msg["seq"] == 1 and msg["sender_id"] == a.id and msg["conversation_id"] == cid
    assert msg["kind"] == "text" and msg["body"] == "hello" and msg["client_msg_id"] == "c-1"
    assert msg["reply_to"] is None and msg["edited_at"] is None and msg["deleted"] is False
    assert RFC3339_MS.match(msg["created_at"])
    # The retry (even with a different body) is 200 and the SAME message.
    assert await api.send(a, cid, "hello", client_msg_id="c-1", status=200) == msg
    assert await api.send(a, cid, "changed?", client_msg_id="c-1", status=200) == msg
    # client_msg_id is unique per sender: b may use the same one.
    theirs = await api.send(b, cid, "hi", client_msg_id="c-1", status=201)
    assert theirs["id"] != msg["id"] and theirs["seq"] == 2
    # The same sender's id in another conversation is a conflict, not a second message.
    problem(await api.call("POST", f"/api/v1/conversations/{other}/messages", a,
                           json={"client_msg_id": "c-1", "body": "x"}),
            409, "client_msg_id_conflict")
    items = (await api.messages(a, cid))["items"]
    assert [(m["seq"], m["client_msg_id"], m["sender_id"]) for m in items] == [
        (1, "c-1", a.id), (2, "c-1", b.id)]
    assert (await api.messages(a, other))["items"] == []
    assert (await api.conversation(a, cid))["last_seq"] == 2


async def test_history_pages_by_before_after_and_limit(api: Api, live: Any) -> None:
    a, b = await quick_users(live, 2)
    cid = (await api.group(a, [b]))["id"]
    for i in range(1, 8):
        await api.send(a if i % 2 else b, cid, f"m{i}")

    async def seqs(**params: Any) -> tuple[list[int], bool]:
        page = await api.messages(b, cid, **params)
        return [m["seq"] for m in page["items"]], page["has_more"]

    assert await seqs() == ([1, 2, 3, 4, 5, 6, 7], False)
    assert await seqs(limit=3) == ([5, 6, 7], True)
    assert await seqs(before=5, limit=3) == ([2, 3, 4], True)
    assert await seqs(before=3, limit=3) == ([1, 2], False)
    assert await seqs(after=0, limit=3) == ([1, 2, 3], True)
    assert await seqs(after=4, limit=3) == ([5, 6, 7], False)
    assert await seqs(after=2, before=6) == ([3, 4, 5], False)
    assert await seqs(after=7) == ([], False)
    # Walking backwards with `before` visits every message once.
    walked: list[int] = []
    before = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2}
        if before is not None:
            params["before"] = before
        got, more = await seqs(**params)
        walked = got + walked
        if not more:
            break
        before = got[0]
    assert walked == [1, 2, 3, 4, 5, 6, 7]


async def test_only_the_sender_edits_and_deletes_tombstones_stay(api: Api, live: Any) -> None:
    a, b = await quick_users(live, 2)
    cid = (await api.group(a, [b]))["id"]
    first = await api.send(a, cid, "first")
    second = await api.send(a, cid, "second")
    url = f"/api/v1/conversations/{cid}/messages"
    problem(await api.call("PATCH", f"{url}/{first['id']}", b, json={"body": "hacked"}),
            403, "forbidden")
    problem(await api.call("DELETE", f"{url}/{first['id']}", b), 403, "forbidden")
    edited = await api.ok("PATCH", f"{url}/{first['id']}", a, json={"body": "first!"})
    assert edited["body"] == "first!" and RFC3339_MS.match(edited["edited_at"])
    assert edited["seq"] == first["seq"] and edited["id"] == first["id"]
    resp = await api.call("DELETE", f"{url}/{second['id']}", a)
    assert resp.status_code == 204 and resp.content == b""
    again = await api.call("DELETE", f"{url}/{second['id']}", a)
    assert again.status_code == 204  # deleting twice is harmless
    problem(await api.call("PATCH", f"{url}/{second['id']}", a, json={"body": "back"}),
            409, "message_deleted")
    problem(await api.call("PATCH", f"{url}/does-not-exist", a, json={"body": "x"}),
            404, "not_found")
    problem(await api.call("DELETE", f"{url}/does-not-exist", a), 404, "not_found")
    items = (await api.messages(b, cid))["items"]
    assert [(m["seq"], m["body"], m["deleted"]) for m in items] == [
        (1, "first!", False), (2, None, True)]
    assert items[1]["id"] == second["id"] and items[1]["client_msg_id"] == second["client_msg_id"]
    # A retry of the deleted message's client_msg_id does not resurrect it.
    retry = await api.send(a, cid, "second", client_msg_id=second["client_msg_id"], status=200)
    assert retry["id"] == second["id"] and retry["deleted"] is True and retry["body"] is None
    # Seqs continue after a tombstone.
    assert (await api.send(b, cid, "third"))["seq"] == 3


async def test_reply_to_kind_and_size_limits(api: Api, live: Any) -> None:
    a, b = await quick_users(live, 2)
    cid = (await api.group(a, [b]))["id"]
    other = (await api.group(a, [b], title="other"))["id"]
    url = f"/api/v1/conversations/{cid}/messages"
    root = await api.send(a, cid, "root")
    foreign = await api.send(a, other, "elsewhere")
    reply = await api.ok("POST", url, b, 201, json={
        "client_msg_id": "r1", "body": "re", "reply_to": root["id"], "kind": "quote"})
    assert reply["reply_to"] == root["id"] and reply["kind"] == "quote"
    problem(await api.call("POST", url, b, json={
        "client_msg_id": "r2", "body": "re", "reply_to": foreign["id"]}),
        422, "invalid_request", "reply_to")
    problem(await api.call("POST", url, b, json={"client_msg_id": "k1", "body": "x",
                                                 "kind": "Not A Kind"}),
            422, "invalid_request", "kind")
    limit = live.settings.max_message_bytes
    exact = await api.send(a, cid, "a" * limit)
    assert len(exact["body"]) == limit
    problem(await api.call("POST", url, a, json={"client_msg_id": "big",
                                                 "body": "a" * (limit + 1)}),
            413, "message_too_large", "body")
    # The limit is in UTF-8 bytes, not characters.
    problem(await api.call("POST", url, a, json={"client_msg_id": "big2",
                                                 "body": "é" * (limit // 2 + 1)}),
            413, "message_too_large")
    emoji = await api.send(a, cid, "héllo 👋")
    assert emoji["body"] == "héllo 👋"
    problem(await api.call("PATCH", f"{url}/{root['id']}", a,
                           json={"body": "a" * (limit + 1)}), 413, "message_too_large")
    items = (await api.messages(a, cid))["items"]
    assert [m["seq"] for m in items] == [1, 2, 3, 4]
    assert items[0]["body"] == "root"

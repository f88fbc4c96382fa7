"""Conversations and members over HTTP, on SQLite and PostgreSQL: direct pairs, groups and
admins, membership changes, ordering by activity, unread counts, and outsiders seeing 404."""

from __future__ import annotations

from typing import Any

import pytest
from _api import Api, problem, quick_users

pytestmark = pytest.mark.integration

CONV_KEYS = {"id", "kind", "title", "members", "last_seq", "last_message", "unread_count",
             "created_at", "updated_at"}


def roles(conv: dict[str, Any]) -> dict[str, str]:
    return {m["user_id"]: m["role"] for m in conv["members"]}


async def test_direct_conversation_is_idempotent_per_pair(api: Api, live: Any) -> None:
    a, b, c = await quick_users(live, 3)
    conv = await api.direct(a, b, 201)
    assert set(conv) == CONV_KEYS
    assert conv["kind"] == "direct" and conv["title"] is None and conv["last_seq"] == 0
    assert set(roles(conv)) == {a.id, b.id}
    assert (await api.direct(a, b, 200))["id"] == conv["id"]
    assert (await api.direct(b, a, 200))["id"] == conv["id"]
    other = await api.direct(a, c, 201)
    assert other["id"] != conv["id"]
    for bad in ([], [a.id], [b.id, c.id]):
        problem(await api.call("POST", "/api/v1/conversations", a,
                               json={"kind": "direct", "member_ids": bad}),
                422, "invalid_request", "member_ids")
    problem(await api.call("POST", "/api/v1/conversations", a,
                           json={"kind": "direct", "member_ids": ["no-such-user"]}),
            404, "not_found")
    listed = await api.ok("GET", "/api/v1/conversations", a)
    assert sorted(x["id"] for x in listed["items"]) == sorted([conv["id"], other["id"]])


async def test_group_creator_is_admin_and_only_admins_manage(api: Api, live: Any) -> None:
    a, b, c, d, out = await quick_users(live, 5)
    conv = await api.group(a, [a, b, c], title="  Team  ")
    cid = conv["id"]
    assert conv["kind"] == "group" and conv["title"] == "Team"
    assert roles(conv) == {a.id: "admin", b.id: "member", c.id: "member"}
    # Rename: admin yes; member 403; outsider 404.
    renamed = await api.ok("PATCH", f"/api/v1/conversations/{cid}", a, json={"title": "T2"})
    assert renamed["title"] == "T2"
    problem(await api.call("PATCH", f"/api/v1/conversations/{cid}", b, json={"title": "x"}),
            403, "forbidden")
    problem(await api.call("PATCH", f"/api/v1/conversations/{cid}", out, json={"title": "x"}),
            404, "not_found")
    # Add members: admin yes; member 403; unknown user 404; empty list 422.
    added = await api.ok("POST", f"/api/v1/conversations/{cid}/members", a,
                         json={"user_ids": [d.id, b.id]})
    assert roles(added) == {a.id: "admin", b.id: "member", c.id: "member", d.id: "member"}
    problem(await api.call("POST", f"/api/v1/conversations/{cid}/members", b,
                           json={"user_ids": [out.id]}), 403, "forbidden")
    problem(await api.call("POST", f"/api/v1/conversations/{cid}/members", a,
                           json={"user_ids": ["no-such-user"]}), 404, "not_found")
    problem(await api.call("POST", f"/api/v1/conversations/{cid}/members", a,
                           json={"user_ids": []}), 422, "invalid_request", "user_ids")
    # Remove: a member may not remove another; an admin may; a member may leave.
    problem(await api.call("DELETE", f"/api/v1/conversations/{cid}/members/{c.id}", b),
            403, "forbidden")
    assert (await api.call("DELETE", f"/api/v1/conversations/{cid}/members/{c.id}", a)
            ).status_code == 204
    assert (await api.call("DELETE", f"/api/v1/conversations/{cid}/members/{d.id}", d)
            ).status_code == 204
    problem(await api.call("DELETE", f"/api/v1/conversations/{cid}/members/{c.id}", a),
            404, "not_found")
    # Former members see 404 and cannot post.
    problem(await api.call("GET", f"/api/v1/conversations/{cid}", c), 404, "not_found")
    problem(await api.call("POST", f"/api/v1/conversations/{cid}/messages", d,
                           json={"client_msg_id": "m1", "body": "hi"}), 404, "not_found")
    final = await api.conversation(a, cid)
    assert roles(final) == {a.id: "admin", b.id: "member"}
    # The last admin leaving hands the role on: the group keeps an admin.
    assert (await api.call("DELETE", f"/api/v1/conversations/{cid}/members/{a.id}", a)
            ).status_code == 204
    assert roles(await api.conversation(b, cid)) == {b.id: "admin"}


async def test_direct_conversation_cannot_be_renamed_or_changed(api: Api, live: Any) -> None:
    a, b, c = await quick_users(live, 3)
    cid = (await api.direct(a, b))["id"]
    problem(await api.call("PATCH", f"/api/v1/conversations/{cid}", a, json={"title": "x"}),
            403, "forbidden")
    problem(await api.call("POST", f"/api/v1/conversations/{cid}/members", a,
                           json={"user_ids": [c.id]}), 403, "forbidden")
    problem(await api.call("DELETE", f"/api/v1/conversations/{cid}/members/{a.id}", a),
            403, "forbidden")
    assert set(roles(await api.conversation(b, cid))) == {a.id, b.id}


async def test_outsider_gets_404_everywhere(api: Api, live: Any) -> None:
    a, b, out = await quick_users(live, 3)
    cid = (await api.group(a, [b]))["id"]
    mid = (await api.send(a, cid, "secret"))["id"]
    base = f"/api/v1/conversations/{cid}"
    attempts = [
        ("GET", base, None), ("PATCH", base, {"title": "x"}),
        ("POST", f"{base}/members", {"user_ids": [out.id]}),
        ("DELETE", f"{base}/members/{b.id}", None),
        ("DELETE", f"{base}/members/{out.id}", None),
        ("GET", f"{base}/messages", None),
        ("POST", f"{base}/messages", {"client_msg_id": "x1", "body": "let me in"}),
        ("PATCH", f"{base}/messages/{mid}", {"body": "edited"}),
        ("DELETE", f"{base}/messages/{mid}", None),
        ("POST", f"{base}/read", {"seq": 1}),
    ]
    for method, path, body in attempts:
        resp = await api.call(method, path, out, json=body)
        assert resp.status_code == 404, (method, path, resp.text)
        body_out = problem(resp, 404, "not_found")
        assert "secret" not in resp.text and body_out["detail"]
    # A conversation that does not exist answers exactly the same.
    problem(await api.call("GET", "/api/v1/conversations/nope", out), 404, "not_found")
    assert (await api.ok("GET", "/api/v1/conversations", out))["items"] == []
    # Nothing changed for the members.
    conv = await api.conversation(a, cid)
    assert set(roles(conv)) == {a.id, b.id} and conv["last_seq"] == 1
    assert [m["body"] for m in (await api.messages(b, cid))["items"]] == ["secret"]


async def test_conversations_list_by_activity_with_cursor(api: Api, live: Any) -> None:
    a, b = await quick_users(live, 2)
    ids = [(await api.group(a, [b], title=f"g{i}"))["id"] for i in range(5)]
    listed = await api.ok("GET", "/api/v1/conversations", a)
    assert [c["id"] for c in listed["items"]] == ids[::-1] and listed["next_cursor"] is None
    await api.send(b, ids[1], "bump")  # activity moves g1 to the front, for both members
    expected = [ids[1], ids[4], ids[3], ids[2], ids[0]]
    for who in (a, b):
        got, cursor, pages = [], None, 0
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = await api.ok("GET", "/api/v1/conversations", who, params=params)
            assert len(page["items"]) <= 2
            got += [c["id"] for c in page["items"]]
            cursor = page["next_cursor"]
            pages += 1
            if cursor is None or pages > 5:
                break
        assert got == expected
    first = (await api.ok("GET", "/api/v1/conversations", a, params={"limit": 1}))["items"][0]
    assert first["last_message"]["body"] == "bump" and first["last_seq"] == 1


async def test_unread_count_last_message_and_read_position(api: Api, live: Any) -> None:
    a, b = await quick_users(live, 2)
    cid = (await api.group(a, [b]))["id"]
    msgs = [await api.send(a, cid, f"m{i}") for i in range(1, 4)]
    conv_b = await api.conversation(b, cid)
    conv_a = await api.conversation(a, cid)
    assert conv_b["unread_count"] == 3 and conv_a["unread_count"] == 0
    assert conv_b["last_message"]["id"] == msgs[-1]["id"] and conv_b["last_seq"] == 3
    # Sending moves the sender's own read position to the message.
    assert {m["user_id"]: m["last_read_seq"] for m in conv_a["members"]} == {a.id: 3, b.id: 0}
    read = f"/api/v1/conversations/{cid}/read"
    assert (await api.call("POST", read, b, json={"seq": 2})).status_code == 204
    assert (await api.conversation(b, cid))["unread_count"] == 1
    # Only forward: an older seq leaves it where it is; past last_seq is clamped.
    assert (await api.call("POST", read, b, json={"seq": 1})).status_code == 204
    conv = await api.conversation(b, cid)
    assert conv["unread_count"] == 1
    assert {m["user_id"]: m["last_read_seq"] for m in conv["members"]}[b.id] == 2
    assert (await api.call("POST", read, b, json={"seq": 99})).status_code == 204
    conv = await api.conversation(b, cid)
    assert {m["user_id"]: m["last_read_seq"] for m in conv["members"]}[b.id] == 3
    assert conv["unread_count"] == 0
    # b's own message does not count for b; a's unread counts b's; tombstones do not count.
    await api.send(b, cid, "from b")
    last_a = await api.send(a, cid, "from a")
    assert (await api.conversation(b, cid))["unread_count"] == 1
    assert (await api.conversation(a, cid))["unread_count"] == 0
    assert (await api.call("DELETE", f"/api/v1/conversations/{cid}/messages/{last_a['id']}",
                           a)).status_code == 204
    conv_b = await api.conversation(b, cid)
    assert conv_b["unread_count"] == 0
    assert conv_b["last_message"]["deleted"] is True and conv_b["last_message"]["body"] is None

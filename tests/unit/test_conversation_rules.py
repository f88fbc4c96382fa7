"""ConversationService rules on a real SqlStore (SQLite in tmp), with a recording notifier."""

from __future__ import annotations

from typing import Any

import pytest

from nova.domain.conversations import ConversationService
from nova.errors import Conflict, ErrorCode, Forbidden, InvalidInput, NotFound


class Doorbell:
    def __init__(self) -> None:
        self.rings = 0

    def events_committed(self, last_pos: int) -> None:
        self.rings += 1


@pytest.fixture
async def world(sql_store: Any) -> Any:
    bell = Doorbell()
    svc = ConversationService(sql_store, bell, max_message_bytes=32, max_group_members=4,
                              max_client_msg_id=8, default_page=3, max_page=5)
    users = [(await sql_store.create_user(f"user{i}", f"User {i}", None)).id for i in range(6)]
    return svc, bell, users


async def test_rules_direct_is_one_per_pair(world: Any) -> None:
    svc, bell, (a, b, c, *_) = world
    conv, created = await svc.create(a, "direct", [b])
    assert created and bell.rings == 1
    again, created2 = await svc.create(b, "direct", [a, b])
    assert again.id == conv.id and not created2 and bell.rings == 1
    for bad in ([], [a], [b, c]):
        with pytest.raises(InvalidInput):
            await svc.create(a, "direct", bad)
    with pytest.raises(InvalidInput):
        await svc.create(a, "direct", [c], title="no titles")
    with pytest.raises(NotFound):
        await svc.create(a, "direct", ["ghost"])
    with pytest.raises(InvalidInput):
        await svc.create(a, "channel", [b])


async def test_rules_group_admins_members_and_limits(world: Any) -> None:
    svc, _, (a, b, c, d, e, f) = world
    with pytest.raises(InvalidInput) as many:
        await svc.create(a, "group", [b, c, d, e], title="big")
    assert many.value.code == ErrorCode.TOO_MANY_MEMBERS
    for title in (None, "", "   ", 5, "x" * 201):
        with pytest.raises(InvalidInput):
            await svc.create(a, "group", [b], title=title)
    g, _ = await svc.create(a, "group", [a, b, b, c], title="g")
    assert {m.user_id: m.role for m in g.members} == {a: "admin", b: "member", c: "member"}
    with pytest.raises(Forbidden):
        await svc.rename(g.id, b, "nope")
    with pytest.raises(NotFound):
        await svc.rename(g.id, e, "nope")
    assert (await svc.rename(g.id, a, " new ")).title == "new"
    with pytest.raises(Forbidden):
        await svc.add_members(g.id, b, [d])
    await svc.add_members(g.id, a, [d])
    with pytest.raises(InvalidInput) as full:
        await svc.add_members(g.id, a, [e])
    assert full.value.code == ErrorCode.TOO_MANY_MEMBERS
    with pytest.raises(Forbidden):
        await svc.remove_member(g.id, b, c)
    await svc.remove_member(g.id, c, c)  # leaving
    with pytest.raises(NotFound):
        await svc.visible(g.id, c)
    with pytest.raises(NotFound):
        await svc.remove_member(g.id, a, f)
    await svc.remove_member(g.id, a, a)  # the last admin leaves: b (earliest) inherits
    roles = {m.user_id: m.role for m in (await svc.visible(g.id, b)).members}
    assert roles == {b: "admin", d: "member"}


async def test_rules_send_validation_and_idempotency(world: Any) -> None:
    svc, bell, (a, b, c, *_) = world
    g, _ = await svc.create(a, "group", [b], title="g")
    h, _ = await svc.create(a, "group", [b], title="h")
    rings = bell.rings
    m1, created = await svc.send(g.id, a, "c1", "hello")
    assert created and m1.seq == 1 and bell.rings == rings + 1
    same, created = await svc.send(g.id, a, "c1", "other text")
    assert same == m1 and not created and bell.rings == rings + 1
    with pytest.raises(Conflict) as other_conv:
        await svc.send(h.id, a, "c1", "x")
    assert other_conv.value.code == ErrorCode.CLIENT_MSG_ID_CONFLICT
    bad_inputs: list[tuple[dict[str, Any], ErrorCode]] = [
        ({"client_msg_id": ""}, ErrorCode.INVALID_REQUEST),
        ({"client_msg_id": "x" * 9}, ErrorCode.INVALID_REQUEST),
        ({"client_msg_id": 5}, ErrorCode.INVALID_REQUEST),
        ({"body": ""}, ErrorCode.EMPTY_MESSAGE),
        ({"body": " \n "}, ErrorCode.EMPTY_MESSAGE),
        ({"body": "x" * 33}, ErrorCode.MESSAGE_TOO_LARGE),
        ({"body": "é" * 17}, ErrorCode.MESSAGE_TOO_LARGE),
        ({"body": None}, ErrorCode.INVALID_REQUEST),
        ({"body": "\ud800"}, ErrorCode.INVALID_REQUEST),
        ({"kind": "Bad Kind"}, ErrorCode.INVALID_REQUEST),
        ({"reply_to": "not-here"}, ErrorCode.INVALID_REQUEST),
    ]
    for change, code in bad_inputs:
        args = {"client_msg_id": "ok", "body": "fine", "kind": None, "reply_to": None, **change}
        with pytest.raises(InvalidInput) as err:
            await svc.send(g.id, b, args["client_msg_id"], args["body"], args["kind"],
                           args["reply_to"])
        assert err.value.code == code, change
    assert "x" * 32 == (await svc.send(g.id, b, "max", "x" * 32))[0].body
    with pytest.raises(NotFound):
        await svc.send(g.id, c, "c9", "outsider")
    items, _ = await svc.history(g.id, a, None, None, 5)
    assert [m.seq for m in items] == [1, 2]


async def test_rules_history_pages_edit_delete_and_read(world: Any) -> None:
    svc, _, (a, b, c, *_) = world
    g, _ = await svc.create(a, "group", [b], title="g")
    msgs = [(await svc.send(g.id, a, f"m{i}", f"text {i}"))[0] for i in range(1, 7)]
    seqs = [m.seq for m in (await svc.history(g.id, b, None, None, None))[0]]
    assert seqs == [4, 5, 6]  # default page 3: the newest, ascending
    assert [m.seq for m in (await svc.history(g.id, b, 4, None, 2))[0]] == [2, 3]
    assert [m.seq for m in (await svc.history(g.id, b, None, 4, 5))[0]] == [5, 6]
    for bad in ({"limit": 0}, {"limit": 6}, {"limit": True}, {"before": -1}, {"after": "1"}):
        args = {"before": None, "after": None, "limit": None, **bad}
        with pytest.raises(InvalidInput):
            await svc.history(g.id, b, args["before"], args["after"], args["limit"])
    with pytest.raises(NotFound):
        await svc.history(g.id, c, None, None, None)
    with pytest.raises(Forbidden):
        await svc.edit(g.id, msgs[0].id, b, "hijack")
    edited = await svc.edit(g.id, msgs[0].id, a, "changed")
    assert edited.body == "changed" and edited.edited_at is not None
    gone = await svc.delete(g.id, msgs[1].id, a)
    assert gone.deleted and gone.wire()["body"] is None
    assert (await svc.delete(g.id, msgs[1].id, a)).deleted
    with pytest.raises(Conflict):
        await svc.edit(g.id, msgs[1].id, a, "revive")
    with pytest.raises(NotFound):
        await svc.edit(g.id, msgs[0].id, c, "outsider")
    assert (await svc.visible(g.id, b)).unread_count == 5  # 6 sent, one tombstone
    await svc.mark_read(g.id, b, 4)
    await svc.mark_read(g.id, b, 2)  # backwards: ignored
    conv = await svc.visible(g.id, b)
    assert conv.member(b).last_read_seq == 4 and conv.unread_count == 2  # type: ignore[union-attr]
    await svc.mark_read(g.id, b, 1000)  # clamped to last_seq
    assert (await svc.visible(g.id, b)).member(b).last_read_seq == 6  # type: ignore[union-attr]
    for bad_seq in (-1, "3", True, None):
        with pytest.raises(InvalidInput):
            await svc.mark_read(g.id, b, bad_seq)


async def test_rules_list_orders_by_activity(world: Any) -> None:
    svc, _, (a, b, *_) = world
    ids = [(await svc.create(a, "group", [b], title=f"g{i}"))[0].id for i in range(4)]
    await svc.send(ids[0], b, "bump", "x")
    page, cursor = await svc.list(a, 3, None)
    assert [c.id for c in page] == [ids[0], ids[3], ids[2]] and cursor
    rest, end = await svc.list(a, 3, cursor)
    assert [c.id for c in rest] == [ids[1]] and end is None
    with pytest.raises(InvalidInput) as bad:
        await svc.list(a, 3, "bm9wZQ")
    assert bad.value.code == ErrorCode.INVALID_CURSOR

"""Concurrency on SQLite and PostgreSQL: many concurrent senders in one conversation get
gap-free seqs; each client_msg_id is stored once however the retries race."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from _api import Api, quick_users

pytestmark = pytest.mark.integration

SENDERS = 20
PER_SENDER = 10


@pytest.fixture
def settings(db_kind: str, make_settings: Any) -> Any:
    # This is a load test of the store, not of the rate limiter.
    return make_settings(db_kind, rate_limits="off")


async def _all_messages(api: Api, who: Any, cid: str) -> list[dict[str, Any]]:
    return list((await api.messages(who, cid, limit=200))["items"]) + list(
        (await api.messages(who, cid, after=200, limit=200))["items"])


async def test_concurrent_senders_get_gap_free_seqs(api: Api, live: Any) -> None:
    users = await quick_users(live, SENDERS)
    cid = (await api.group(users[0], users[1:]))["id"]

    async def sender(i: int) -> list[dict[str, Any]]:
        out = []
        for j in range(PER_SENDER):
            out.append(await api.send(users[i], cid, f"{i}:{j}", client_msg_id=f"s{i}-{j}"))
        return out

    acked = [m for batch in await asyncio.gather(*(sender(i) for i in range(SENDERS)))
             for m in batch]
    total = SENDERS * PER_SENDER
    assert sorted(m["seq"] for m in acked) == list(range(1, total + 1))
    stored = await _all_messages(api, users[0], cid)
    assert [m["seq"] for m in stored] == list(range(1, total + 1))
    assert {m["id"]: m["seq"] for m in stored} == {m["id"]: m["seq"] for m in acked}
    assert Counter(m["sender_id"] for m in stored) == {u.id: PER_SENDER for u in users}
    # Each sender's own messages are in the order that sender sent them.
    for u in users:
        mine = [m["body"] for m in stored if m["sender_id"] == u.id]
        assert mine == sorted(mine, key=lambda b: int(b.split(":")[1]))
    conv = await api.conversation(users[1], cid)
    assert conv["last_seq"] == total
    # Sending moved users[1]'s read position to their last message; the rest is unread.
    last_own = max(m["seq"] for m in stored if m["sender_id"] == users[1].id)
    assert conv["unread_count"] == sum(1 for m in stored if m["seq"] > last_own)
    assert {m["user_id"]: m["last_read_seq"] for m in conv["members"]}[users[1].id] == last_own


async def test_duplicate_client_msg_id_races_store_one_message(api: Api, live: Any) -> None:
    a, b = await quick_users(live, 2)
    cid = (await api.group(a, [b]))["id"]
    url = f"/api/v1/conversations/{cid}/messages"
    for round_ in range(3):
        cmid = f"dup-{round_}"
        resps = await asyncio.gather(*(
            api.call("POST", url, a, json={"client_msg_id": cmid, "body": f"try {i}"})
            for i in range(12)))
        statuses = Counter(r.status_code for r in resps)
        assert statuses == {201: 1, 200: 11}, [(r.status_code, r.text) for r in resps]
        assert len({r.json()["id"] for r in resps}) == 1
        assert len({r.json()["seq"] for r in resps}) == 1
    # Meanwhile b's interleaved sends and a's duplicates leave no gap.
    await asyncio.gather(*(api.send(b, cid, f"b{i}") for i in range(5)),
                         *(api.send(a, cid, "again", client_msg_id="dup-0", status=200)
                           for _ in range(5)))
    stored = await _all_messages(api, a, cid)
    assert [m["seq"] for m in stored] == list(range(1, 9))
    assert Counter(m["client_msg_id"] for m in stored if m["sender_id"] == a.id) == {
        "dup-0": 1, "dup-1": 1, "dup-2": 1}


async def test_concurrent_direct_creation_makes_one_conversation(api: Api, live: Any) -> None:
    a, b = await quick_users(live, 2)
    url = "/api/v1/conversations"
    resps = await asyncio.gather(*(
        api.call("POST", url, who, json={"kind": "direct", "member_ids": [other.id]})
        for who, other in [(a, b), (b, a)] * 5))
    assert Counter(r.status_code for r in resps) == {201: 1, 200: 9}, [r.text for r in resps]
    assert len({r.json()["id"] for r in resps}) == 1
    assert len((await api.ok("GET", url, a))["items"]) == 1


async def test_concurrent_refresh_of_one_token_succeeds_at_most_once(api: Api) -> None:
    acct = await api.register()
    resps = await asyncio.gather(*(
        api.http.post("/api/v1/auth/refresh", json={"refresh_token": acct.refresh})
        for _ in range(6)))
    assert Counter(r.status_code for r in resps)[200] == 1, [r.text for r in resps]
    assert all(r.status_code in (200, 401) for r in resps)

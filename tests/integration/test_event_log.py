"""The event log's cursor guarantee under many concurrent writers: a reader that tails the
log by position never sees a position appear below one it has already passed (the classic
PostgreSQL trap: transactions commit out of id order)."""

from __future__ import annotations

import asyncio
import random

import pytest

from nova.storage.db import create_engine
from nova.storage.store import SqlStore

pytestmark = pytest.mark.integration


async def test_tailing_reader_never_skips_a_position_under_concurrent_writers(
        settings) -> None:
    from nova.storage.db import run_migrations

    engine = create_engine(settings.model_copy(update={"db_pool_size": 20}))
    if not settings.is_postgres:
        await run_migrations(settings, engine)
    store = SqlStore(engine)
    try:
        users = [await store.create_user(f"w{i}", f"w{i}", None) for i in range(6)]
        convs = []
        for i in range(3):
            conv, _ = await store.create_conversation(
                "group", f"c{i}", users[0].id, [u.id for u in users[1:]], None)
            convs.append(conv)
        start = await store.head_position()
        writers, per_writer = 16, 15
        stop = asyncio.Event()
        seen: list[int] = []

        async def write(w: int) -> None:
            rng = random.Random(w)
            for j in range(per_writer):
                conv = rng.choice(convs)
                sender = rng.choice(users)
                await store.send_message(conv.id, sender.id, "text", f"{w}-{j}", f"{w}-{j}",
                                         None)
                await asyncio.sleep(rng.random() * 0.003)

        async def tail() -> None:
            pos = start
            while True:
                batch = await store.events_after(pos, 1000)
                for ev in batch:
                    assert ev.pos > pos
                    seen.append(ev.pos)
                    pos = ev.pos
                if stop.is_set() and not batch:
                    return
                await asyncio.sleep(0)

        reader = asyncio.create_task(tail())
        await asyncio.gather(*(write(w) for w in range(writers)))
        stop.set()
        await reader
        everything = [e.pos for e in await store.events_after(start, 100_000)]
        # Whatever committed was seen, by a reader that only ever moved forward.
        assert seen == everything
        assert len(everything) == writers * per_writer
        for conv in convs:
            msgs, _ = await store.list_messages(conv.id, None, 0, 200)
            assert [m.seq for m in msgs] == list(range(1, len(msgs) + 1))
    finally:
        await engine.dispose()

from __future__ import annotations

from nova.client import NovaClient


async def test_live_server_register_send_and_receive(live) -> None:
    async with NovaClient(live.url) as a, NovaClient(live.url) as b:
        await a.register("alice", "secret123")
        await b.register("bob", "secret123")
        conv = await a.create_group("team", [b.user_id])
        async with b.socket() as wb:
            msg = await a.send_message(conv["id"], "hello")
            frame = await wb.next_event()
            assert frame["event"]["type"] == "message.created"
            assert frame["event"]["message"]["id"] == msg["id"]

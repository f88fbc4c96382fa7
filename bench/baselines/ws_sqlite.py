"""Baseline (b): baseline (a) plus a durable SQLite insert before each ack and broadcast.

Sends are queued; one writer inserts everything queued so far in a thread and commits once
(group commit), then acks and broadcasts the batch. ``--commit-each`` commits every message
on its own instead. ``since=`` replays from the database (a second connection, WAL mode).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast

from bench.baselines.ws_broadcast import Hub, _dumps, parse_args, run, serve_hub

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  cursor INTEGER PRIMARY KEY,
  conversation_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  sender_id TEXT NOT NULL,
  client_msg_id TEXT,
  body TEXT NOT NULL,
  frame TEXT NOT NULL,
  UNIQUE (conversation_id, seq)
);
CREATE INDEX IF NOT EXISTS events_conv_cursor ON events (conversation_id, cursor);
"""


class SqliteHub(Hub):
    def __init__(self, path: Path, synchronous: str, commit_each: bool) -> None:
        super().__init__()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.executescript(SCHEMA)
        self.reader = sqlite3.connect(path, isolation_level=None)
        for conv, seq in self.db.execute(
            "SELECT conversation_id, MAX(seq) FROM events GROUP BY conversation_id"
        ):
            self.seq[conv] = seq
        self.cursor = self.db.execute("SELECT COALESCE(MAX(cursor), 0) FROM events").fetchone()[0]
        self.commit_each = commit_each
        self.queue: list[tuple[ServerConnection, Any, dict[str, Any]]] = []
        self.wakeup = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None

    def replay(self, rooms: list[str], since: int) -> list[tuple[int, str]]:
        if not rooms:
            return []
        # Only what was broadcast already: a committed batch still being acked is sent live.
        marks = ",".join("?" * len(rooms))
        return self.reader.execute(
            f"SELECT cursor, frame FROM events WHERE conversation_id IN ({marks}) "
            "AND cursor > ? AND cursor <= ? ORDER BY cursor",
            [*rooms, since, self.cursor],
        ).fetchall()

    async def on_send(self, ws: ServerConnection, frame: dict[str, Any]) -> None:
        self.queue.append((ws, frame.get("id"), self.make_message(ws, frame)))
        self.wakeup.set()
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self.write_loop())

    def _insert(self, batch: list[tuple[int, dict[str, Any], str]]) -> None:
        rows = [(c, m["conversation_id"], m["seq"], m["sender_id"], m["client_msg_id"],
                 m["body"], f) for c, m, f in batch]
        if self.commit_each:
            for row in rows:
                self.db.execute("BEGIN")
                self.db.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?)", row)
                self.db.execute("COMMIT")
            return
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?)", rows)
        self.db.execute("COMMIT")

    async def write_loop(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            batch, self.queue = self.queue, []
            if not batch:
                continue
            cursor = self.cursor
            rows = []
            for _, _, message in batch:
                cursor += 1
                rows.append((cursor, message, _dumps(
                    {"type": "event", "cursor": str(cursor),
                     "event": {"type": "message.created", "message": message}})))
            await asyncio.to_thread(self._insert, rows)
            for (ws, req_id, message), (_, _, frame) in zip(batch, rows, strict=True):
                self.cursor += 1
                ws_ack = _dumps({"type": "ack", "id": req_id, "message": message})
                broadcast([ws], ws_ack)
                broadcast(self.rooms[message["conversation_id"]], frame)


def main() -> None:
    parser = parse_args(__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="SQLite file (created)")
    parser.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    parser.add_argument("--commit-each", action="store_true")
    args = parser.parse_args()

    async def start() -> None:
        hub = SqliteHub(args.db, args.synchronous, args.commit_each)
        await serve_hub(hub, args.host, args.port)

    run(start())


if __name__ == "__main__":
    main()

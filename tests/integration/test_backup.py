"""Backup and restore on SQLite AND PostgreSQL (fresh scratch databases per test): a backup
taken while messages are written restores to a consistent state, restore equals source,
truncated or tampered backups are refused with a clear error, and restore never touches a
database that holds data unless forced."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import secrets
import sys
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from nova.cli import main
from nova.settings import Settings
from nova.storage.backup import (
    BackupError,
    create_backup,
    find_pg_tool,
    libpq_target,
    restore_backup,
    verify_backup,
)
from nova.storage.db import create_engine, run_migrations
from nova.storage.store import SqlStore
from tests.conftest import JWT_SECRET, _pg_admin, _pg_dsn, missing

pytestmark = pytest.mark.integration

NewDb = Callable[..., Awaitable[Settings]]
TABLES = ["users", "refresh_tokens", "conversations", "members", "membership_periods",
          "messages", "events", "calls", "nova_meta", "alembic_version"]


@pytest.fixture
async def new_database(tmp_path: Path, db_kind: str) -> AsyncIterator[NewDb]:
    """Make an empty database of the test's kind (SQLite file, or a PostgreSQL database
    created for this test and dropped afterwards), migrated unless told otherwise."""
    created: list[str] = []

    async def make(label: str, migrate: bool = True) -> Settings:
        if db_kind == "sqlite":
            settings = Settings(data_dir=tmp_path / label, jwt_secret=JWT_SECRET)
        else:
            name = f"nova_bk_{label}_{os.getpid()}_{secrets.token_hex(3)}"
            try:
                await _pg_admin(f'CREATE DATABASE "{name}"')
            except Exception as exc:
                missing(f"PostgreSQL: {exc}")
            created.append(name)
            settings = Settings(database_url=_pg_dsn(name), jwt_secret=JWT_SECRET)
        if migrate:
            await run_migrations(settings)
        return settings

    yield make
    for name in created:
        with contextlib.suppress(Exception):
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, "NOVA_JWT_SECRET": JWT_SECRET, "NOVA_DATA_DIR": str(settings.data_dir),
           "NOVA_DATABASE_URL": settings.database_url}
    return env


async def _cli(args: list[str], settings: Settings) -> Any:
    """The click CLI runs its own event loop: invoke it from a thread."""
    return await asyncio.to_thread(CliRunner().invoke, main, args, env=_env(settings))


async def _rows(settings: Settings, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` in a stable order (an independent read, not backup.py's)."""
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            cols = (await conn.execute(text(f"SELECT * FROM {table} LIMIT 0"))).keys()
            order = ", ".join(cols)
            return [tuple(r) for r in
                    (await conn.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))).all()]
    finally:
        await engine.dispose()


async def _snapshot(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    return {t: await _rows(settings, t) for t in TABLES}


async def _fill(settings: Settings) -> SqlStore:
    """A little of everything: users, a group and a direct chat, messages, a read marker,
    a refresh token."""
    store = SqlStore(create_engine(settings))
    alice = await store.create_user("alice", "Alice", "hash-a")
    bob = await store.create_user("bob", "Bob", None)
    group, _ = await store.create_conversation("group", "Ops ✓", alice.id, [bob.id], None)
    direct, _ = await store.create_conversation("direct", None, alice.id, [bob.id],
                                                f"{alice.id}:{bob.id}")
    for i in range(5):
        await store.send_message(group.id, alice.id, "text", f"hello {i} — ünïcode", f"c{i}",
                                 None)
    await store.send_message(direct.id, bob.id, "text", "psst", "d0", None)
    await store.mark_read(group.id, bob.id, 3)
    await store.add_refresh_token("a" * 64, "fam1", alice.id, 10**13)
    return store


# --- consistency under concurrent writes ------------------------------------------------------

def _body(writer: int, i: int) -> str:
    payload = f"w{writer}-{i}-" + "x" * (i % 97)
    return f"{payload}|{hashlib.sha256(payload.encode()).hexdigest()}"


async def test_backup_while_writing_restores_consistent_state(new_database: NewDb,
                                                               tmp_path: Path) -> None:
    src = await new_database("src")
    store = SqlStore(create_engine(src))
    people = [await store.create_user(f"writer{i}", f"W{i}", None) for i in range(4)]
    ids = [p.id for p in people]
    conv_a, _ = await store.create_conversation("group", "a", ids[0], ids, None)
    conv_b, _ = await store.create_conversation("group", "b", ids[0], ids, None)
    sent = {w: 0 for w in range(4)}
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        conv = conv_a if w % 2 == 0 else conv_b
        for i in range(20_000):  # bounded; stopped once the backup is done
            if stop.is_set():
                return
            await store.send_message(conv.id, ids[w], "text", _body(w, i), f"w{w}-{i}", None)
            sent[w] = i + 1

    tasks = [asyncio.create_task(writer(w)) for w in range(4)]
    try:
        for _ in range(1000):
            if min(sent.values()) >= 20:
                break
            await asyncio.sleep(0.01)
        before = dict(sent)
        out = tmp_path / "during.tar"
        # `nova backup` as its own process, as the CronJob runs it next to the serving pods.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nova", "backup", "--out", str(out), env=_env(src),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, stderr.decode()
        after = dict(sent)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await store.close()
    assert sum(after.values()) > sum(before.values()), "no write ran during the backup"

    dst = await new_database("dst", migrate=False)
    report = await restore_backup(dst, out)
    assert report.ok, report.problems
    msgs = await _rows(dst, "messages")
    convs = {r[0]: r for r in await _rows(dst, "conversations")}
    col = {name: i for i, name in enumerate(
        ["id", "conversation_id", "seq", "sender_id", "kind", "body", "client_msg_id",
         "reply_to", "created_at", "edited_at", "deleted"])}
    cols = [c for c, in await _columns(dst, "messages")]
    assert cols == list(col), cols
    by_conv: dict[str, list[int]] = {conv_a.id: [], conv_b.id: []}
    by_writer: dict[int, set[int]] = {w: set() for w in range(4)}
    for m in msgs:
        payload, _, digest = m[col["body"]].partition("|")
        assert hashlib.sha256(payload.encode()).hexdigest() == digest, f"torn message {m}"
        wpart, ipart = payload.split("-")[0:2]
        w, i = int(wpart.removeprefix("w")), int(ipart)
        assert m[col["client_msg_id"]] == f"w{w}-{i}" and m[col["sender_id"]] == ids[w]
        by_conv[m[col["conversation_id"]]].append(m[col["seq"]])
        by_writer[w].add(i)
    for cid, seqs in by_conv.items():
        last_seq = convs[cid][[c for c, in await _columns(dst, "conversations")].index(
            "last_seq")]
        assert sorted(seqs) == list(range(1, last_seq + 1)), f"gap in {cid}"
    for w, seen in by_writer.items():
        # Each writer sends in order, so a consistent snapshot holds a prefix of its messages.
        assert seen == set(range(len(seen))), f"writer {w} has holes"
        assert before[w] <= len(seen) <= after[w]
    events = await _rows(dst, "events")
    created = [e for e in events if "message.created" in e]
    assert len(created) == len(msgs), "every message has its event, and no event without one"


async def _columns(settings: Settings, table: str) -> list[tuple[str]]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            return [(k,) for k in (await conn.execute(text(f"SELECT * FROM {table} LIMIT 0"))
                                   ).keys()]
    finally:
        await engine.dispose()


# --- restore equals source --------------------------------------------------------------------

async def test_restore_equals_source(new_database: NewDb, tmp_path: Path) -> None:
    src = await new_database("src")
    store = await _fill(src)
    await store.close()
    path, manifest = await create_backup(src, tmp_path / "b.tar")
    assert manifest.tables["messages"].rows == 6 and manifest.tables["users"].rows == 2
    # Restored into a migrated, empty database (what a fresh deployment has).
    dst = await new_database("dst")
    report = await restore_backup(dst, path)
    assert report.ok, report.problems
    assert await _snapshot(dst) == await _snapshot(src)
    # The event log's position counter came along: new events continue after the old ones.
    restored = SqlStore(create_engine(dst))
    try:
        head = await restored.head_position()
        convs = {r[0] for r in await _rows(dst, "conversations")}
        alice = next(r[0] for r in await _rows(dst, "users") if r[1] == "alice")
        for cid in sorted(convs):
            await restored.send_message(cid, alice, "text", "after restore", f"new-{cid}", None)
        assert await restored.head_position() > head
    finally:
        await restored.close()


async def test_verify_reports_ok_and_is_independent_of_the_source(new_database: NewDb,
                                                                  tmp_path: Path) -> None:
    src = await new_database("src")
    await (await _fill(src)).close()
    path, manifest = await create_backup(src, f"{tmp_path / 'out'}/")
    assert path.parent == tmp_path / "out" and path.name.startswith("nova-backup-")
    report = await verify_backup(tmp_path / "out", settings=src)  # a directory: newest file
    assert report.ok and report.path == path
    assert report.manifest.total_rows == manifest.total_rows > 0


# --- truncated and tampered backups -----------------------------------------------------------

async def test_truncated_backup_is_detected(new_database: NewDb, tmp_path: Path) -> None:
    src = await new_database("src")
    await (await _fill(src)).close()
    path, _ = await create_backup(src, tmp_path / "b.tar")
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        dump = tar.getmembers()[1]
    dst = await new_database("dst", migrate=False)
    # inside the dump (start, middle, end), inside the manifest, nothing at all
    cuts = [dump.offset_data + 10, dump.offset_data + dump.size // 2,
            dump.offset_data + dump.size - 1, 700, 0]
    for cut in cuts:
        bad = tmp_path / f"cut{cut}.tar"
        bad.write_bytes(data[:cut])
        with pytest.raises(BackupError, match=r"truncated|corrupt|not a Nova backup"):
            await verify_backup(bad, settings=src)
        with pytest.raises(BackupError, match=r"truncated|corrupt|not a Nova backup"):
            await restore_backup(dst, bad)
    assert await _table_count(dst) == 0, "a refused restore wrote to the target"


async def _table_count(settings: Settings) -> int:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            return len(await conn.run_sync(lambda c: __import__("sqlalchemy").inspect(c)
                                           .get_table_names()))
    finally:
        await engine.dispose()


def _rewrite(path: Path, out: Path, *, manifest: Callable[[dict[str, Any]], None] | None = None,
             dump: Callable[[bytes], bytes] | None = None) -> None:
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    doc = json.loads(members["manifest.json"])
    name = doc["dump"]["name"]
    if dump is not None:
        members[name] = dump(members[name])
    if manifest is not None:
        manifest(doc)
    members["manifest.json"] = json.dumps(doc).encode()
    with tarfile.open(out, "w") as tar:
        for key, raw in members.items():
            info = tarfile.TarInfo(key)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


async def test_tampered_backup_is_detected(new_database: NewDb, tmp_path: Path) -> None:
    src = await new_database("src")
    await (await _fill(src)).close()
    path, _ = await create_backup(src, tmp_path / "b.tar")

    def flip(raw: bytes) -> bytes:
        at = len(raw) // 2
        return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:]

    flipped = tmp_path / "flipped.tar"
    _rewrite(path, flipped, dump=flip)
    with pytest.raises(BackupError, match="sha256 does not match the manifest"):
        await verify_backup(flipped, settings=src)

    def fewer_messages(doc: dict[str, Any]) -> None:
        doc["tables"]["messages"]["rows"] -= 1

    edited = tmp_path / "edited.tar"
    _rewrite(path, edited, manifest=fewer_messages)
    report = await verify_backup(edited, settings=src)
    assert not report.ok
    assert any("messages: 6 rows, the manifest says 5" in p for p in report.problems)

    def other_digest(doc: dict[str, Any]) -> None:
        doc["tables"]["users"]["sha256"] = "0" * 64

    edited2 = tmp_path / "edited2.tar"
    _rewrite(path, edited2, manifest=other_digest)
    report = await verify_backup(edited2, settings=src)
    assert report.problems == ["table users: content digest differs from the manifest"]

    result = await _cli(["backup", "verify", str(flipped)], src)
    assert result.exit_code == 1 and "corrupted or tampered" in result.output


async def test_sqlite_dump_rewritten_with_a_matching_checksum_is_caught(
        tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    """Someone edits a row in the dump and fixes the dump's sha256 and size: the per-table
    content digests still catch it."""
    import sqlite3

    src = make_settings("sqlite")
    await run_migrations(src)
    await (await _fill(src)).close()
    path, _ = await create_backup(src, tmp_path / "b.tar")

    def edit(raw: bytes) -> bytes:
        db = tmp_path / "edit.db"
        db.write_bytes(raw)
        conn = sqlite3.connect(db)
        conn.execute("UPDATE messages SET body = 'forged' WHERE client_msg_id = 'c1'")
        conn.commit()
        conn.close()
        return db.read_bytes()

    forged = tmp_path / "forged.tar"
    holder: dict[str, bytes] = {}

    def capture(raw: bytes) -> bytes:
        holder["dump"] = edit(raw)
        return holder["dump"]

    def fix(doc: dict[str, Any]) -> None:
        doc["dump"]["size"] = len(holder["dump"])
        doc["dump"]["sha256"] = hashlib.sha256(holder["dump"]).hexdigest()

    _rewrite(path, forged, dump=capture, manifest=fix)
    report = await verify_backup(forged)
    assert report.problems == ["table messages: content digest differs from the manifest"]


# --- restore never touches a database with data unless forced ------------------------------

async def test_restore_refuses_a_database_with_data_unless_forced(new_database: NewDb,
                                                                  tmp_path: Path) -> None:
    src = await new_database("src")
    await (await _fill(src)).close()
    path, _ = await create_backup(src, tmp_path / "b.tar")
    dst = await new_database("dst")
    other = SqlStore(create_engine(dst))
    await other.create_user("zed", "Zed", None)
    await other.close()
    before = await _snapshot(dst)
    with pytest.raises(BackupError, match=r"refusing to restore .*holds data .*users.*--force"):
        await restore_backup(dst, path)
    assert await _snapshot(dst) == before, "a refused restore changed the target"

    result = await _cli(["restore", str(path)], dst)
    assert result.exit_code == 1 and "use --force" in result.output
    assert await _snapshot(dst) == before

    result = await _cli(["restore", "--force", str(path)], dst)
    assert result.exit_code == 0, result.output
    assert await _snapshot(dst) == await _snapshot(src)


async def test_cross_dialect_restore_is_refused(new_database: NewDb, db_kind: str,
                                                tmp_path: Path) -> None:
    src = await new_database("src")
    path, _ = await create_backup(src, tmp_path / "b.tar")
    if db_kind == "sqlite":
        target = Settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    else:
        target = Settings(data_dir=tmp_path / "sqlite")
    with pytest.raises(BackupError, match="cross-dialect restore is not supported"):
        await restore_backup(target, path)


# --- CLI and tools ------------------------------------------------------------------------

def test_cli_backup_forms_and_verify(tmp_path: Path,
                                     make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("sqlite")
    env = _env(settings)
    runner = CliRunner()
    assert runner.invoke(main, ["migrate"], env=env).exit_code == 0
    one = runner.invoke(main, ["backup", "--out", str(tmp_path / "one.tar")], env=env)
    assert one.exit_code == 0 and "users=0" in one.output, one.output
    two = runner.invoke(main, ["backup", "create", "--out", str(tmp_path / "dir") + "/",
                               "--keep", "1"], env=env)
    assert two.exit_code == 0, two.output
    assert len(list((tmp_path / "dir").glob("nova-backup-*.tar"))) == 1
    ok = runner.invoke(main, ["backup", "verify", str(tmp_path / "dir")], env=env)
    assert ok.exit_code == 0 and ok.output.startswith("ok: "), ok.output
    bare = runner.invoke(main, ["backup"], env=env)
    assert bare.exit_code == 2 and "--out" in bare.output


def test_pg_tools_are_found_and_version_checked() -> None:
    import shutil

    if not shutil.which("pg_dump"):
        missing("pg_dump (apt: postgresql-client)")
    path = find_pg_tool("pg_dump", 10)
    assert Path(path).name == "pg_dump"
    with pytest.raises(BackupError, match="must be version 99 or newer"):
        find_pg_tool("pg_dump", 99)
    with pytest.raises(BackupError, match="not installed"):
        find_pg_tool("pg_nonexistent_tool", 15)


def test_libpq_target_keeps_the_password_out_of_argv() -> None:
    uri, env = libpq_target("postgresql://nova:s3cr%40t@db.internal:5433/nova?ssl=require")
    assert uri == "postgresql://nova@db.internal:5433/nova?sslmode=require"
    assert env == {"PGPASSWORD": "s3cr@t"}

"""Backup, restore and verification of Nova's database (``nova backup`` / ``nova restore``).

A backup is ONE uncompressed tar archive::

    manifest.json        what the dump holds (below), written first
    dump/nova.sqlite3    SQLite: a copy made with the online backup API (consistent while serving)
    dump/nova.pgdump     PostgreSQL: ``pg_dump --format=custom`` of an exported snapshot

The manifest records the format, Nova version, dialect, schema (Alembic) revision, creation
time, the size and sha256 of the dump, and per table the row count and a sha256 over the
table's rows in canonical form (primary-key order, columns by name, JSON values). The table
digests are computed from the SAME snapshot the dump holds: on SQLite from the copied file,
on PostgreSQL inside the transaction whose snapshot ``pg_dump --snapshot`` uses.

Restoring checks the archive (a truncated or tampered file is refused before anything is
written), refuses a target that has rows in any table unless forced, restores, and then
compares the restored database with the manifest. Cross-dialect restore (a SQLite backup
into PostgreSQL or back) is not supported: the dump formats are native to each database.

The manifest is not signed: it detects truncation, corruption and accidental edits, not an
attacker who rewrites dump and manifest together (keep backups in write-once storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import glob
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from sqlalchemy import MetaData, create_engine, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from nova import __version__
from nova.settings import Settings

FORMAT = "nova-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DUMP_NAMES = {"sqlite": "dump/nova.sqlite3", "postgresql": "dump/nova.pgdump"}
BACKUP_GLOB = "nova-backup-*.tar"
# Tables whose rows do not make a database "non-empty" (a freshly migrated one has them).
_SCHEMA_TABLES = {"alembic_version"}
_CHUNK = 1 << 20


class BackupError(RuntimeError):
    """A backup could not be made, read, restored or verified; the message says why."""


@dataclass(frozen=True)
class TableDigest:
    rows: int
    sha256: str


@dataclass
class Manifest:
    dialect: str
    schema_revision: str | None
    created_at: str
    dump_name: str
    dump_size: int
    dump_sha256: str
    tables: dict[str, TableDigest]
    nova_version: str = __version__
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        doc = {
            "format": self.format, "format_version": self.format_version,
            "nova_version": self.nova_version, "dialect": self.dialect,
            "schema_revision": self.schema_revision, "created_at": self.created_at,
            "dump": {"name": self.dump_name, "size": self.dump_size, "sha256": self.dump_sha256},
            "tables": {name: {"rows": d.rows, "sha256": d.sha256}
                       for name, d in sorted(self.tables.items())},
            "total_rows": sum(d.rows for d in self.tables.values()),
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT:
                raise BackupError("not a Nova backup (manifest format is "
                                  f"{doc.get('format')!r})")
            if doc.get("format_version") != FORMAT_VERSION:
                raise BackupError(f"backup format version {doc.get('format_version')} is not "
                                  f"supported (this Nova reads version {FORMAT_VERSION})")
            return cls(
                dialect=str(doc["dialect"]), schema_revision=doc["schema_revision"],
                created_at=str(doc["created_at"]), dump_name=str(doc["dump"]["name"]),
                dump_size=int(doc["dump"]["size"]), dump_sha256=str(doc["dump"]["sha256"]),
                tables={name: TableDigest(int(t["rows"]), str(t["sha256"]))
                        for name, t in doc["tables"].items()},
                nova_version=str(doc["nova_version"]))
        except BackupError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackupError(f"the backup manifest is malformed: {exc!r}") from None

    @property
    def total_rows(self) -> int:
        return sum(d.rows for d in self.tables.values())


@dataclass
class VerifyReport:
    """Result of comparing a restored database with a manifest."""

    manifest: Manifest
    path: Path
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- canonical content digests (both dialects) --------------------------------------------

def _canon(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return {"hex": bytes(value).hex()}
    return str(value)  # Decimal, datetime: not in Nova's schema today, but stable


def table_digests(conn: Connection) -> dict[str, TableDigest]:
    """Row count and content sha256 of every table the connection sees (reflected, so any
    schema revision works). Rows in primary-key order, columns sorted by name."""
    md = MetaData()
    md.reflect(conn)
    out: dict[str, TableDigest] = {}
    for name in sorted(md.tables):
        table = md.tables[name]
        cols = sorted(table.columns, key=lambda c: c.name)
        order = list(table.primary_key.columns) or cols
        digest = hashlib.sha256(json.dumps([c.name for c in cols]).encode())
        rows = 0
        result = conn.execution_options(yield_per=2000).execute(
            select(*cols).order_by(*order))
        for row in result:
            digest.update(json.dumps([_canon(v) for v in row], separators=(",", ":"),
                                     ensure_ascii=False).encode())
            digest.update(b"\n")
            rows += 1
        out[name] = TableDigest(rows, digest.hexdigest())
    return out


def non_empty_tables(conn: Connection) -> list[str]:
    """Tables holding at least one row (the Alembic bookkeeping table does not count)."""
    md = MetaData()
    md.reflect(conn)
    found = []
    for name in sorted(md.tables):
        if name in _SCHEMA_TABLES:
            continue
        if conn.execute(select(md.tables[name]).limit(1)).first() is not None:
            found.append(name)
    return found


def consistency_problems(conn: Connection) -> list[str]:
    """Application invariants a consistent snapshot keeps: every conversation's messages are
    numbered 1..last_seq without a gap, and no message points at a missing conversation."""
    names = set(_table_names(conn))
    if not {"conversations", "messages"} <= names:
        return []
    problems = []
    rows = conn.execute(text(
        "SELECT c.id, c.last_seq, COUNT(m.id), COALESCE(MIN(m.seq), 0), "
        "COALESCE(MAX(m.seq), 0) FROM conversations c LEFT JOIN messages m "
        "ON m.conversation_id = c.id GROUP BY c.id, c.last_seq ORDER BY c.id")).all()
    for cid, last_seq, count, lo, hi in rows:
        if not (count == last_seq == hi and (count == 0 or lo == 1)):
            problems.append(f"conversation {cid}: last_seq {last_seq} but {count} messages "
                            f"numbered {lo}..{hi} (sequence gap or torn write)")
    orphans = conn.execute(text(
        "SELECT COUNT(*) FROM messages m WHERE NOT EXISTS "
        "(SELECT 1 FROM conversations c WHERE c.id = m.conversation_id)")).scalar_one()
    if orphans:
        problems.append(f"{orphans} message(s) of conversations that do not exist")
    return problems


def _table_names(conn: Connection) -> list[str]:
    from sqlalchemy import inspect

    return list(inspect(conn).get_table_names())


def _schema_revision(conn: Connection) -> str | None:
    if "alembic_version" not in _table_names(conn):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def compare(manifest: Manifest, revision: str | None,
            digests: dict[str, TableDigest]) -> list[str]:
    problems = []
    if revision != manifest.schema_revision:
        problems.append(f"schema revision is {revision}, the manifest says "
                        f"{manifest.schema_revision}")
    for name in sorted(set(manifest.tables) | set(digests)):
        want, got = manifest.tables.get(name), digests.get(name)
        if want is None:
            problems.append(f"table {name} is not in the manifest")
        elif got is None:
            problems.append(f"table {name} is missing after restore")
        elif want.rows != got.rows:
            problems.append(f"table {name}: {got.rows} rows, the manifest says {want.rows}")
        elif want.sha256 != got.sha256:
            problems.append(f"table {name}: content digest differs from the manifest")
    return problems


# --- files and archives ---------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def backup_file_name(when: dt.datetime) -> str:
    return f"nova-backup-{when.strftime('%Y%m%dT%H%M%SZ')}.tar"


def _write_archive(out: Path, manifest: Manifest, dump: Path) -> None:
    """Write the archive next to ``out`` and rename it into place: a crash never leaves a
    file that looks complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # password hashes
        with open(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                data = manifest.to_json()
                info = tarfile.TarInfo(MANIFEST_NAME)
                info.size, info.mode, info.mtime = len(data), 0o600, int(_now().timestamp())
                tar.addfile(info, io.BytesIO(data))
                info = tarfile.TarInfo(manifest.dump_name)
                info.size, info.mode, info.mtime = manifest.dump_size, 0o600, info.mtime
                with dump.open("rb") as fh:
                    tar.addfile(info, fh)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def latest_backup(directory: Path) -> Path:
    found = sorted(directory.glob(BACKUP_GLOB))
    if not found:
        raise BackupError(f"no backup ({BACKUP_GLOB}) in {directory}")
    return found[-1]


def resolve_backup(path: Path) -> Path:
    """``path`` itself, or for a directory its newest ``nova-backup-*.tar``."""
    return latest_backup(path) if path.is_dir() else path


def prune_backups(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups in ``directory``; return what went."""
    found = sorted(directory.glob(BACKUP_GLOB))
    doomed = found[:-keep] if keep > 0 else []
    for path in doomed:
        path.unlink()
    return doomed


@contextlib.contextmanager
def open_backup(path: Path, workdir: Path) -> Iterator[tuple[Manifest, Path]]:
    """Read and check the archive: return its manifest and the dump extracted to
    ``workdir``. Raise ``BackupError`` if it is truncated, corrupt or tampered with."""
    path = resolve_backup(path)
    if not path.is_file():
        raise BackupError(f"{path}: no such backup file")
    try:
        with tarfile.open(path, mode="r:") as tar:
            try:
                member = tar.getmember(MANIFEST_NAME)
            except KeyError:
                raise BackupError(f"{path}: not a Nova backup (no {MANIFEST_NAME})") from None
            fh = tar.extractfile(member)
            assert fh is not None
            manifest = Manifest.from_json(fh.read())
            if manifest.dump_name not in DUMP_NAMES.values():
                raise BackupError(f"{path}: unexpected dump name {manifest.dump_name!r}")
            try:
                dump_member = tar.getmember(manifest.dump_name)
            except KeyError:
                raise BackupError(f"{path}: the dump {manifest.dump_name} is missing "
                                  "(truncated archive?)") from None
            dump = workdir / Path(manifest.dump_name).name
            src = tar.extractfile(dump_member)
            assert src is not None
            digest = hashlib.sha256()
            size = 0
            with dump.open("wb") as out:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BackupError(f"{path}: the archive is truncated or corrupt ({exc})") from None
    if size != manifest.dump_size:
        raise BackupError(f"{path}: the dump is {size} bytes, the manifest says "
                          f"{manifest.dump_size} (truncated backup)")
    if digest.hexdigest() != manifest.dump_sha256:
        raise BackupError(f"{path}: the dump's sha256 does not match the manifest "
                          "(corrupted or tampered backup)")
    yield manifest, dump


# --- SQLite -----------------------------------------------------------------------------------

def sqlite_path(settings: Settings) -> Path:
    database = make_url(settings.sqlalchemy_url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database has nothing to back up")
    return Path(database)


def _sqlite_sync(path: Path, fn: Any) -> Any:
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return fn(conn)
    finally:
        engine.dispose()


def _sqlite_copy(src_path: Path, dst_path: Path, *, wal: bool) -> None:
    """Copy a whole database with SQLite's online backup API. The copy is one step under one
    read transaction: a consistent snapshot, while writers keep going (WAL mode)."""
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(dst_path, timeout=30)
    try:
        src.backup(dst)
        dst.execute(f"PRAGMA journal_mode={'WAL' if wal else 'DELETE'}")
        dst.commit()
    finally:
        dst.close()
        src.close()


def _sqlite_integrity(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        fks = conn.execute("PRAGMA foreign_key_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return [f"SQLite integrity check failed: {exc}"]
    finally:
        conn.close()
    problems = [f"SQLite integrity: {r}" for r in result if r != "ok"]
    if fks:
        problems.append(f"SQLite foreign key check: {len(fks)} dangling reference(s)")
    return problems


def _sqlite_backup(settings: Settings, work: Path) -> Manifest:
    source = sqlite_path(settings)
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source}")
    dump = work / Path(DUMP_NAMES["sqlite"]).name
    try:
        _sqlite_copy(source, dump, wal=False)
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup of {source} failed: {exc}") from None
    revision, digests = _sqlite_sync(dump, lambda c: (_schema_revision(c), table_digests(c)))
    return Manifest(dialect="sqlite", schema_revision=revision, created_at=_now().isoformat(),
                    dump_name=DUMP_NAMES["sqlite"], dump_size=dump.stat().st_size,
                    dump_sha256=_sha256_file(dump), tables=digests)


def _sqlite_restore(dump: Path, target: Path, force: bool) -> None:
    if target.is_file() and target.stat().st_size > 0:
        try:
            found = _sqlite_sync(target, non_empty_tables)
        except SQLAlchemyError as exc:
            raise BackupError(f"cannot read the target database {target}: {exc}") from None
        if found and not force:
            raise BackupError(
                f"refusing to restore into {target}: it holds data (tables "
                f"{', '.join(found)}); use --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _sqlite_copy(dump, target, wal=True)
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite restore into {target} failed: {exc}") from None


def _sqlite_check(path: Path, manifest: Manifest) -> list[str]:
    problems = _sqlite_integrity(path)
    revision, digests, consistency = _sqlite_sync(
        path, lambda c: (_schema_revision(c), table_digests(c), consistency_problems(c)))
    return problems + compare(manifest, revision, digests) + consistency


# --- PostgreSQL -------------------------------------------------------------------------------

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


def _tool_major(path: str) -> int | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except OSError:
        return None
    match = _VERSION.search(out)
    return int(match.group(1)) if match else None


def _tool_candidates(name: str) -> list[str]:
    found: list[str] = []
    if path := shutil.which(name):
        found.append(path)
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                    timeout=10, check=False).stdout.strip()
            if bindir and (Path(bindir) / name).is_file():
                found.append(str(Path(bindir) / name))

    def major(p: str) -> int:
        m = re.search(r"/postgresql/(\d+)/", p)
        return int(m.group(1)) if m else 0

    found += sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=major, reverse=True)
    return list(dict.fromkeys(found))


def find_pg_tool(name: str, server_major: int) -> str:
    """``pg_dump``/``pg_restore`` of a major version >= the server's: PATH first, then
    ``pg_config --bindir``, then /usr/lib/postgresql/*/bin (newest first)."""
    seen = []
    for candidate in _tool_candidates(name):
        major = _tool_major(candidate)
        seen.append(f"{candidate} ({major or '?'})")
        if major is not None and major >= server_major:
            return candidate
    if not seen:
        raise BackupError(f"{name} is not installed: install the PostgreSQL client tools "
                          f"(version {server_major} or newer; Debian: postgresql-client)")
    raise BackupError(f"{name} must be version {server_major} or newer to work with this "
                      f"server; found {', '.join(seen)}")


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection URI without the password, plus environment (PGPASSWORD) for the
    PostgreSQL tools: the password never shows in the process list."""
    parts = urlsplit(url)
    scheme = "postgresql"
    netloc = parts.hostname or ""
    if parts.hostname and ":" in parts.hostname:
        netloc = f"[{parts.hostname}]"
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    query = [("sslmode" if k == "ssl" else k, v) for k, v in parse_qsl(parts.query)]
    env = {"PGPASSWORD": unquote(parts.password)} if parts.password else {}
    return urlunsplit((scheme, netloc, parts.path, urlencode(query), "")), env


def _async_url(url: str) -> str:
    return Settings(database_url=url).sqlalchemy_url


@contextlib.asynccontextmanager
async def _pg_connection(url: str, **options: Any) -> AsyncIterator[Any]:
    engine = create_async_engine(_async_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            if options:
                conn = await conn.execution_options(**options)
            yield conn
    finally:
        await engine.dispose()


async def _server_major(url: str) -> int:
    async with _pg_connection(url) as conn:
        num = (await conn.execute(text("SHOW server_version_num"))).scalar_one()
    return int(num) // 10000


async def _run_tool(args: list[str], env: dict[str, str], what: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env})
    out, err = await proc.communicate()
    if proc.returncode != 0:
        detail = (err or out).decode(errors="replace").strip()[-2000:]
        raise BackupError(f"{what} failed (exit {proc.returncode}): {detail}")


async def _pg_backup(settings: Settings, work: Path) -> Manifest:
    url = settings.database_url
    pg_dump = find_pg_tool("pg_dump", await _server_major(url))
    target, env = libpq_target(url)
    dump = work / Path(DUMP_NAMES["postgresql"]).name
    async with _pg_connection(url, isolation_level="REPEATABLE READ") as conn, conn.begin():
        # pg_dump reads the very snapshot this transaction sees, so the manifest's digests
        # describe exactly what the dump holds, however busy the database is.
        snapshot = (await conn.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
        dump_task = asyncio.create_task(_run_tool(
            [pg_dump, "--format=custom", "--no-owner", "--no-privileges",
             f"--snapshot={snapshot}", f"--file={dump}", f"--dbname={target}"], env, "pg_dump"))
        try:
            revision, digests = await conn.run_sync(
                lambda c: (_schema_revision(c), table_digests(c)))
        finally:
            await dump_task  # the snapshot must outlive pg_dump's start; wait for it anyway
    return Manifest(dialect="postgresql", schema_revision=revision,
                    created_at=_now().isoformat(), dump_name=DUMP_NAMES["postgresql"],
                    dump_size=dump.stat().st_size, dump_sha256=_sha256_file(dump),
                    tables=digests)


async def _pg_restore(dump: Path, url: str, force: bool) -> None:
    async with _pg_connection(url) as conn:
        found = await conn.run_sync(non_empty_tables)
    if found and not force:
        raise BackupError(f"refusing to restore into {libpq_target(url)[0]}: it holds data "
                          f"(tables {', '.join(found)}); use --force to replace it")
    pg_restore = find_pg_tool("pg_restore", await _server_major(url))
    target, env = libpq_target(url)
    # --clean --if-exists replaces the tables the dump holds (a migrated, empty schema or,
    # forced, an old copy); --single-transaction: all of it or nothing.
    await _run_tool([pg_restore, "--clean", "--if-exists", "--no-owner", "--no-privileges",
                     "--single-transaction", "--exit-on-error", f"--dbname={target}",
                     str(dump)], env, "pg_restore")


async def _pg_check(url: str, manifest: Manifest) -> list[str]:
    async with _pg_connection(url) as conn:
        revision, digests, consistency = await conn.run_sync(
            lambda c: (_schema_revision(c), table_digests(c), consistency_problems(c)))
    return compare(manifest, revision, digests) + consistency


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def _pg_admin(url: str, sql: str) -> None:
    async with _pg_connection(url, isolation_level="AUTOCOMMIT") as conn:
        await conn.execute(text(sql))


@contextlib.asynccontextmanager
async def scratch_postgres(url: str) -> AsyncIterator[str]:
    """A new, empty database on the server of ``url`` (needs CREATEDB), dropped after."""
    name = f"nova_verify_{secrets.token_hex(4)}"
    try:
        await _pg_admin(url, f'CREATE DATABASE "{name}"')
    except SQLAlchemyError as exc:
        raise BackupError(f"cannot create a scratch database on {libpq_target(url)[0]}: "
                          f"{exc.__cause__ or exc} (grant CREATEDB, or pass --scratch-url)"
                          ) from None
    try:
        yield _with_database(url, name)
    finally:
        await _pg_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the operations -------------------------------------------------------------------------

def _resolve_out(out: str | Path) -> Path:
    if Path(out).is_dir() or str(out).endswith(os.sep):
        return Path(out) / backup_file_name(_now())
    return Path(out)


async def create_backup(settings: Settings, out: str | Path) -> tuple[Path, Manifest]:
    """Back up the configured database to ``out`` (a file, or a directory, existing or
    ending in ``/``, to put a timestamped ``nova-backup-*.tar`` in). Safe while serving."""
    path = _resolve_out(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".nova-backup-", dir=path.parent) as tmp:
        work = Path(tmp)
        try:
            if settings.is_postgres:
                manifest = await _pg_backup(settings, work)
            else:
                manifest = await asyncio.to_thread(_sqlite_backup, settings, work)
        except SQLAlchemyError as exc:
            raise BackupError(f"cannot read the database: {exc.__cause__ or exc}") from None
        await asyncio.to_thread(_write_archive, path, manifest,
                                work / Path(manifest.dump_name).name)
    return path, manifest


def _check_dialect(manifest: Manifest, settings: Settings) -> None:
    dialect = "postgresql" if settings.is_postgres else "sqlite"
    if manifest.dialect != dialect:
        raise BackupError(f"this is a {manifest.dialect} backup and the target is {dialect}: "
                          "cross-dialect restore is not supported")


async def restore_backup(settings: Settings, path: Path, *, force: bool = False) -> VerifyReport:
    """Restore ``path`` into the configured database (refused if it holds data, unless
    ``force``), then compare the result with the manifest. Stop Nova first on SQLite."""
    path = resolve_backup(path)
    with tempfile.TemporaryDirectory(prefix="nova-restore-") as tmp:
        with open_backup(path, Path(tmp)) as (manifest, dump):
            _check_dialect(manifest, settings)
            try:
                if settings.is_postgres:
                    await _pg_restore(dump, settings.database_url, force)
                    problems = await _pg_check(settings.database_url, manifest)
                else:
                    target = sqlite_path(settings)
                    await asyncio.to_thread(_sqlite_restore, dump, target, force)
                    problems = await asyncio.to_thread(_sqlite_check, target, manifest)
            except SQLAlchemyError as exc:
                raise BackupError(f"database error: {exc.__cause__ or exc}") from None
    return VerifyReport(manifest, path, problems)


async def verify_backup(path: Path, *, settings: Settings | None = None,
                        scratch_url: str | None = None) -> VerifyReport:
    """Restore ``path`` (a file, or a directory: its newest backup) into a scratch database
    and compare it with the manifest. SQLite: a temporary file. PostgreSQL: ``scratch_url``
    (an empty database whose content is replaced), else a new database created on the
    server of ``settings.database_url`` and dropped afterwards."""
    path = resolve_backup(path)
    with tempfile.TemporaryDirectory(prefix="nova-verify-") as tmp:
        with open_backup(path, Path(tmp)) as (manifest, dump):
            try:
                if manifest.dialect == "sqlite":
                    scratch = Path(tmp) / "scratch.db"
                    await asyncio.to_thread(_sqlite_restore, dump, scratch, False)
                    problems = await asyncio.to_thread(_sqlite_check, scratch, manifest)
                    return VerifyReport(manifest, path, problems)
                if scratch_url:
                    await _pg_restore(dump, scratch_url, True)
                    return VerifyReport(manifest, path, await _pg_check(scratch_url, manifest))
                if settings is None or not settings.is_postgres:
                    raise BackupError("verifying a PostgreSQL backup needs a server: set "
                                      "NOVA_DATABASE_URL (a scratch database is created "
                                      "there) or pass --scratch-url")
                async with scratch_postgres(settings.database_url) as url:
                    await _pg_restore(dump, url, False)
                    return VerifyReport(manifest, path, await _pg_check(url, manifest))
            except SQLAlchemyError as exc:
                raise BackupError(f"database error: {exc.__cause__ or exc}") from None


__all__ = [
    "BackupError",
    "Manifest",
    "TableDigest",
    "VerifyReport",
    "consistency_problems",
    "create_backup",
    "find_pg_tool",
    "latest_backup",
    "libpq_target",
    "non_empty_tables",
    "open_backup",
    "prune_backups",
    "resolve_backup",
    "restore_backup",
    "table_digests",
    "verify_backup",
]

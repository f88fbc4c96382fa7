"""A small asyncio STUN/TURN client for operators (``nova turn check``) and tests.

Written from RFC 8489 (STUN) and RFC 8656 (TURN) — the few messages a health check needs:
Binding, Allocate with the long-term credential mechanism (401 → REALM/NONCE →
MESSAGE-INTEGRITY), CreatePermission and Refresh. Every request carries a FINGERPRINT.
Transports: UDP (retransmitted with a doubling RTO inside an overall timeout), TCP and TLS
(stream framing by the STUN length field). IPv4 and IPv6.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import os
import socket
import ssl
import struct
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Allocation",
    "CheckResult",
    "StunError",
    "StunMessage",
    "StunTimeout",
    "TurnCheckReport",
    "TurnClient",
    "check_turn_server",
    "parse_host_port",
]

Transport = Literal["udp", "tcp", "tls"]

MAGIC_COOKIE = 0x2112A442
FINGERPRINT_XOR = 0x5354554E

# methods
BINDING = 0x001
ALLOCATE = 0x003
REFRESH = 0x004
CREATE_PERMISSION = 0x008
# classes
REQUEST, INDICATION, SUCCESS, ERROR = 0, 1, 2, 3
# attributes
MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_TRANSPORT = 0x0019
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
FINGERPRINT = 0x8028

_UDP_PROTO = 17


class StunError(Exception):
    """The server answered with an error response (``code`` e.g. 401, 403, 438)."""

    def __init__(self, code: int, reason: str, response: StunMessage | None = None) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason
        self.response = response


class StunTimeout(Exception):
    """No (valid) answer in time, or the server cannot be reached."""


@dataclass
class StunMessage:
    """One STUN message: method, class, transaction id and raw attributes (in order)."""

    method: int
    cls: int
    transaction_id: bytes = field(default_factory=lambda: os.urandom(12))
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    def add(self, attr_type: int, value: bytes) -> StunMessage:
        self.attributes.append((attr_type, value))
        return self

    def get(self, attr_type: int) -> bytes | None:
        for kind, value in self.attributes:
            if kind == attr_type:
                return value
        return None

    # --- encoding -------------------------------------------------------------------------
    @property
    def message_type(self) -> int:
        m, c = self.method, self.cls
        return ((m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2)
                | ((c & 1) << 4) | ((c & 2) << 7))

    def _header(self, body_length: int) -> bytes:
        return struct.pack("!HHI", self.message_type, body_length, MAGIC_COOKIE) + \
            self.transaction_id

    def encode(self, integrity_key: bytes | None = None, fingerprint: bool = True) -> bytes:
        """The wire bytes, with MESSAGE-INTEGRITY (if ``integrity_key``) and FINGERPRINT."""
        body = b"".join(_attr(kind, value) for kind, value in self.attributes)
        if integrity_key is not None:
            # HMAC over everything before MESSAGE-INTEGRITY, length counting MI itself (24).
            mac = hmac.new(integrity_key, self._header(len(body) + 24) + body,
                           hashlib.sha1).digest()
            body += _attr(MESSAGE_INTEGRITY, mac)
        if fingerprint:
            crc = binascii.crc32(self._header(len(body) + 8) + body) ^ FINGERPRINT_XOR
            body += _attr(FINGERPRINT, struct.pack("!I", crc & 0xFFFFFFFF))
        return self._header(len(body)) + body

    # --- decoding -------------------------------------------------------------------------
    @classmethod
    def decode(cls, data: bytes) -> StunMessage:
        """Parse one message; raise ValueError if it is not STUN or its FINGERPRINT is wrong."""
        if len(data) < 20:
            raise ValueError("short STUN message")
        msg_type, length, cookie = struct.unpack("!HHI", data[:8])
        if msg_type & 0xC000 or cookie != MAGIC_COOKIE or len(data) < 20 + length:
            raise ValueError("not a STUN message")
        method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
        klass = ((msg_type & 0x0010) >> 4) | ((msg_type & 0x0100) >> 7)
        msg = cls(method, klass, data[8:20])
        pos, end = 20, 20 + length
        while pos + 4 <= end:
            kind, size = struct.unpack("!HH", data[pos:pos + 4])
            value = data[pos + 4:pos + 4 + size]
            if kind == FINGERPRINT:
                crc = binascii.crc32(data[:pos]) ^ FINGERPRINT_XOR
                if struct.unpack("!I", value)[0] != crc & 0xFFFFFFFF:
                    raise ValueError("bad STUN FINGERPRINT")
            msg.attributes.append((kind, value))
            pos += 4 + size + (-size % 4)
        msg._raw = data[:end]  # type: ignore[attr-defined]
        return msg

    def check_integrity(self, key: bytes) -> bool:
        """True if this decoded message carries a MESSAGE-INTEGRITY valid for ``key``."""
        raw: bytes = getattr(self, "_raw", b"")
        pos = 20
        while pos + 4 <= len(raw):
            kind, size = struct.unpack("!HH", raw[pos:pos + 4])
            if kind == MESSAGE_INTEGRITY:
                header = raw[:2] + struct.pack("!H", pos + 24 - 20) + raw[4:20]
                mac = hmac.new(key, header + raw[20:pos], hashlib.sha1).digest()
                return hmac.compare_digest(mac, raw[pos + 4:pos + 24])
            pos += 4 + size + (-size % 4)
        return False

    def error(self) -> tuple[int, str] | None:
        value = self.get(ERROR_CODE)
        if value is None or len(value) < 4:
            return None
        return (value[2] & 0x07) * 100 + value[3], value[4:].decode("utf-8", "replace")

    def xor_address(self, attr_type: int) -> tuple[str, int] | None:
        value = self.get(attr_type)
        return None if value is None else decode_xor_address(value, self.transaction_id)


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def encode_xor_address(ip: str, port: int, transaction_id: bytes) -> bytes:
    addr = ipaddress.ip_address(ip)
    xport = port ^ (MAGIC_COOKIE >> 16)
    raw = addr.packed
    mask = struct.pack("!I", MAGIC_COOKIE) + (transaction_id if addr.version == 6 else b"")
    xaddr = bytes(a ^ b for a, b in zip(raw, mask, strict=True))
    return struct.pack("!BBH", 0, 1 if addr.version == 4 else 2, xport) + xaddr


def decode_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    family, xport = value[1], struct.unpack("!H", value[2:4])[0]
    size = 4 if family == 1 else 16
    mask = struct.pack("!I", MAGIC_COOKIE) + (transaction_id if family == 2 else b"")
    raw = bytes(a ^ b for a, b in zip(value[4:4 + size], mask, strict=True))
    return str(ipaddress.ip_address(raw)), xport ^ (MAGIC_COOKIE >> 16)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 §9.2.2: MD5(username ":" realm ":" password) (SASLprep is a no-op for ASCII)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


# --- transports ----------------------------------------------------------------------------

class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.queue.put_nowait(exc)


@dataclass(frozen=True, slots=True)
class Allocation:
    """A granted TURN allocation."""

    relayed: tuple[str, int]
    mapped: tuple[str, int] | None
    lifetime: int


class TurnClient:
    """One client connection (UDP 5-tuple, TCP or TLS stream) to a STUN/TURN server.

    ``async with TurnClient(host, port, "udp") as client: await client.binding()``.
    A TURN allocation belongs to the connection: allocate, permit and refresh on one client.
    """

    def __init__(self, host: str, port: int = 3478, transport: Transport = "udp", *,
                 timeout: float = 5.0, tls_verify: bool = True) -> None:
        self.host, self.port, self.transport = host, port, transport
        self.timeout = timeout
        self.tls_verify = tls_verify
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_proto: _UdpProtocol | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._auth: tuple[str, str, bytes, str] | None = None  # username, realm, key, nonce

    async def __aenter__(self) -> TurnClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.transport == "udp":
                infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
                family, sockaddr = infos[0][0], infos[0][4]
                remote = (str(sockaddr[0]), int(sockaddr[1]))
                self._udp, self._udp_proto = await loop.create_datagram_endpoint(
                    _UdpProtocol, remote_addr=remote, family=family)
            else:
                ctx = None
                if self.transport == "tls":
                    ctx = ssl.create_default_context()
                    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                    if not self.tls_verify:
                        ctx.check_hostname = False
                        ctx.verify_mode = ssl.CERT_NONE
                self._reader, self._writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port, ssl=ctx), self.timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise StunTimeout(f"cannot reach {self.host}:{self.port}/{self.transport}: "
                              f"{exc or type(exc).__name__}") from None

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await self._writer.wait_closed()
            self._writer = None

    @property
    def local_address(self) -> tuple[str, int]:
        sock = self._udp if self._udp is not None else self._writer
        assert sock is not None, "not connected"
        name = sock.get_extra_info("sockname")
        return name[0], name[1]

    # --- one transaction ------------------------------------------------------------------
    async def request(self, msg: StunMessage, integrity_key: bytes | None = None) -> StunMessage:
        """Send ``msg`` and return the success response; raise StunError or StunTimeout."""
        wire = msg.encode(integrity_key)
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    if self._udp is not None:
                        response = await self._udp_transaction(msg.transaction_id, wire)
                    else:
                        response = await self._stream_transaction(msg.transaction_id, wire)
            except TimeoutError:
                raise StunTimeout(
                    f"no answer from {self.host}:{self.port}/{self.transport} "
                    f"within {self.timeout:g}s") from None
        if response.cls == ERROR:
            code, reason = response.error() or (0, "error response without ERROR-CODE")
            raise StunError(code, reason, response)
        return response

    async def _udp_transaction(self, tid: bytes, wire: bytes) -> StunMessage:
        assert self._udp is not None and self._udp_proto is not None
        rto = 0.25
        while True:
            self._udp.sendto(wire)
            deadline = asyncio.get_running_loop().time() + rto
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    item = await asyncio.wait_for(self._udp_proto.queue.get(), left)
                except TimeoutError:
                    break
                if isinstance(item, Exception):
                    raise StunTimeout(
                        f"{self.host}:{self.port}/udp unreachable: {item}") from None
                answer = self._match(item, tid)
                if answer is not None:
                    return answer
            rto = min(rto * 2, 2.0)

    async def _stream_transaction(self, tid: bytes, wire: bytes) -> StunMessage:
        assert self._reader is not None and self._writer is not None
        try:
            self._writer.write(wire)
            await self._writer.drain()
            while True:
                header = await self._reader.readexactly(20)
                length = struct.unpack("!H", header[2:4])[0]
                answer = self._match(header + await self._reader.readexactly(length), tid)
                if answer is not None:
                    return answer
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            raise StunTimeout(f"{self.host}:{self.port}/{self.transport} closed the "
                              f"connection: {exc or type(exc).__name__}") from None

    @staticmethod
    def _match(data: bytes, tid: bytes) -> StunMessage | None:
        try:
            answer = StunMessage.decode(data)
        except ValueError:
            return None
        if answer.transaction_id != tid or answer.cls not in (SUCCESS, ERROR):
            return None
        return answer

    # --- STUN / TURN operations -----------------------------------------------------------
    async def binding(self) -> tuple[str, int]:
        """STUN Binding: the client's address as the server sees it (XOR-MAPPED-ADDRESS)."""
        response = await self.request(StunMessage(BINDING, REQUEST))
        mapped = response.xor_address(XOR_MAPPED_ADDRESS)
        if mapped is None:
            raise StunError(0, "Binding response without XOR-MAPPED-ADDRESS")
        return mapped

    async def allocate(self, username: str, password: str, lifetime: int = 600) -> Allocation:
        """TURN Allocate (UDP relay) with the long-term credential mechanism."""
        msg = StunMessage(ALLOCATE, REQUEST)
        msg.add(REQUESTED_TRANSPORT, bytes([_UDP_PROTO, 0, 0, 0]))
        msg.add(LIFETIME, struct.pack("!I", lifetime))
        try:
            response = await self.request(msg)  # no credentials: expect 401 with realm+nonce
        except StunError as exc:
            if exc.code != 401:
                raise
            challenge = exc.response
            realm = (challenge.get(REALM) or b"").decode() if challenge else ""
            nonce = (challenge.get(NONCE) or b"").decode() if challenge else ""
            if not realm or not nonce:
                raise StunError(401, "challenge without REALM/NONCE") from None
            self._auth = (username, realm, long_term_key(username, realm, password), nonce)
            response = await self._authenticated(ALLOCATE, [
                (REQUESTED_TRANSPORT, bytes([_UDP_PROTO, 0, 0, 0])),
                (LIFETIME, struct.pack("!I", lifetime)),
            ])
        relayed = response.xor_address(XOR_RELAYED_ADDRESS)
        if relayed is None:
            raise StunError(0, "Allocate response without XOR-RELAYED-ADDRESS")
        granted = response.get(LIFETIME)
        return Allocation(relayed=relayed, mapped=response.xor_address(XOR_MAPPED_ADDRESS),
                          lifetime=struct.unpack("!I", granted)[0] if granted else lifetime)

    async def create_permission(self, peer_ip: str) -> None:
        """CreatePermission for ``peer_ip`` on this connection's allocation (sends nothing to
        the peer). A server that forbids the peer answers 403."""
        peer = str(ipaddress.ip_address(peer_ip))
        await self._authenticated(CREATE_PERMISSION, [(XOR_PEER_ADDRESS, peer)])

    async def refresh(self, lifetime: int = 0) -> None:
        """Refresh the allocation; ``lifetime=0`` deletes it."""
        await self._authenticated(REFRESH, [(LIFETIME, struct.pack("!I", lifetime))])

    async def _authenticated(self, method: int,
                             attrs: list[tuple[int, bytes | str]]) -> StunMessage:
        if self._auth is None:
            raise StunError(0, "no allocation on this connection")
        for attempt in range(2):
            username, realm, key, nonce = self._auth
            msg = StunMessage(method, REQUEST)
            for kind, value in attrs:
                if isinstance(value, str):  # a peer IP
                    msg.add(kind, encode_xor_address(value, 0, msg.transaction_id))
                else:
                    msg.add(kind, value)
            msg.add(USERNAME, username.encode()).add(REALM, realm.encode())
            msg.add(NONCE, nonce.encode())
            try:
                response = await self.request(msg, integrity_key=key)
            except StunError as exc:
                # 438 Stale Nonce: retry once with the fresh nonce the server sent.
                fresh = exc.response.get(NONCE) if exc.response is not None else None
                if exc.code == 438 and attempt == 0 and fresh:
                    self._auth = (username, realm, key, fresh.decode())
                    continue
                raise
            if response.get(MESSAGE_INTEGRITY) is not None and not response.check_integrity(key):
                raise StunError(0, "response MESSAGE-INTEGRITY does not match")
            return response
        raise AssertionError("unreachable")


# --- the operator check --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CheckResult:
    """One step of ``nova turn check``: passed or not, and why."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class TurnCheckReport:
    target: str
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    def table(self) -> str:
        width = max(len(r.name) for r in self.results) if self.results else 4
        lines = [f"nova turn check {self.target}"]
        lines += [f"  {'PASS' if r.ok else 'FAIL'}  {r.name:<{width}}  {r.detail}"
                  for r in self.results]
        lines.append("result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def parse_host_port(target: str, default_port: int = 3478) -> tuple[str, int]:
    """``host``, ``host:port``, ``1.2.3.4:3478``, ``[::1]:3478`` or ``::1`` → (host, port)."""
    target = target.strip()
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif target.count(":") == 1:
        host, port = target.split(":")
    else:
        host, port = target, ""
    if not host:
        raise ValueError(f"no host in {target!r}")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"bad port in {target!r}")
    return host, int(port) if port else default_port


async def check_turn_server(host: str, port: int, *, transport: Transport = "udp",
                            username: str | None = None, password: str | None = None,
                            peers: tuple[str, ...] = (), denied_peers: tuple[str, ...] = (),
                            step_timeout: float = 5.0,
                            tls_verify: bool = True) -> TurnCheckReport:
    """STUN Binding, then (with credentials) a TURN Allocate, CreatePermission for each of
    ``peers`` (must be granted) and ``denied_peers`` (must be refused with 403), and a
    Refresh(0) that frees the allocation. ``step_timeout`` bounds each transaction. Never
    raises for a network or protocol failure: every failure is a FAIL row with its reason."""
    results: list[CheckResult] = []
    target = f"{host}:{port}/{transport}"
    try:
        async with TurnClient(host, port, transport, timeout=step_timeout,
                              tls_verify=tls_verify) as client:
            try:
                mapped = await client.binding()
                results.append(CheckResult("stun_binding", True,
                                           f"mapped address {mapped[0]}:{mapped[1]}"))
            except (StunError, StunTimeout) as exc:
                results.append(CheckResult("stun_binding", False, str(exc)))
                return TurnCheckReport(target, tuple(results))
            if username is None or password is None:
                return TurnCheckReport(target, tuple(results))
            try:
                alloc = await client.allocate(username, password)
                results.append(CheckResult(
                    "turn_allocate", True,
                    f"relayed {alloc.relayed[0]}:{alloc.relayed[1]}, lifetime {alloc.lifetime}s"))
            except StunError as exc:
                hint = " (credentials refused: same secret in Nova and coturn? clocks in sync?)" \
                    if exc.code == 401 else ""
                results.append(CheckResult("turn_allocate", False, f"{exc}{hint}"))
                return TurnCheckReport(target, tuple(results))
            except StunTimeout as exc:
                results.append(CheckResult("turn_allocate", False, str(exc)))
                return TurnCheckReport(target, tuple(results))
            for peer in peers:
                try:
                    await client.create_permission(peer)
                    results.append(CheckResult(f"permission {peer}", True, "granted"))
                except (StunError, StunTimeout) as exc:
                    results.append(CheckResult(f"permission {peer}", False, f"refused: {exc}"))
            for peer in denied_peers:
                try:
                    await client.create_permission(peer)
                    results.append(CheckResult(f"denied {peer}", False,
                                               "GRANTED: the server relays to this peer"))
                except StunError as exc:
                    # 403 Forbidden IP; 443: the relay's address family cannot reach it at all.
                    results.append(CheckResult(f"denied {peer}", exc.code in (403, 443),
                                               f"refused: {exc}"))
                except StunTimeout as exc:
                    results.append(CheckResult(f"denied {peer}", False, str(exc)))
            with contextlib.suppress(StunError, StunTimeout):
                await client.refresh(0)
    except StunTimeout as exc:
        results.append(CheckResult("connect", False, str(exc)))
    return TurnCheckReport(target, tuple(results))

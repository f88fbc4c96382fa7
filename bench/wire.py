"""A lean WebSocket client for the load generator (RFC 6455, text frames, no extensions).

Why not the ``websockets`` client: on one core it tops out near 35,000 received frames/s,
below what the servers deliver, so the generator, not the server, would be measured. This
protocol parses every frame of a TCP read in one pass and hands the payload (bytes) to a
callback; the callers skip JSON parsing where a byte search is enough.

Client frames carry the all-zero masking key (legal; the server unmasks as usual) so
sending needs no XOR pass. Pings are answered; a close frame is echoed and the socket closed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
ZERO_MASK = b"\x00\x00\x00\x00"


def encode_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + ZERO_MASK + payload


class HandshakeError(ConnectionError):
    """The server did not answer the upgrade with 101."""


class WsProtocol(asyncio.Protocol):
    """One client WebSocket: ``on_text(payload)`` per text message, ``on_close()`` once."""

    def __init__(self, on_text: Callable[[bytes], None], on_close: Callable[[], None],
                 on_connect: Callable[[WsProtocol], None] | None = None) -> None:
        self.on_text = on_text
        self.on_connect = on_connect
        self.on_close = on_close
        self.buf = bytearray()
        self.fragments: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.is_open = False
        self.paused = False
        self.drained: asyncio.Event = asyncio.Event()
        self.drained.set()

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.on_connect is not None:  # frames may arrive with the 101: let on_text reply
            self.on_connect(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.is_open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[:end + 4]
            status = head.split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                if not self.opened.done():
                    self.opened.set_exception(HandshakeError(status.decode(errors="replace")))
                self.close()
                return
            self.is_open = True
            self.opened.set_result(None)
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        self.drained.set()
        self.on_close()

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()

    # --- frames -------------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self.buf
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hdr = 10
            if b1 & 0x80:  # servers never mask; refuse rather than guess
                self.close(1002)
                return
            if n - pos < hdr + length:
                break
            payload = bytes(buf[pos + hdr:pos + hdr + length])
            pos += hdr + length
            opcode = b0 & 0x0F
            if opcode == OP_TEXT or opcode == OP_BINARY:
                if b0 & 0x80:
                    self.on_text(payload)
                else:
                    self.fragments = [payload]
            elif opcode == OP_CONT:
                self.fragments.append(payload)
                if b0 & 0x80:
                    whole, self.fragments = b"".join(self.fragments), []
                    self.on_text(whole)
            elif opcode == OP_PING:
                self._write(encode_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                self._write(encode_frame(payload[:2], OP_CLOSE))
                if self.transport is not None:
                    self.transport.close()
                break
        del buf[:pos]

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, payload: bytes) -> None:
        if not self.is_open:
            raise ConnectionError("socket closed")
        self._write(encode_frame(payload))

    def close(self, code: int = 1000) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.is_open:
            self._write(encode_frame(code.to_bytes(2, "big"), OP_CLOSE))
        self.transport.close()


async def open_ws(url: str, on_text: Callable[[bytes], None], on_close: Callable[[], None],
                  open_timeout: float = 60.0,
                  on_connect: Callable[[WsProtocol], None] | None = None) -> WsProtocol:
    """Connect to ``ws://host:port/path?query`` and complete the upgrade."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError("only ws:// (the benchmark runs on loopback)")
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + ("?" + parts.query if parts.query else "")
    loop = asyncio.get_running_loop()
    transport, proto = await asyncio.wait_for(
        loop.create_connection(lambda: WsProtocol(on_text, on_close, on_connect), host, port),
        open_timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    transport.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    try:
        await asyncio.wait_for(proto.opened, open_timeout)
    except BaseException:
        transport.close()
        raise
    return proto

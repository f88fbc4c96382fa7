"""nginx, on deploy/config/nginx/nova.conf.template, in front of a running ``nova serve``.

A real nginx (Debian's) runs as a plain process with its own prefix, high loopback ports and a
self-signed certificate. Nova runs with NOVA_RATE_LIMITS=off so that the limits seen here are
nginx's. The burst and connection tests use their own loopback source addresses (127.0.0.2,
127.0.0.3: all of 127/8 is local) so that each has its own nginx buckets.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tests.nginx_support import Nginx, nginx_binary

pytestmark = pytest.mark.e2e

APP_ORIGIN = "https://app.example.com"
LIMIT_CONN = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o644)  # nginx workers run as nobody when started by root
    return cert_path, key_path


def _wait_http(url: str, *, verify: Any = True, attempts: int = 200) -> None:
    for _ in range(attempts):
        try:
            if httpx.get(url, verify=verify, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200")


class Edge:
    def __init__(self, https: int, http: int, nova: int, ca: Path) -> None:
        self.https_port, self.http_port, self.nova_port = https, http, nova
        self.ca = ca
        self.base = f"https://127.0.0.1:{https}"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def client(self, source: str | None = None) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(verify=self.tls(), local_address=source)
        return httpx.AsyncClient(base_url=self.base, transport=transport, timeout=10)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    nginx_binary()
    work = tmp_path_factory.mktemp("nginx-edge")
    os.chmod(work, 0o755)
    for sub in ("conf", "logs", "data"):
        (work / sub).mkdir()
        os.chmod(work / sub, 0o755)
    cert, key = _self_signed(work / "conf")
    nova = _free_port()

    env = {**os.environ, "NOVA_DATA_DIR": str(work / "data"), "NOVA_RATE_LIMITS": "off",
           "NOVA_CORS_ORIGINS": APP_ORIGIN, "NOVA_TRUSTED_PROXIES": "127.0.0.1",
           "NOVA_WS_MAX_SOCKETS_PER_USER": "50", "NOVA_LOG_LEVEL": "warning"}
    env.pop("NOVA_DATABASE_URL", None)
    env.pop("NOVA_REDIS_URL", None)
    log = (work / "logs" / "nova.log").open("wb")
    nova_proc = subprocess.Popen(
        [sys.executable, "-m", "nova", "serve", "--host", "127.0.0.1", "--port", str(nova)],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    nginx = Nginx(work, f"127.0.0.1:{nova}", server_name="localhost", limit_conn=LIMIT_CONN,
                  cors_origin_regex=r"^https://app\.example\.com$")
    try:
        _wait_http(f"http://127.0.0.1:{nova}/health")
        nginx.configure(cert, key)
        edge = Edge(nginx.https_port, nginx.http_port, nova, cert)
        _wait_http(f"{edge.base}/health", verify=edge.tls())
        yield edge
    finally:
        nginx.stop()
        nova_proc.terminate()
        try:
            nova_proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            nova_proc.kill()
            nova_proc.wait(timeout=5)
        log.close()


async def _register(c: httpx.AsyncClient, name: str) -> dict[str, Any]:
    r = await c.post("/api/v1/auth/register",
                     json={"username": name, "password": "correct horse battery"})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_nginx_https_health_and_security_headers(edge: Edge) -> None:
    async with edge.client() as c:
        r = await c.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    h = r.headers
    assert h["strict-transport-security"].startswith("max-age=31536000")
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    assert "default-src" in h["content-security-policy"]
    for name in ("strict-transport-security", "x-frame-options", "x-content-type-options",
                 "content-security-policy"):
        assert len(h.get_list(name)) == 1, f"{name} sent twice: {h.get_list(name)}"
    assert "server" not in h or "nginx/" not in h["server"]


async def test_nginx_redirects_http_to_https(edge: Edge) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.get(f"http://127.0.0.1:{edge.http_port}/api/v1/users/me?x=1")
    assert r.status_code in (301, 308)
    assert r.headers["location"] == f"https://localhost:{edge.https_port}/api/v1/users/me?x=1"


def _handshake(port: int, version: ssl.TLSVersion) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer old protocols at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw) as tls:
        return str(tls.version())


def test_nginx_tls_versions(edge: Edge) -> None:
    assert _handshake(edge.https_port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert _handshake(edge.https_port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    for old in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
        with pytest.raises(ssl.SSLError):
            _handshake(edge.https_port, old)


async def test_nginx_cors_preflight_and_headers(edge: Edge) -> None:
    async with edge.client() as c:
        pre = await c.options("/api/v1/auth/register", headers={
            "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        assert "strict-transport-security" in pre.headers

        r = await c.get("/health", headers={"Origin": APP_ORIGIN})
        assert r.headers.get_list("access-control-allow-origin") == [APP_ORIGIN]
        assert "Origin" in r.headers["vary"]
        assert "retry-after" in r.headers["access-control-expose-headers"].lower()

        for evil in ("https://evil.example", "https://app.example.com.evil.example"):
            r = await c.get("/health", headers={"Origin": evil})
            assert r.status_code == 200
            assert "access-control-allow-origin" not in r.headers
            pre = await c.options("/api/v1/auth/register", headers={
                "Origin": evil, "Access-Control-Request-Method": "POST"})
            assert "access-control-allow-origin" not in pre.headers


async def _frames_until(ws: Any, predicate: Any, limit: int = 20) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    for _ in range(limit):
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        seen.append(frame)
        if predicate(seen):
            return seen
    raise AssertionError(f"frames never matched: {seen}")


async def test_nginx_websocket_exchanges_and_resumes(edge: Edge) -> None:
    async with edge.client() as c:
        alice = await _register(c, "alice_edge")
        bob = await _register(c, "bob_edge")
        auth = {"Authorization": f"Bearer {alice['access_token']}"}
        conv = await c.post("/api/v1/conversations", headers=auth,
                            json={"kind": "direct", "member_ids": [bob["user"]["id"]]})
        assert conv.status_code in (200, 201), conv.text
        conv_id = conv.json()["id"]

        url = f"wss://127.0.0.1:{edge.https_port}/ws?access_token={alice['access_token']}"
        async with connect(url, ssl=edge.tls(), origin=Origin(APP_ORIGIN),
                           open_timeout=10) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
            assert hello["type"] == "hello"
            await ws.send(json.dumps({"type": "ping"}))
            assert (await _frames_until(ws, lambda s: s[-1]["type"] == "pong"))[-1] == \
                {"type": "pong"}
            await ws.send(json.dumps({"type": "message.send", "id": "r1",
                                      "conversation_id": conv_id, "client_msg_id": "m1",
                                      "body": "first through nginx"}))
            frames = await _frames_until(ws, lambda s: {"ack", "event"} <= {f["type"] for f in s})
            ack = next(f for f in frames if f["type"] == "ack")
            assert ack["id"] == "r1" and ack["message"]["body"] == "first through nginx"
            cursor = next(f for f in frames if f["type"] == "event")["cursor"]

        r = await c.post(f"/api/v1/conversations/{conv_id}/messages", headers=auth,
                         json={"client_msg_id": "m2", "body": "sent while away"})
        assert r.status_code == 201, r.text

        async with connect(f"{url}&since={cursor}", ssl=edge.tls(), open_timeout=10) as ws:
            frames = await _frames_until(ws, lambda s: s[-1]["type"] == "event")
            assert frames[0]["type"] == "hello"
            event = frames[-1]["event"]
            assert event["type"] == "message.created"
            assert event["message"]["body"] == "sent while away"


async def test_nginx_websocket_disallowed_origin_refused_by_nova(edge: Edge) -> None:
    async with edge.client() as c:
        user = await _register(c, "carol_edge")
    url = f"wss://127.0.0.1:{edge.https_port}/ws?access_token={user['access_token']}"
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, ssl=edge.tls(), origin=Origin("https://evil.example"),
                           open_timeout=10):
            pass
    assert info.value.response.status_code == 403


async def test_nginx_rate_limit_refuses_part_of_a_burst(edge: Edge) -> None:
    statuses: list[int] = []

    async def worker(c: httpx.AsyncClient, n: int) -> None:
        for _ in range(n):
            statuses.append((await c.get("/health")).status_code)

    async with edge.client(source="127.0.0.2") as c:
        await asyncio.gather(*(worker(c, 25) for _ in range(16)))  # 400 requests
        limited = await c.get("/health")
    assert set(statuses) <= {200, 429}, set(statuses)
    assert statuses.count(200) >= 50  # the burst passes
    assert statuses.count(429) > 0
    # the refusal is per address: another client is served meanwhile
    async with edge.client() as other:
        assert (await other.get("/health")).status_code == 200
    if limited.status_code == 429:
        assert limited.headers["x-content-type-options"] == "nosniff"


async def test_nginx_eleventh_connection_from_one_ip_is_refused(edge: Edge) -> None:
    async with edge.client() as c:
        user = await _register(c, "dave_edge")
    url = f"wss://127.0.0.1:{edge.https_port}/ws?access_token={user['access_token']}"
    opened = []
    try:
        for _ in range(LIMIT_CONN):
            ws = await connect(url, ssl=edge.tls(), local_addr=("127.0.0.3", 0),
                               open_timeout=10)
            opened.append(ws)
            assert json.loads(await asyncio.wait_for(ws.recv(), timeout=10))["type"] == "hello"
        with pytest.raises(InvalidStatus) as info:
            extra = await connect(url, ssl=edge.tls(), local_addr=("127.0.0.3", 0),
                                  open_timeout=10)
            await extra.close()
        assert info.value.response.status_code == 429
        # another address is not affected
        async with connect(url, ssl=edge.tls(), open_timeout=10) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), timeout=10))["type"] == "hello"
    finally:
        for ws in opened:
            await ws.close()


async def test_nginx_does_not_serve_metrics(edge: Edge) -> None:
    async with httpx.AsyncClient() as direct:
        assert (await direct.get(f"http://127.0.0.1:{edge.nova_port}/metrics")).status_code \
            == 200
    async with edge.client() as c:
        for path in ("/metrics", "/metrics/", "/metrics?x=1"):
            assert (await c.get(path)).status_code == 404

"""coturn (Debian's turnserver) on the shipped deploy/config/coturn/turnserver.conf.

Each server runs as a plain process on 127.0.0.1 with the shipped file plus test-only overrides on
the command line (ports, scratch files, secret, realm; and for the relay test only,
allow-loopback-peers). Clients: Nova's own calls/turncheck.py, aioice (independent) and the
`stun` program from stun-client.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aioice.turn import create_turn_endpoint

from nova.calls.turn import coturn_peer_range, mint_credentials
from nova.calls.turncheck import (
    BINDING,
    REQUEST,
    StunError,
    StunMessage,
    StunTimeout,
    TurnClient,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "config" / "coturn" / "turnserver.conf"
REALM = "nova.test"


def _need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        msg = f"{program} not installed (scripts/apt-packages.txt; run scripts/install-system)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def _free_udp_range(size: int = 16) -> tuple[int, int]:
    for _ in range(50):
        base = random.randrange(40_000, 60_000)
        socks = []
        try:
            for port in range(base, base + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base, base + size - 1
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free UDP port range")


@dataclass
class Coturn:
    proc: subprocess.Popen[bytes]
    port: int
    secret: str
    log: Path

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _stun_ready(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        msg = StunMessage(BINDING, REQUEST)
        try:
            sock.sendto(msg.encode(), ("127.0.0.1", port))
            data = sock.recv(2048)
        except OSError:
            return False
        return StunMessage.decode(data).transaction_id == msg.transaction_id


def start_coturn(tmp: Path, *extra: str) -> Coturn:
    """turnserver -c <shipped file> + loopback test overrides; waits until STUN answers."""
    binary = _need("turnserver")
    port = _free_port()
    lo, hi = _free_udp_range()
    secret = secrets.token_urlsafe(24)
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "turnserver.log"
    args = [
        binary, "-c", str(CONF),
        "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
        f"--listening-port={port}", f"--alt-listening-port={_free_port()}",
        f"--tls-listening-port={_free_port()}", f"--alt-tls-listening-port={_free_port()}",
        f"--min-port={lo}", f"--max-port={hi}",
        f"--userdb={tmp / 'turndb'}", f"--pidfile={tmp / 'turnserver.pid'}",
        "--log-file=stdout",
        f"--static-auth-secret={secret}", f"--realm={REALM}",
        *extra,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    server = Coturn(proc, port, secret, log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"turnserver exited {proc.returncode}:\n{server.log_text()}")
        if _stun_ready(port):
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"turnserver did not answer STUN in 15 s:\n{server.log_text()}")


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """The shipped config as is (no allow-loopback-peers)."""
    server = start_coturn(tmp_path_factory.mktemp("coturn"))
    yield server
    server.stop()


@pytest.fixture
def coturn_loopback_relay(tmp_path: Path) -> Iterator[Coturn]:
    """TEST ONLY: relaying to 127.0.0.1 allowed, so a local peer can receive relayed data."""
    server = start_coturn(tmp_path / "coturn", "--allow-loopback-peers",
                          "--allowed-peer-ip=127.0.0.1")
    yield server
    server.stop()


def _creds(server: Coturn, user: str = "alice", ttl: int = 600,
           now: float | None = None) -> tuple[str, str]:
    creds = mint_credentials(server.secret, user, ttl, now)
    return creds.username, creds.credential


# --- the server starts cleanly on the shipped file ------------------------------------------

def test_coturn_starts_clean_on_shipped_config(coturn: Coturn) -> None:
    log = coturn.log_text()
    assert "Bad configuration format" not in log
    assert "CONFIG ERROR" not in log
    denied = sum(1 for line in CONF.read_text().splitlines()
                 if line.startswith("denied-peer-ip="))
    assert log.count("Black listing:") == denied
    assert "allow_loopback_peers" not in log
    assert "125000 bytes per second allowed per session" in log


# --- STUN ------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_coturn_stun_binding_answers(coturn: Coturn, transport: str) -> None:
    async with TurnClient(*coturn.address, transport) as client:  # type: ignore[arg-type]
        mapped = await client.binding()
        assert mapped == client.local_address


def test_coturn_stun_binding_answers_stun_client(coturn: Coturn) -> None:
    stun = _need("stun")
    out = subprocess.run([stun, f"127.0.0.1:{coturn.port}", "1", "-v"], capture_output=True,
                         text=True, timeout=30)
    # stun-client's exit code is a NAT-type bitmask, not success/failure: read its output.
    assert "MappedAddress = 127.0.0.1:" in out.stdout + out.stderr


# --- TURN allocation with Nova's credentials -------------------------------------------------

@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_coturn_allocation_with_minted_credentials_succeeds(coturn: Coturn,
                                                                  transport: str) -> None:
    username, password = _creds(coturn)
    async with TurnClient(*coturn.address, transport) as client:  # type: ignore[arg-type]
        alloc = await client.allocate(username, password)
        assert alloc.relayed[0] == "127.0.0.1"
        assert alloc.lifetime > 0
        await client.refresh(0)


async def test_coturn_allocation_accepts_user_id_with_colon(coturn: Coturn) -> None:
    username, password = _creds(coturn, user="auth0|ext:42")
    async with TurnClient(*coturn.address) as client:
        assert (await client.allocate(username, password)).relayed[0] == "127.0.0.1"
        await client.refresh(0)


async def test_coturn_allocation_with_aioice_and_minted_credentials(coturn: Coturn) -> None:
    username, password = _creds(coturn, user="bob")
    transport, _ = await create_turn_endpoint(asyncio.DatagramProtocol,
                                              server_addr=coturn.address, username=username,
                                              password=password, lifetime=600)
    try:
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
    finally:
        transport.close()
        await asyncio.sleep(0.3)  # let aioice send its Refresh(0) before the loop closes


async def _allocate_status(server: Coturn, username: str, password: str) -> int:
    async with TurnClient(*server.address) as client:
        try:
            await client.allocate(username, password)
        except StunError as exc:
            return exc.code
        await client.refresh(0)
        return 200


async def test_coturn_refuses_expired_credentials(coturn: Coturn) -> None:
    username, password = _creds(coturn, ttl=3600, now=time.time() - 7200)
    assert await _allocate_status(coturn, username, password) == 401


async def test_coturn_refuses_tampered_credentials(coturn: Coturn) -> None:
    username, password = _creds(coturn)
    expiry, user = username.split(":", 1)
    tampered_password = password[:-2] + ("AA" if password[-2:] != "AA" else "BB")
    later = f"{int(expiry) + 86_400}:{user}"  # longer life, same credential
    other_user = f"{expiry}:mallory"  # someone else's name, same credential
    wrong_secret = mint_credentials("not-the-secret", "alice", 600).credential
    assert await _allocate_status(coturn, username, tampered_password) == 401
    assert await _allocate_status(coturn, later, password) == 401
    assert await _allocate_status(coturn, other_user, password) == 401
    assert await _allocate_status(coturn, username, wrong_secret) == 401
    assert await _allocate_status(coturn, username, password) == 200


# --- SSRF: the shipped config refuses private and loopback peers ----------------------------

DENIED = ["127.0.0.1", "127.0.0.2", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
          "100.64.0.1", "192.0.2.1"]


async def test_coturn_shipped_config_refuses_private_and_loopback_peers(coturn: Coturn) -> None:
    username, password = _creds(coturn)
    async with TurnClient(*coturn.address) as client:
        await client.allocate(username, password)
        for peer in DENIED:
            with pytest.raises(StunError) as info:
                await client.create_permission(peer)
            assert info.value.code == 403, peer
        # CreatePermission sends nothing to the peer: a public address must be allowed, or the
        # deny list would block every call.
        await client.create_permission("8.8.8.8")
        await client.refresh(0)


async def test_coturn_deploy_time_denied_peer_range_applies(tmp_path: Path) -> None:
    server = start_coturn(tmp_path, f"--denied-peer-ip={coturn_peer_range('8.8.8.0/24')}")
    try:
        username, password = _creds(server)
        async with TurnClient(*server.address) as client:
            await client.allocate(username, password)
            with pytest.raises(StunError) as info:
                await client.create_permission("8.8.8.8")
            assert info.value.code == 403
            await client.create_permission("8.8.4.4")
            await client.refresh(0)
    finally:
        server.stop()


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.seen: list[tuple[bytes, tuple[str, int]]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append((data, addr))
        self.transport.sendto(b"echo:" + data, addr)  # type: ignore[attr-defined]


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait(data)


async def test_coturn_relays_data_with_loopback_test_override(
        coturn_loopback_relay: Coturn) -> None:
    server = coturn_loopback_relay
    assert "allow_loopback_peers opens a possible security vulnerability" in server.log_text()
    loop = asyncio.get_running_loop()
    peer_tr, peer = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    username, password = _creds(server)
    relay, sink = await create_turn_endpoint(_Sink, server_addr=server.address,
                                             username=username, password=password)
    try:
        relayed = relay.get_extra_info("sockname")
        relay.sendto(b"hello-through-turn", peer_tr.get_extra_info("sockname"))
        assert await asyncio.wait_for(sink.got.get(), 10) == b"echo:hello-through-turn"
        assert peer.seen[0] == (b"hello-through-turn", tuple(relayed))
    finally:
        relay.close()
        peer_tr.close()
        await asyncio.sleep(0.3)
    # the shipped deny list still holds for every other loopback address
    async with TurnClient(*server.address) as client:
        await client.allocate(username, password)
        with pytest.raises(StunError) as info:
            await client.create_permission("127.0.0.2")
        assert info.value.code == 403
        await client.refresh(0)


# --- nova turn check -------------------------------------------------------------------------

def _nova_turn_check(server: Coturn, *args: str, secret: str | None = None,
                     ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NOVA_TURN_SHARED_SECRET": secret or server.secret}
    env.pop("NOVA_TURN_SHARED_SECRET_FILE", None)
    return subprocess.run(
        [sys.executable, "-m", "nova", "turn", "check", f"127.0.0.1:{server.port}", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def test_nova_turn_check_passes_and_fails_when_stopped(tmp_path: Path) -> None:
    server = start_coturn(tmp_path)
    try:
        for transport in ("udp", "tcp"):
            ok = _nova_turn_check(server, "--transport", transport, "--expect-denied",
                                  "169.254.169.254", "--expect-denied", "10.0.0.1")
            assert ok.returncode == 0, ok.stdout + ok.stderr
            assert "PASS  stun_binding" in ok.stdout
            assert "PASS  turn_allocate" in ok.stdout
            assert ok.stdout.rstrip().endswith("result: PASS")
        bad = _nova_turn_check(server, secret="wrong-secret")
        assert bad.returncode == 1
        assert "FAIL  turn_allocate" in bad.stdout and "401" in bad.stdout
        leaky = _nova_turn_check(server, "--expect-denied", "8.8.8.8")
        assert leaky.returncode == 1 and "GRANTED" in leaky.stdout
    finally:
        server.stop()
    for transport in ("udp", "tcp"):
        down = _nova_turn_check(server, "--transport", transport, "--timeout", "1")
        assert down.returncode == 1
        assert "result: FAIL" in down.stdout
        assert "refused" in down.stdout or "unreachable" in down.stdout \
            or "cannot reach" in down.stdout, down.stdout


async def test_turn_client_times_out_on_silent_server() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        async with TurnClient("127.0.0.1", silent.getsockname()[1], timeout=0.5) as client:
            with pytest.raises(StunTimeout):
                await client.binding()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    tmp.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_nova_turn_check_over_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path / "tls")
    tls_port = _free_port()
    server = start_coturn(tmp_path / "coturn", f"--cert={cert}", f"--pkey={key}",
                          f"--tls-listening-port={tls_port}")
    try:
        env = {**os.environ, "NOVA_TURN_SHARED_SECRET": server.secret}
        result = subprocess.run(
            [sys.executable, "-m", "nova", "turn", "check", f"127.0.0.1:{tls_port}",
             "--transport", "tls", "--insecure"],
            capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stdout + result.stderr + server.log_text()
        assert "PASS  turn_allocate" in result.stdout
        # verification on: a self-signed certificate must fail the check
        strict = subprocess.run(
            [sys.executable, "-m", "nova", "turn", "check", f"127.0.0.1:{tls_port}",
             "--transport", "tls"],
            capture_output=True, text=True, timeout=60, env=env)
        assert strict.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in strict.stdout
    finally:
        server.stop()

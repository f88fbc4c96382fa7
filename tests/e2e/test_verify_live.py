"""`nova verify` against a real local stack: nova serve behind nginx (the shipped template,
a certificate from a test CA), coturn on the shipped turnserver.conf, Prometheus and
Alertmanager on the shipped configs (discovery emulated with file_sd, as in
test_prometheus_live.py). One module-scoped stack serves the passing run; the failure cases
toggle one part each and put it back: a stopped coturn, an expired certificate, a metric
dropped by a Prometheus relabel rule.

Argo CD cannot run here (it needs a Kubernetes API server): ONLY its REST API is faked, by a
small HTTP server that answers GET /api/v1/applications/<name> with Application JSON in the
shape Argo CD returns (tests/e2e/data/argocd/: made from the shipped Application manifests, not
captured from a live server; its README says how) and checks the bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import http.server
import ipaddress
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_coturn import Coturn, start_coturn
from test_prometheus_live import Daemon, _alertmanager_config, ms

from nova.verify import argocd, prometheus
from nova.verify.https import check_certificate, check_legacy_tls_refused, check_redirect
from nova.verify.result import Status
from tests.conftest import NovaProcess, free_port
from tests.nginx_support import Nginx

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ARGOCD_DATA = Path(__file__).resolve().parent / "data" / "argocd"
ARGOCD_TOKEN = "argocd-test-token-" + "z" * 20


# --- certificates: a test CA and leaves signed by it --------------------------------------

@dataclass
class LocalCA:
    directory: Path
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(
        ec.SECP256R1()))

    def __post_init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nova verify test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.name = name
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=365))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(
                         digital_signature=True, key_cert_sign=True, crl_sign=True,
                         content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, encipher_only=False,
                         decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = self.directory / "ca.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, label: str, *, not_before_days: float,
             not_after_days: float) -> tuple[Path, Path]:
        """A server certificate for 127.0.0.1 valid from/until now + the given days."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
                .issuer_name(self.name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now + datetime.timedelta(days=not_before_days))
                .not_valid_after(now + datetime.timedelta(days=not_after_days))
                .add_extension(x509.SubjectAlternativeName([
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_path = self.directory / f"{label}.crt"
        key_path = self.directory / f"{label}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        os.chmod(key_path, 0o644)  # nginx workers run as nobody when started by root
        return cert_path, key_path


def _served_serial(port: int) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number




# --- the fake Argo CD REST API (recorded Application JSON) -------------------------------

class FakeArgoCD:
    """Serves GET /api/v1/applications/<name> from tests/e2e/data/argocd/<name>.json, or an
    override set by a test; 401 without the right bearer token, 404 for an unknown app."""

    def __init__(self, token: str) -> None:
        self.apps = {p.stem: json.loads(p.read_text()) for p in ARGOCD_DATA.glob("*.json")}
        self.requests: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                prefix = "/api/v1/applications/"
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self._send(401, {"error": "invalid session: token signature is invalid",
                                     "code": 16, "message": "invalid session"})
                elif self.path.startswith(prefix) and self.path[len(prefix):] in fake.apps:
                    self._send(200, fake.apps[self.path[len(prefix):]])
                else:
                    name = self.path.rsplit("/", 1)[-1]
                    self._send(404, {"error": f'applications.argoproj.io "{name}" not found',
                                     "code": 5,
                                     "message": f'applications.argoproj.io "{name}" not found'})

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def fake_argocd() -> Iterator[FakeArgoCD]:
    fake = FakeArgoCD(ARGOCD_TOKEN)
    yield fake
    fake.close()


# --- the stack --------------------------------------------------------------------------

@dataclass
class Stack:
    work: Path
    ca: LocalCA
    good_cert: tuple[Path, Path]
    nova: NovaProcess
    nginx: Nginx
    coturn: Coturn
    prom_url: str
    am_url: str
    prom: Daemon
    prom_config: Path
    argocd: FakeArgoCD
    token_file: Path

    def args(self, **override: str) -> list[str]:
        values = {"--url": f"https://127.0.0.1:{self.nginx.https_port}",
                  "--http-url": f"http://127.0.0.1:{self.nginx.http_port}",
                  "--turn": f"127.0.0.1:{self.coturn.port}",
                  "--prometheus": self.prom_url, "--alertmanager": self.am_url,
                  "--argocd": self.argocd.url, "--argocd-token-file": str(self.token_file),
                  "--ca-file": str(self.ca.path), **override}
        out: list[str] = []
        for k, v in values.items():
            out += [k, v]
        return out

    def run(self, *extra: str, **override: str) -> tuple[int, dict[str, Any]]:
        """``nova verify --json`` as a subprocess: (exit status, {check name: row})."""
        proc = subprocess.run([sys.executable, "-m", "nova", "verify", *self.args(**override),
                               "--timeout", "5", "--json", *extra],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, **self.nova_env()})
        assert proc.stdout.startswith("{"), proc.stdout + proc.stderr
        body = json.loads(proc.stdout)
        assert body["ok"] is (proc.returncode == 0)
        return proc.returncode, {r["name"]: r for r in body["results"]}

    def nova_env(self) -> dict[str, str]:
        return {k: v for k, v in self.nova.env.items() if k.startswith("NOVA_")}


def _start_nova(work: Path, coturn: Coturn) -> NovaProcess:
    env = {"NOVA_DATA_DIR": str(work / "nova-data"), "NOVA_RATE_LIMITS": "off",
           "NOVA_TRUSTED_PROXIES": "127.0.0.1", "NOVA_LOG_LEVEL": "warning",
           "NOVA_JWT_SECRET": "verify-test-secret-" + "x" * 32,
           "NOVA_TURN_SHARED_SECRET": coturn.secret,
           "NOVA_TURN_URLS": f"turn:127.0.0.1:{coturn.port}?transport=udp",
           "NOVA_STUN_URLS": f"stun:127.0.0.1:{coturn.port}"}
    proc = NovaProcess(env)  # SQLite and the in-process broker, whatever the caller's env
    for name in ("NOVA_DATABASE_URL", "NOVA_REDIS_URL", "NOVA_TURN_SHARED_SECRET_FILE"):
        proc.env.pop(name, None)
    return proc.start(work / "nova.log")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, fake_argocd: FakeArgoCD) -> Iterator[Stack]:
    prometheus_bin = ms.require_program("prometheus")
    alertmanager_bin = ms.require_program("prometheus-alertmanager")
    work = tmp_path_factory.mktemp("verify-stack")
    os.chmod(work, 0o755)
    (work / "tls").mkdir()
    os.chmod(work / "tls", 0o755)
    ca = LocalCA(work / "tls")
    good = ca.leaf("good", not_before_days=-1, not_after_days=90)
    token_file = work / "argocd-token"
    token_file.write_text(ARGOCD_TOKEN + "\n")
    stop: list[Callable[[], object]] = []
    try:
        coturn = start_coturn(work / "coturn")
        stop.append(coturn.stop)
        nova = _start_nova(work, coturn)
        stop.append(nova.stop)
        nginx = Nginx(work / "nginx", f"127.0.0.1:{nova.port}")
        nginx.configure(*good)
        stop.append(nginx.stop)

        am_port, prom_port = free_port(), free_port()
        (work / "am").mkdir()
        am = Daemon([alertmanager_bin,
                     f"--config.file={_alertmanager_config(work / 'am', free_port())}",
                     f"--storage.path={work / 'am' / 'data'}",
                     f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
                    work / "alertmanager.log", f"http://127.0.0.1:{am_port}/-/ready")
        stop.append(am.stop)
        scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(nova.port),
                  "prometheus.io/path": "/metrics"}
        am_target = ms.k8s_pod_target(
            f"127.0.0.1:{am_port}", namespace="nova-monitoring", pod="alertmanager-0",
            container="alertmanager", container_port=9093,
            labels={"app.kubernetes.io/name": "alertmanager"})
        config = ms.derive_prometheus_config(
            work / "prom",
            targets={"nova": [ms.k8s_pod_target(
                "127.0.0.1:3000", namespace="nova-messaging", pod="nova-0", container="nova",
                container_port=3000, annotations=scrape)], "alertmanager": [am_target]},
            alertmanager_targets=[am_target],
            static_jobs={"prometheus": [f"127.0.0.1:{prom_port}"]}, scrape_interval="1s")
        prom = Daemon([prometheus_bin, f"--config.file={config}",
                       f"--storage.tsdb.path={work / 'tsdb'}",
                       f"--web.listen-address=127.0.0.1:{prom_port}"],
                      work / "prometheus.log", f"http://127.0.0.1:{prom_port}/-/ready")
        stop.append(prom.stop)
        am.wait_ready()
        prom.wait_ready()
        s = Stack(work, ca, good, nova, nginx, coturn, f"http://127.0.0.1:{prom_port}",
                  f"http://127.0.0.1:{am_port}", prom, config, fake_argocd, token_file)
        _wait_monitoring(s)
        yield s
    finally:
        errors = []
        for fn in reversed(stop):  # stop every daemon, even when one stop fails
            try:
                fn()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def _wait_monitoring(s: Stack) -> None:
    """Discovery batches updates (the first scrape takes ~5 s) and the rules need one
    evaluation: wait until Prometheus has seen Nova, bounded."""
    async def ready() -> bool:
        async with httpx.AsyncClient(base_url=s.prom_url, timeout=5) as c:
            rows = [await prometheus.check_targets(c), await prometheus.check_metrics(c),
                    await prometheus.check_rules(c)]
        return all(r.status is Status.PASS for r in rows)

    ms.poll("Prometheus scraping Nova and evaluating the rules", lambda: asyncio.run(ready()))


# --- the passing run ----------------------------------------------------------------------

def test_verify_passes_on_the_local_stack(stack: Stack) -> None:
    code, rows = stack.run()
    bad = {n: r for n, r in rows.items() if r["status"] != "pass"}
    assert code == 0 and not bad, bad
    assert set(rows) == {
        "https.certificate", "https.tls_legacy", "https.health", "https.ready",
        "https.headers", "https.redirect", "realtime.account", "realtime.websocket",
        "turn.stun", "turn.allocation", "realtime.cleanup", "prometheus.targets",
        "prometheus.metrics", "prometheus.rules", "alertmanager.health",
        "alertmanager.receivers", "argocd.messaging-service", "argocd.turn-server",
        "argocd.monitoring-stack"}
    assert "(89 days)" in rows["https.certificate"]["detail"]
    assert "TLSv1.1 and TLSv1 refused" == rows["https.tls_legacy"]["detail"]
    assert rows["https.redirect"]["detail"].startswith(
        f"308 to https://127.0.0.1:{stack.nginx.https_port}/health")
    assert "relayed 127.0.0.1:" in rows["turn.allocation"]["detail"]
    assert "critical" in rows["alertmanager.receivers"]["detail"]
    # the probe account was closed: it is disabled in Nova's database
    probe = rows["realtime.account"]["detail"].split()[2]
    assert probe.startswith("nova-verify-")
    users = subprocess.run([sys.executable, "-m", "nova", "user", "list"], capture_output=True,
                           text=True, timeout=60, env={**os.environ, **stack.nova_env()})
    line = next(ln for ln in users.stdout.splitlines() if probe in ln)
    assert " disabled " in line, users.stdout
    assert f"/api/v1/applications/{argocd.APPLICATIONS[0]}" in stack.argocd.requests


def test_verify_table_output_and_given_credentials(stack: Stack) -> None:
    password = secrets.token_urlsafe(16)
    pw_file = stack.work / "operator-password"
    pw_file.write_text(password + "\n")
    r = httpx.post(f"{stack.nova.url}/api/v1/auth/register",
                   json={"username": "operator_probe", "password": password}, timeout=10)
    assert r.status_code == 201, r.text
    proc = subprocess.run([sys.executable, "-m", "nova", "verify", *stack.args(),
                           "--username", "operator_probe", "--password-file", str(pw_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith(f"nova verify https://127.0.0.1:{stack.nginx.https_port}")
    assert "  PASS  realtime.account" in out and "logged in as operator_probe" in out
    assert "session logged out" in out
    assert out.rstrip().splitlines()[-1].startswith("result: PASS (19 passed, 0 failed")
    # the given account still works (it was not closed)
    login = httpx.post(f"{stack.nova.url}/api/v1/auth/login",
                       json={"username": "operator_probe", "password": password}, timeout=10)
    assert login.status_code == 200


# --- failures on purpose ----------------------------------------------------------------------

def test_verify_fails_when_coturn_is_stopped(stack: Stack) -> None:
    # a second coturn on the same shipped config, then stopped: nothing answers on its port
    stopped = start_coturn(stack.work / "coturn-stopped")
    stopped.stop()
    code, rows = stack.run(**{"--turn": f"127.0.0.1:{stopped.port}"})
    assert code == 1
    assert rows["turn.stun"]["status"] == "fail"
    assert "coturn" in rows["turn.stun"]["hint"]
    assert rows["turn.allocation"]["status"] == "fail"
    others = {n: r["status"] for n, r in rows.items() if not n.startswith("turn.")}
    assert set(others.values()) == {"pass"}, others


def test_verify_fails_on_an_expired_certificate_and_warns_near_expiry(stack: Stack) -> None:
    expired = stack.ca.leaf("expired", not_before_days=-30, not_after_days=-1)
    soon = stack.ca.leaf("soon", not_before_days=-80, not_after_days=5)
    try:
        serial = _served_serial(stack.nginx.https_port)
        stack.nginx.configure(*expired)
        ms.poll("nginx serving the expired certificate",
              lambda: _served_serial(stack.nginx.https_port) != serial)
        code, rows = stack.run()
        assert code == 1
        cert = rows["https.certificate"]
        assert cert["status"] == "fail" and "expired" in cert["detail"], cert
        assert "renew" in cert["hint"]
        # clients cannot connect either: the health check fails for the same reason
        assert rows["https.health"]["status"] == "fail"

        serial = _served_serial(stack.nginx.https_port)
        stack.nginx.configure(*soon)
        ms.poll("nginx serving the soon-expiring certificate",
              lambda: _served_serial(stack.nginx.https_port) != serial)
        result = check_certificate("127.0.0.1", stack.nginx.https_port,
                                   ca_file=str(stack.ca.path), insecure=False)
        assert result.status is Status.WARN, result
        assert "(4 days)" in result.detail and "14 days" in result.hint
        code, rows = stack.run()
        assert rows["https.certificate"]["status"] == "warn"
        assert code == 0  # a warning does not fail the run
    finally:
        serial = _served_serial(stack.nginx.https_port)
        stack.nginx.configure(*stack.good_cert)
        ms.poll("nginx serving the good certificate again",
              lambda: _served_serial(stack.nginx.https_port) != serial)


def test_verify_fails_when_a_metric_is_missing(stack: Stack) -> None:
    shipped = stack.prom_config.read_text()
    config = yaml.safe_load(shipped)
    dropping = copy.deepcopy(config)
    for job in dropping["scrape_configs"]:
        if job["job_name"] == "nova":
            job["metric_relabel_configs"] = [{"source_labels": ["__name__"],
                                              "regex": "nova_calls_total", "action": "drop"}]
    stack.prom_config.write_text(yaml.safe_dump(dropping, sort_keys=False))

    async def metrics() -> Any:
        async with httpx.AsyncClient(base_url=stack.prom_url, timeout=5) as c:
            return await prometheus.check_metrics(c)

    try:
        stack.prom.proc.send_signal(signal.SIGHUP)
        result = ms.poll("nova_calls_total gone", lambda: (
            r if (r := asyncio.run(metrics())).status is Status.FAIL else None), timeout=30)
        assert result.detail == "no series for nova_calls_total"
        code, rows = stack.run()
        assert code == 1
        assert rows["prometheus.metrics"]["status"] == "fail"
        assert "nova_calls_total" in rows["prometheus.metrics"]["detail"]
        assert rows["prometheus.targets"]["status"] == "pass"
    finally:
        stack.prom_config.write_text(shipped)
        stack.prom.proc.send_signal(signal.SIGHUP)
        ms.poll("nova_calls_total back", lambda: asyncio.run(metrics()).status is Status.PASS,
              timeout=30)


# --- Argo CD (fake REST API only; see the module docstring) ----------------------------------

async def test_verify_argocd_reports_out_of_sync_and_degraded(fake_argocd: FakeArgoCD) -> None:
    saved = copy.deepcopy(fake_argocd.apps)
    app = fake_argocd.apps["turn-server"]
    app["status"]["sync"]["status"] = "OutOfSync"
    app["status"]["health"] = {"status": "Degraded",
                               "message": "Deployment coturn: 0 of 1 replicas available"}
    del fake_argocd.apps["monitoring-stack"]
    try:
        async with httpx.AsyncClient(base_url=fake_argocd.url, timeout=5, headers={
                "Authorization": f"Bearer {ARGOCD_TOKEN}"}) as c:
            rows = {r.name: r for r in await argocd.check_applications(c)}
        assert rows["argocd.messaging-service"].status is Status.PASS
        turn = rows["argocd.turn-server"]
        assert turn.status is Status.FAIL
        assert turn.detail.startswith("OutOfSync, Degraded") and "0 of 1" in turn.detail
        assert "argocd app sync turn-server" in turn.hint
        monitoring = rows["argocd.monitoring-stack"]
        assert monitoring.status is Status.FAIL and "not found" in monitoring.detail
    finally:
        fake_argocd.apps = saved


async def test_verify_argocd_refused_token(fake_argocd: FakeArgoCD) -> None:
    async with httpx.AsyncClient(base_url=fake_argocd.url, timeout=5, headers={
            "Authorization": "Bearer wrong"}) as c:
        rows = await argocd.check_applications(c)
    assert [r.status for r in rows] == [Status.FAIL] * 3
    assert "401" in rows[0].detail and "generate-token" in rows[0].hint


# --- the HTTPS checks against deliberately bad servers ------------------------------------

def _serve_tls(ctx: ssl.SSLContext) -> tuple[int, Callable[[], None]]:
    """A TLS server on loopback completing handshakes until the returned stop() is called."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join(5)
        listener.close()

    return listener.getsockname()[1], stop


def test_verify_tls_legacy_fails_when_the_server_accepts_tls_1_1(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path)
    cert, key = ca.leaf("old", not_before_days=-1, not_after_days=30)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.load_cert_chain(cert, key)
    port, stop = _serve_tls(ctx)
    try:
        result = check_legacy_tls_refused("127.0.0.1", port, timeout=5)
    finally:
        stop()
    assert result.status is Status.FAIL, result
    assert "TLSv1.1" in result.detail and "ssl_protocols TLSv1.2 TLSv1.3" in result.hint


async def test_verify_redirect_fails_when_plain_http_serves_content() -> None:
    class Plain(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = await check_redirect(f"http://127.0.0.1:{server.server_address[1]}",
                                      "127.0.0.1", 5)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert result.status is Status.FAIL
    assert result.detail == "plain HTTP answered 200" and "308" in result.hint

"""The HTTPS entry: health, readiness, certificate, TLS versions, redirect, headers."""

from __future__ import annotations

import datetime
import socket
import ssl
import warnings
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509

from nova.verify.result import Result, failed, passed, skipped, warned

EXPIRY_WARN_DAYS = 14

# header -> predicate on its value, and the value a correct edge sends
SECURITY_HEADERS: dict[str, tuple[str, str]] = {
    "strict-transport-security": ("max-age=", "max-age=31536000; includeSubDomains"),
    "x-content-type-options": ("nosniff", "nosniff"),
    "x-frame-options": ("", "DENY"),
    "referrer-policy": ("", "no-referrer"),
    "content-security-policy": ("", "default-src 'none'; frame-ancestors 'none'"),
}


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"--url must be https://HOST[:PORT], got {url!r}")
    return parts.hostname, parts.port or 443


def _error_text(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        inner = exc.__cause__ or exc.__context__
        assert inner is not None
        if isinstance(inner, ssl.SSLError | OSError):
            exc = inner
            break
        exc = inner
    return f"{type(exc).__name__}: {exc}"


async def check_health(http: httpx.AsyncClient) -> tuple[Result, httpx.Response | None]:
    name = "https.health"
    try:
        r = await http.get("/health")
    except httpx.HTTPError as exc:
        return failed(name, f"GET /health: {_error_text(exc)}",
                      "is the edge (ingress/nginx) up and the certificate valid? see "
                      "https.certificate"), None
    try:
        body: Any = r.json()
    except ValueError:
        body = r.text[:120]
    if r.status_code == 200 and body == {"status": "ok"}:
        return passed(name, '200 {"status":"ok"}'), r
    return failed(name, f"GET /health: {r.status_code} {body!r}",
                  "the edge does not reach Nova: check the upstream/Service and the pods "
                  "(kubectl get pods -n nova-messaging)"), r


async def check_ready(http: httpx.AsyncClient) -> Result:
    name = "https.ready"
    try:
        r = await http.get("/ready")
    except httpx.HTTPError as exc:
        return failed(name, f"GET /ready: {_error_text(exc)}", "see https.health")
    try:
        body: Any = r.json()
    except ValueError:
        body = {}
    if r.status_code == 200 and isinstance(body, dict) and body.get("status") == "ready":
        checks = body.get("checks", {})
        return passed(name, "ready (" + ", ".join(f"{k} {v}" for k, v in checks.items()) + ")")
    bad = {k: v for k, v in (body.get("checks") or {}).items() if v != "ok"} \
        if isinstance(body, dict) else {}
    return failed(name, f"GET /ready: {r.status_code} {bad or body!r}",
                  "a dependency is down: check the database / Redis named above and "
                  "Nova's logs")


def _tls_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    if insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca_file)


def _handshake(host: str, port: int, ctx: ssl.SSLContext,
               timeout: float) -> tuple[str, bytes]:
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        return str(tls.version()), tls.getpeercert(binary_form=True) or b""


def check_certificate(host: str, port: int, *, ca_file: str | None, insecure: bool,
                      timeout: float = 10.0, warn_days: int = EXPIRY_WARN_DAYS,
                      now: datetime.datetime | None = None) -> Result:
    """A verified handshake (system CAs or ``ca_file``, host name checked) and the days left
    on the leaf certificate. With ``insecure`` the chain is not checked (a warning)."""
    name = "https.certificate"
    try:
        version, der = _handshake(host, port, _tls_context(ca_file, insecure), timeout)
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        hint = ("renew it: kubectl describe certificate -n nova-messaging; cert-manager "
                "logs" if "expired" in reason else
                "serve the full chain for this host name, or pass --ca-file for a private CA")
        return failed(name, f"certificate not valid for {host}: {reason}", hint)
    except (OSError, ssl.SSLError) as exc:
        return failed(name, f"TLS handshake with {host}:{port} failed: {exc}",
                      "is the HTTPS port open and TLS configured on the edge?")
    cert = x509.load_der_x509_certificate(der)
    now = now or datetime.datetime.now(datetime.UTC)
    left = cert.not_valid_after_utc - now
    days = left.days
    expires = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    if left.total_seconds() <= 0:
        return failed(name, f"certificate expired on {expires}",
                      "renew it: kubectl describe certificate -n nova-messaging")
    detail = f"{version}, valid for {host}, expires {expires} ({days} days)"
    if days < warn_days:
        return warned(name, detail, f"under {warn_days} days left: is cert-manager renewing "
                                    "it? kubectl describe certificate -n nova-messaging")
    if insecure:
        return warned(name, f"{version}, chain NOT verified (--insecure), expires {expires} "
                            f"({days} days)", "run without --insecure (or with --ca-file)")
    return passed(name, detail)


def check_legacy_tls_refused(host: str, port: int, timeout: float = 10.0) -> Result:
    """TLS 1.0 and 1.1 must be refused. The client context drops to OpenSSL security level
    0 so that this machine can offer them at all."""
    name = "https.tls_legacy"
    accepted, refused = [], []
    for label, version in (("TLSv1.1", ssl.TLSVersion.TLSv1_1),
                           ("TLSv1", ssl.TLSVersion.TLSv1)):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = version
                ctx.maximum_version = version
        except (ValueError, ssl.SSLError) as exc:
            return skipped(name, f"this machine's OpenSSL cannot offer {label}: {exc}")
        try:
            got, _ = _handshake(host, port, ctx, timeout)
        except ssl.SSLError as exc:
            if "NO_PROTOCOLS_AVAILABLE" in str(exc) or "NO_CIPHERS_AVAILABLE" in str(exc):
                return skipped(name, f"this machine's OpenSSL cannot offer {label}: {exc}")
            refused.append(label)
            continue
        except OSError as exc:
            return failed(name, f"cannot reach {host}:{port}: {exc}", "see https.certificate")
        accepted.append(got)
    if accepted:
        return failed(name, f"server accepted {', '.join(accepted)}",
                      "allow TLS 1.2 and 1.3 only (nginx: ssl_protocols TLSv1.2 TLSv1.3;)")
    return passed(name, f"{' and '.join(refused)} refused")


async def check_redirect(http_url: str, https_host: str, timeout: float = 10.0) -> Result:
    name = "https.redirect"
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as c:
            r = await c.get(http_url.rstrip("/") + "/health?nova-verify=1")
    except httpx.HTTPError as exc:
        return failed(name, f"GET {http_url}: {_error_text(exc)}",
                      "port 80 should answer with a redirect to HTTPS (and serve ACME "
                      "HTTP-01); pass --http-url if it listens elsewhere")
    location = r.headers.get("location", "")
    if r.status_code in (301, 302, 307, 308) and location.startswith("https://"):
        target = urlsplit(location)
        if target.hostname != https_host:
            return failed(name, f"{r.status_code} to {location} (another host)",
                          "redirect to the same host name (nginx: server_name)")
        if not target.path.startswith("/health"):
            return warned(name, f"{r.status_code} to {location}: the path is not kept",
                          "redirect to https://$host$request_uri")
        return passed(name, f"{r.status_code} to {location}")
    return failed(name, f"plain HTTP answered {r.status_code}"
                        + (f" to {location}" if location else ""),
                  "redirect every plain-HTTP request to HTTPS (308), e.g. the shipped "
                  "deploy/config/nginx template or ingress ssl-redirect")


def check_security_headers(response: httpx.Response | None) -> Result:
    name = "https.headers"
    if response is None:
        return skipped(name, "no answer from /health to read headers from")
    missing, bad = [], []
    for header, (must_contain, _) in SECURITY_HEADERS.items():
        values = response.headers.get_list(header)
        if not values:
            missing.append(header)
        elif len(values) > 1:
            bad.append(f"{header} sent {len(values)} times")
        elif must_contain and must_contain not in values[0].lower():
            bad.append(f"{header}: {values[0]!r}")
    if missing or bad:
        detail = "; ".join(filter(None, [
            ("missing " + ", ".join(missing)) if missing else "", *bad]))
        example = ", ".join(f"{h}: {SECURITY_HEADERS[h][1]}" for h in missing)
        return failed(name, detail, "add them at the edge (shipped nginx template / ingress "
                                    "annotations)" + (f": {example}" if example else ""))
    return passed(name, ", ".join(SECURITY_HEADERS))

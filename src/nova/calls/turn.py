"""TURN REST API credentials (coturn ``use-auth-secret``) and the ICE server list for clients.

A client gets a short-lived username/credential pair that coturn checks with the secret it
shares with Nova, so no static TURN password is ever handed out:

- ``username = "<unix_expiry>:<user_id>"``
- ``credential = base64(HMAC-SHA1(shared_secret, username))``

coturn takes the expiry from the digits before the first ``:`` and refuses the pair once it has
passed (401), or when the HMAC does not match. Pure functions: no I/O, no framework imports.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_TTL_SECONDS",
    "MAX_USERNAME_BYTES",
    "TurnCredentials",
    "coturn_peer_range",
    "ice_servers",
    "mint_credentials",
    "validate_ice_url",
]

# Nova's settings cap the TTL at a day (default: one hour); a longer-lived pair is a password.
MAX_TTL_SECONDS = 86_400
# STUN USERNAME is at most 513 bytes (RFC 8489 §14.3); keep clear of it.
MAX_USERNAME_BYTES = 500

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class TurnCredentials:
    """One TURN REST API credential pair, valid until ``expires_at`` (unix seconds)."""

    username: str
    credential: str
    expires_at: int
    ttl_seconds: int


def mint_credentials(secret: str, user_id: str, ttl_seconds: int,
                     now: float | None = None) -> TurnCredentials:
    """Mint a TURN REST API pair for ``user_id`` valid for ``ttl_seconds`` from ``now``.

    Raises ``ValueError`` for an empty secret, a TTL outside 1..MAX_TTL_SECONDS, or a user id
    that is empty, has control characters or makes the username too long for STUN.
    """
    if not secret:
        raise ValueError("no TURN shared secret configured")
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be 1..{MAX_TTL_SECONDS}, not {ttl_seconds}")
    if not user_id or _CONTROL.search(user_id):
        raise ValueError("user_id must be a non-empty string without control characters")
    issued = time.time() if now is None else now
    expires_at = int(issued) + ttl_seconds
    username = f"{expires_at}:{user_id}"
    if len(username.encode()) > MAX_USERNAME_BYTES:
        raise ValueError("user_id too long for a TURN username")
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredentials(
        username=username,
        credential=base64.b64encode(digest).decode("ascii"),
        expires_at=expires_at,
        ttl_seconds=ttl_seconds,
    )


def ice_servers(*, stun_urls: list[str], turn_urls: list[str], secret: str, ttl_seconds: int,
                user_id: str, now: float | None = None) -> dict[str, Any]:
    """The body of ``GET /api/v1/calls/ice-servers`` (PROTOCOL.md) for ``user_id``.

    ``{"ice_servers": [{"urls": [stun…]}, {"urls": [turn…], "username", "credential"}],
    "ttl_seconds": N}``. Without a secret (or without TURN URLs) there is no TURN entry: the
    list holds STUN only. Entries with no URLs are left out. URLs are passed as configured
    (check them once at startup with ``validate_ice_url``); they never carry credentials.
    """
    servers: list[dict[str, Any]] = []
    if stun_urls:
        servers.append({"urls": list(stun_urls)})
    if secret and turn_urls:
        creds = mint_credentials(secret, user_id, ttl_seconds, now)
        servers.append({"urls": list(turn_urls), "username": creds.username,
                        "credential": creds.credential})
    return {"ice_servers": servers, "ttl_seconds": ttl_seconds}


# RFC 7064 (stun:, stuns:) and RFC 7065 (turn:, turns:): scheme ":" host [":" port]
# ["?transport=" udp|tcp]; stun(s) URLs take no query. No userinfo: credentials never go in URLs.
_URL = re.compile(
    r"^(?P<scheme>stuns?|turns?):"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?$"
)
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def validate_ice_url(url: str) -> str:
    """Return ``url`` if it is a well-formed stun:/stuns:/turn:/turns: URL, else raise ValueError.

    Refused: other schemes, ``//`` authorities, user info (``user:pass@``), ports outside
    1..65535, a ``transport`` on stun: URLs, ``transport=udp`` on turns: (TLS runs over TCP).
    """
    match = _URL.match(url)
    if match is None:
        if "@" in url:
            raise ValueError(f"ICE URL must not carry credentials: {url!r}")
        raise ValueError(
            f"not a STUN/TURN URL (stun:|stuns:|turn:|turns:host[:port][?transport=udp|tcp]): "
            f"{url!r}"
        )
    scheme, host = match["scheme"], match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"bad IPv6 address in ICE URL: {url!r}") from None
    elif not _HOSTNAME.match(host):
        raise ValueError(f"bad host in ICE URL: {url!r}")
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"port out of range in ICE URL: {url!r}")
    if match["transport"] is not None and scheme.startswith("stun"):
        raise ValueError(f"stun: URLs take no transport parameter: {url!r}")
    if match["transport"] == "udp" and scheme == "turns":
        raise ValueError(f"turns: runs over TLS/TCP, not udp: {url!r}")
    return url


def coturn_peer_range(cidr: str) -> str:
    """``"10.244.0.0/16"`` → ``"10.244.0.0-10.244.255.255"``: coturn's ``denied-peer-ip``
    takes an address or a ``start-end`` range, never CIDR (recent versions refuse to start)."""
    net = ipaddress.ip_network(cidr.strip(), strict=False)
    if net.num_addresses == 1:
        return str(net.network_address)
    return f"{net.network_address}-{net.broadcast_address}"

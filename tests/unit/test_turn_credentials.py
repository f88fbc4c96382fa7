"""calls/turn.py: TURN REST API credentials, the ICE server list, ICE URL validation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import subprocess
import time

import pytest

from nova.calls.turn import (
    MAX_TTL_SECONDS,
    TurnCredentials,
    coturn_peer_range,
    ice_servers,
    mint_credentials,
    validate_ice_url,
)

# Computed once, independently:
#   printf '1700003600:alice' | openssl dgst -sha1 -hmac north-wind -binary | base64
KNOWN = [
    ("north-wind", "alice", "1700003600:alice", "iRtTIZ3N38dm9S+dP+UkHfnN9Qo="),
    ("north-wind", "auth0|u:1", "1700003600:auth0|u:1", "LspXLPaUNKV6bS/e5XtWepSrJeg="),
]


@pytest.mark.parametrize(("secret", "user", "username", "credential"), KNOWN)
def test_mint_credentials_matches_known_vectors(secret: str, user: str, username: str,
                                                credential: str) -> None:
    creds = mint_credentials(secret, user, 3600, now=1_700_000_000.9)
    assert creds == TurnCredentials(username=username, credential=credential,
                                    expires_at=1_700_003_600, ttl_seconds=3600)


def test_mint_credentials_matches_openssl() -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    creds = mint_credentials("s3cr3t with spaces", "user-42", 600, now=1_800_000_000)
    out = subprocess.run(
        [openssl, "dgst", "-sha1", "-hmac", "s3cr3t with spaces", "-binary"],
        input=creds.username.encode(), capture_output=True, check=True, timeout=30,
    ).stdout
    assert creds.username == "1800000600:user-42"
    assert creds.credential == base64.b64encode(out).decode()


def test_mint_credentials_expires_ttl_after_now() -> None:
    before = int(time.time())
    creds = mint_credentials("s", "bob", 900)
    assert before + 900 <= creds.expires_at <= int(time.time()) + 900
    assert creds.username == f"{creds.expires_at}:bob"
    expected = hmac.new(b"s", creds.username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(creds.credential) == expected


def test_mint_credentials_differs_per_secret_user_and_expiry() -> None:
    base = mint_credentials("a", "u", 60, now=1000)
    assert mint_credentials("b", "u", 60, now=1000).credential != base.credential
    assert mint_credentials("a", "v", 60, now=1000).credential != base.credential
    assert mint_credentials("a", "u", 61, now=1000).credential != base.credential


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL_SECONDS + 1])
def test_mint_credentials_refuses_ttl_outside_cap(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        mint_credentials("s", "u", ttl)


def test_mint_credentials_accepts_ttl_cap() -> None:
    assert mint_credentials("s", "u", MAX_TTL_SECONDS, now=0).expires_at == MAX_TTL_SECONDS


@pytest.mark.parametrize(("secret", "user"), [("", "u"), ("s", ""), ("s", "a\nb"),
                                              ("s", "x" * 600)])
def test_mint_credentials_refuses_bad_input(secret: str, user: str) -> None:
    with pytest.raises(ValueError):
        mint_credentials(secret, user, 60)


STUN = ["stun:turn.example.com:3478"]
TURN = ["turn:turn.example.com:3478?transport=udp", "turn:turn.example.com:3478?transport=tcp",
        "turns:turn.example.com:443?transport=tcp"]


def test_ice_servers_with_secret_has_stun_and_turn_entries() -> None:
    body = ice_servers(stun_urls=STUN, turn_urls=TURN, secret="north-wind", ttl_seconds=3600,
                       user_id="alice", now=1_700_000_000)
    assert body == {
        "ice_servers": [
            {"urls": STUN},
            {"urls": TURN, "username": "1700003600:alice",
             "credential": "iRtTIZ3N38dm9S+dP+UkHfnN9Qo="},
        ],
        "ttl_seconds": 3600,
    }
    for url in body["ice_servers"][1]["urls"]:
        assert "@" not in url and "alice" not in url


def test_ice_servers_without_secret_is_stun_only() -> None:
    body = ice_servers(stun_urls=STUN, turn_urls=TURN, secret="", ttl_seconds=600, user_id="a")
    assert body == {"ice_servers": [{"urls": STUN}], "ttl_seconds": 600}


def test_ice_servers_leaves_out_empty_entries() -> None:
    only_turn = ice_servers(stun_urls=[], turn_urls=TURN, secret="s", ttl_seconds=60,
                            user_id="a", now=0)
    assert [sorted(entry) for entry in only_turn["ice_servers"]] == [
        ["credential", "urls", "username"]]
    assert ice_servers(stun_urls=[], turn_urls=[], secret="s", ttl_seconds=60,
                       user_id="a")["ice_servers"] == []


def test_ice_servers_returns_copies_of_url_lists() -> None:
    stun = list(STUN)
    body = ice_servers(stun_urls=stun, turn_urls=[], secret="", ttl_seconds=60, user_id="a")
    body["ice_servers"][0]["urls"].append("stun:evil.example")
    assert stun == STUN


@pytest.mark.parametrize("url", [
    "stun:stun.example.com", "stun:1.2.3.4:3478", "stuns:stun.example.com:5349",
    "turn:turn.example.com", "turn:turn.example.com:3478?transport=udp",
    "turn:[2001:db8::1]:3478?transport=tcp", "turns:turn.example.com:443?transport=tcp",
    "turns:turn.example.com:5349",
])
def test_validate_ice_url_accepts(url: str) -> None:
    assert validate_ice_url(url) == url


@pytest.mark.parametrize("url", [
    "http://turn.example.com", "turn://turn.example.com", "turn:user:pass@turn.example.com",
    "turn:turn.example.com:0", "turn:turn.example.com:70000", "turn:",
    "stun:stun.example.com?transport=udp", "turns:turn.example.com:443?transport=udp",
    "turn:turn.example.com?transport=sctp", "turn:[zz::1]:3478", "turn:bad_host:3478",
    "turn:turn.example.com:3478 ", "turn:-bad.example.com",
])
def test_validate_ice_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        validate_ice_url(url)


def test_validate_ice_url_says_credentials_are_not_allowed() -> None:
    with pytest.raises(ValueError, match="credentials"):
        validate_ice_url("turn:alice:pw@turn.example.com:3478")


@pytest.mark.parametrize(("cidr", "expected"), [
    ("10.244.0.0/16", "10.244.0.0-10.244.255.255"),
    ("10.96.0.0/12", "10.96.0.0-10.111.255.255"),
    ("192.0.2.7/32", "192.0.2.7"),
    ("fd00:10:96::/112", "fd00:10:96::-fd00:10:96::ffff"),
])
def test_coturn_peer_range_turns_cidr_into_start_end(cidr: str, expected: str) -> None:
    assert coturn_peer_range(cidr) == expected

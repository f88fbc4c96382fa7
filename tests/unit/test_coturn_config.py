"""The shipped deploy/config/coturn/turnserver.conf: required options, no secrets, SSRF list."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "deploy" / "config" / "coturn" / "turnserver.conf"

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _options() -> list[tuple[str, str]]:
    out = []
    for raw in CONF.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out.append((key.strip(), value.strip()))
    return out


def _denied() -> list[tuple[IP, IP]]:
    ranges = []
    for key, value in _options():
        if key == "denied-peer-ip":
            start, _, end = value.partition("-")
            ranges.append((ipaddress.ip_address(start), ipaddress.ip_address(end or start)))
    return ranges


def _is_denied(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(lo.version == addr.version and int(lo) <= int(addr) <= int(hi)
               for lo, hi in _denied())


def test_coturn_config_has_required_options() -> None:
    opts = dict(_options())
    for flag in ("use-auth-secret", "fingerprint", "no-cli", "no-multicast-peers", "no-tlsv1",
                 "no-tlsv1_1"):
        assert flag in opts, flag
    assert opts["listening-port"] == "3478"
    assert opts["alt-listening-port"] == "3479"
    assert opts["tls-listening-port"] == "5349"
    assert int(opts["min-port"]) < int(opts["max-port"])
    assert opts["max-bps"] == "125000"  # bytes/s: 1 Mbit/s
    assert int(opts["stale-nonce"]) > 0
    assert int(opts["user-quota"]) > 0 and int(opts["total-quota"]) > 0


def test_coturn_config_holds_no_secret_realm_or_test_only_option() -> None:
    keys = {key for key, _ in _options()}
    forbidden = {"allow-loopback-peers", "static-auth-secret", "realm", "external-ip", "user",
                 "lt-cred-mech", "cli-password", "allowed-peer-ip", "prometheus"}
    assert not keys & forbidden
    assert "allow-loopback-peers" not in CONF.read_text().replace(
        "Never add allow-loopback-peers", "")


def test_coturn_config_denied_peers_are_ranges_not_cidr() -> None:
    values = [value for key, value in _options() if key == "denied-peer-ip"]
    assert values
    for value in values:
        assert "/" not in value, value
        start, _, end = value.partition("-")
        lo, hi = ipaddress.ip_address(start), ipaddress.ip_address(end or start)
        assert lo.version == hi.version and int(lo) <= int(hi), value
        # coturn 4.6 reads the all-zero IPv6 address as "any": it would deny every peer.
        assert lo != ipaddress.IPv6Address("::"), value


@pytest.mark.parametrize("ip", [
    "127.0.0.1", "127.255.255.254", "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.1",
    "192.168.1.1", "169.254.169.254", "169.254.0.1", "100.64.0.1", "100.127.255.254", "0.0.0.1",
    "192.0.0.8", "192.0.2.1", "198.51.100.7", "203.0.113.9", "198.18.0.1", "240.0.0.1",
    "255.255.255.255", "::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "64:ff9b::a00:1",
    "2001:db8::1", "fc00::1", "fd12:3456::1", "fe80::1", "febf::1", "fec0::1",
])
def test_coturn_config_denies_private_peer(ip: str) -> None:
    assert _is_denied(ip)


@pytest.mark.parametrize("ip", [
    "8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.15.255.255", "172.32.0.0",
    "169.253.255.255", "11.0.0.1", "2606:4700::1111", "2a00:1450::1",
])
def test_coturn_config_allows_public_peer(ip: str) -> None:
    assert not _is_denied(ip)

"""calls/turncheck.py message codec, cross-checked against aioice's independent STUN code."""

from __future__ import annotations

import pytest
from aioice import stun

from nova.calls import turncheck as tc


def test_stun_encode_is_parsed_by_aioice_with_integrity_and_fingerprint() -> None:
    key = tc.long_term_key("1700003600:alice", "nova.test", "pw")
    msg = tc.StunMessage(tc.ALLOCATE, tc.REQUEST)
    msg.add(tc.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))
    msg.add(tc.USERNAME, b"1700003600:alice").add(tc.REALM, b"nova.test")
    msg.add(tc.NONCE, b"abcdef")
    parsed = stun.parse_message(msg.encode(key))  # raises on a wrong FINGERPRINT
    assert parsed.message_method == stun.Method.ALLOCATE
    assert parsed.message_class == stun.Class.REQUEST
    assert parsed.transaction_id == msg.transaction_id
    assert parsed.attributes["USERNAME"] == "1700003600:alice"
    assert parsed.attributes["REQUESTED-TRANSPORT"] == 0x11000000
    assert parsed.check_message_integrity(key)
    assert not parsed.check_message_integrity(tc.long_term_key("x", "nova.test", "pw"))


@pytest.mark.parametrize("addr", [("203.0.113.9", 3478), ("2001:db8::7", 49152)])
def test_stun_decode_reads_aioice_messages(addr: tuple[str, int]) -> None:
    key = b"k" * 16
    ours = tc.StunMessage(tc.CREATE_PERMISSION, tc.SUCCESS)
    theirs = stun.Message(stun.Method.CREATE_PERMISSION, stun.Class.RESPONSE,
                          transaction_id=ours.transaction_id)
    theirs.attributes["XOR-MAPPED-ADDRESS"] = addr
    theirs.attributes["XOR-RELAYED-ADDRESS"] = addr
    theirs.add_message_integrity(key)
    decoded = tc.StunMessage.decode(bytes(theirs))
    assert decoded.method == tc.CREATE_PERMISSION and decoded.cls == tc.SUCCESS
    assert decoded.xor_address(tc.XOR_MAPPED_ADDRESS) == addr
    assert decoded.xor_address(tc.XOR_RELAYED_ADDRESS) == addr
    assert decoded.check_integrity(key)
    assert not decoded.check_integrity(b"other")


def test_stun_decode_reads_error_code() -> None:
    theirs = stun.Message(stun.Method.ALLOCATE, stun.Class.ERROR)
    theirs.attributes["ERROR-CODE"] = (438, "Stale Nonce")
    theirs.attributes["NONCE"] = b"n2"
    decoded = tc.StunMessage.decode(bytes(theirs))
    assert decoded.error() == (438, "Stale Nonce")
    assert decoded.get(tc.NONCE) == b"n2"


def test_stun_decode_refuses_bad_fingerprint_and_garbage() -> None:
    wire = bytearray(tc.StunMessage(tc.BINDING, tc.REQUEST).encode())
    wire[-1] ^= 0xFF
    with pytest.raises(ValueError, match="FINGERPRINT"):
        tc.StunMessage.decode(bytes(wire))
    with pytest.raises(ValueError):
        tc.StunMessage.decode(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_xor_address_round_trip() -> None:
    tid = bytes(range(12))
    for ip, port in [("127.0.0.1", 1), ("::1", 65535), ("198.51.100.1", 40000)]:
        assert tc.decode_xor_address(tc.encode_xor_address(ip, port, tid), tid) == (ip, port)


@pytest.mark.parametrize(("target", "expected"), [
    ("turn.example.com", ("turn.example.com", 3478)),
    ("turn.example.com:443", ("turn.example.com", 443)),
    ("127.0.0.1:3478", ("127.0.0.1", 3478)),
    ("[::1]:5349", ("::1", 5349)),
    ("[::1]", ("::1", 3478)),
    ("2001:db8::1", ("2001:db8::1", 3478)),
])
def test_parse_host_port(target: str, expected: tuple[str, int]) -> None:
    assert tc.parse_host_port(target) == expected


@pytest.mark.parametrize("target", ["", ":3478", "host:0", "host:99999", "host:x"])
def test_parse_host_port_refuses(target: str) -> None:
    with pytest.raises(ValueError):
        tc.parse_host_port(target)


def test_report_ok_only_when_every_step_passed() -> None:
    good = tc.CheckResult("stun_binding", True, "mapped 1.2.3.4:5")
    bad = tc.CheckResult("turn_allocate", False, "401 Unauthorized")
    assert tc.TurnCheckReport("h:1/udp", (good,)).ok
    assert not tc.TurnCheckReport("h:1/udp", (good, bad)).ok
    assert not tc.TurnCheckReport("h:1/udp", ()).ok
    table = tc.TurnCheckReport("h:1/udp", (good, bad)).table()
    assert "FAIL  turn_allocate" in table and table.endswith("result: FAIL")

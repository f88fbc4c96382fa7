"""`nova turn credentials` and `nova turn peer-range`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from nova.cli import main


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for var in ("NOVA_TURN_SHARED_SECRET", "NOVA_TURN_SHARED_SECRET_FILE", "NOVA_TURN_URLS",
                "NOVA_TURN_TTL_SECONDS"):
        monkeypatch.delenv(var, raising=False)
    return CliRunner()


def test_turn_credentials_prints_verifiable_json(runner: CliRunner) -> None:
    before = int(time.time())
    result = runner.invoke(main, ["turn", "credentials", "--user", "u-7", "--ttl", "600"],
                           env={"NOVA_TURN_SHARED_SECRET": "sekrit",
                                "NOVA_TURN_URLS": "turn:t.example:3478?transport=udp"})
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["urls"] == ["turn:t.example:3478?transport=udp"]
    assert body["ttl_seconds"] == 600
    assert before + 600 <= body["expires_at"] <= int(time.time()) + 600
    assert body["username"] == f"{body['expires_at']}:u-7"
    mac = hmac.new(b"sekrit", body["username"].encode(), hashlib.sha1).digest()
    assert body["credential"] == base64.b64encode(mac).decode()


def test_turn_credentials_reads_secret_file_and_default_ttl(runner: CliRunner,
                                                            tmp_path: Path) -> None:
    secret = tmp_path / "turn.secret"
    secret.write_text("from-file\n")
    result = runner.invoke(main, ["turn", "credentials", "--user", "u"],
                           env={"NOVA_TURN_SHARED_SECRET_FILE": str(secret),
                                "NOVA_TURN_TTL_SECONDS": "1200"})
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["ttl_seconds"] == 1200
    mac = hmac.new(b"from-file", body["username"].encode(), hashlib.sha1).digest()
    assert body["credential"] == base64.b64encode(mac).decode()


def test_turn_credentials_without_secret_fails_clearly(runner: CliRunner) -> None:
    result = runner.invoke(main, ["turn", "credentials", "--user", "u"])
    assert result.exit_code != 0
    assert "NOVA_TURN_SHARED_SECRET" in result.output


def test_turn_credentials_refuses_ttl_over_a_day(runner: CliRunner) -> None:
    result = runner.invoke(main, ["turn", "credentials", "--user", "u", "--ttl", "86401"],
                           env={"NOVA_TURN_SHARED_SECRET": "s"})
    assert result.exit_code == 2


def test_turn_check_without_secret_fails_unless_stun_only(runner: CliRunner) -> None:
    result = runner.invoke(main, ["turn", "check", "127.0.0.1:9"])
    assert result.exit_code != 0 and "NOVA_TURN_SHARED_SECRET" in result.output
    bad = runner.invoke(main, ["turn", "check", "127.0.0.1:9", "--peer", "not-an-ip",
                               "--stun-only"])
    assert bad.exit_code == 2


def test_turn_peer_range_prints_coturn_args(runner: CliRunner) -> None:
    result = runner.invoke(main, ["turn", "peer-range", "10.244.0.0/16", "fd00:10:96::/112"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "--denied-peer-ip=10.244.0.0-10.244.255.255",
        "--denied-peer-ip=fd00:10:96::-fd00:10:96::ffff",
    ]
    assert runner.invoke(main, ["turn", "peer-range", "10.0.0.0/33"]).exit_code == 2

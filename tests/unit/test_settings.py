"""Settings: NOVA_* environment, secrets from files (not both), validation, redaction."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from nova.app import signing_key
from nova.cli import main
from nova.settings import ConfigError, Settings, load_settings


def test_settings_read_nova_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOVA_PORT", "4100")
    monkeypatch.setenv("NOVA_TURN_URLS", "turn:a.example:3478, turns:a.example:5349")
    monkeypatch.setenv("NOVA_MAX_MESSAGE_BYTES", "100")
    s = load_settings()
    assert s.port == 4100 and s.max_message_bytes == 100
    assert s.turn_urls == ["turn:a.example:3478", "turns:a.example:5349"]
    assert Settings().default_page_size == 50 and Settings().max_page_size == 200


def test_settings_secret_from_file_and_not_both(tmp_path: Path) -> None:
    f = tmp_path / "jwt"
    f.write_text("  from-a-file-" + "k" * 30 + "\n")
    assert load_settings(jwt_secret_file=f).jwt_secret == "from-a-file-" + "k" * 30
    with pytest.raises(ConfigError, match="not both"):
        load_settings(jwt_secret="inline", jwt_secret_file=f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(turn_shared_secret_file=tmp_path / "missing")


@pytest.mark.parametrize("overrides", [
    {"database_url": "mysql://x/y"}, {"turn_urls": "http://not-turn"},
    {"port": "abc"}, {"max_page_size": 0}, {"access_token_ttl_seconds": 5},
    {"log_level": "loud"},
])
def test_settings_invalid_values_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_settings(**overrides)


def test_settings_database_urls_in_sqlalchemy_form(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).sqlalchemy_url == \
        f"sqlite+aiosqlite:///{(tmp_path / 'nova.db').resolve()}"
    pg = Settings(database_url="postgres://u:p@h:5432/d")
    assert pg.is_postgres and pg.sqlalchemy_url == "postgresql+asyncpg://u:p@h:5432/d"


def test_settings_redacted_hides_every_secret() -> None:
    s = Settings(jwt_secret="j" * 40, turn_shared_secret="turn-secret",
                 external_jwt_secret="ext-secret", database_url="postgresql://u:pw@h/d",
                 redis_url="redis://:rpw@h:6379/0")
    red = s.redacted()
    text = json.dumps(red)
    for secret in ("j" * 40, "turn-secret", "ext-secret", ":pw@", "rpw"):
        assert secret not in text
    assert red["database_url"] == "postgresql://u:***@h/d"
    assert Settings().redacted()["jwt_secret"] == ""  # nothing to hide: shown as unset


def test_check_config_cli_redacts_and_fails_on_invalid(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("NOVA_TURN_SHARED_SECRET", "very-secret-turn")
    monkeypatch.setenv("NOVA_DATA_DIR", str(tmp_path))
    ok = CliRunner().invoke(main, ["check-config"])
    assert ok.exit_code == 0 and "very-secret-turn" not in ok.output
    assert json.loads(ok.output)["turn_shared_secret"] == "***"
    monkeypatch.setenv("NOVA_DATABASE_URL", "oracle://x")
    bad = CliRunner().invoke(main, ["check-config"])
    assert bad.exit_code != 0 and "invalid configuration" in bad.output


def test_signing_key_refuses_short_secret_and_persists_a_generated_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32"):
        signing_key(Settings(jwt_secret="short", data_dir=tmp_path))
    s = Settings(data_dir=tmp_path / "d")
    key = signing_key(s)
    assert len(key) >= 32 and signing_key(s) == key
    mode = (tmp_path / "d" / "jwt.key").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600

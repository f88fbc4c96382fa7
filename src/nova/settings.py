"""Settings: typed, from ``NOVA_*`` environment variables (and optionally a ``.env``-style file).

Secrets may come inline (``NOVA_JWT_SECRET``) or from a file (``NOVA_JWT_SECRET_FILE``);
setting both is refused. Every limit is a named setting with a default fit for real users.
Build one ``Settings`` in ``cli.main`` and hand it to ``create_app``; never at import time.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SECRET_FIELDS = ("jwt_secret", "turn_shared_secret", "external_jwt_secret")

CsvList = Annotated[list[str], NoDecode]


class ConfigError(ValueError):
    """The settings are invalid; the message says which and why."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOVA_", extra="ignore", frozen=True)

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Path("./nova-data")
    database_url: str = ""  # empty: SQLite file in data_dir; postgresql://... for PostgreSQL
    redis_url: str = ""  # empty: in-process broker; redis://host:6379/0 for several replicas
    redis_prefix: str = "nova"
    instance_id: str = Field(default_factory=lambda: secrets.token_hex(6))

    # --- server --------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 3000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    db_pool_size: int = Field(default=10, ge=1, le=200)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    # --- tokens --------------------------------------------------------------------------
    jwt_secret: str = ""
    jwt_secret_file: Path | None = None
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=300)
    # Tokens minted by an external auth service (optional): HS256 secret or a PEM public key.
    external_jwt_secret: str = ""
    external_jwt_secret_file: Path | None = None
    external_jwt_public_key_file: Path | None = None
    external_jwt_issuer: str = ""
    external_jwt_audience: str = ""

    # --- limits --------------------------------------------------------------------------
    max_request_bytes: int = Field(default=64 * 1024, ge=1024)
    max_message_bytes: int = Field(default=16 * 1024, ge=1)
    default_page_size: int = Field(default=50, ge=1)
    max_page_size: int = Field(default=200, ge=1)
    max_group_members: int = Field(default=1000, ge=2)
    max_client_msg_id_length: int = Field(default=64, ge=1)

    # --- realtime ------------------------------------------------------------------------
    heartbeat_interval_ms: int = Field(default=25_000, ge=100)
    event_retention_days: float = Field(default=30.0, gt=0)
    ws_max_sockets_per_user: int = Field(default=10, ge=1)
    ws_max_frame_bytes: int = Field(default=64 * 1024, ge=1024)
    # permessage-deflate costs CPU per socket per frame (no sharing across recipients):
    # off by default so fan-out stays cheap; turn on for bandwidth-starved clients.
    ws_compression: bool = False
    ws_send_queue_size: int = Field(default=1000, ge=10)
    ws_frames_per_second: float = Field(default=50.0, gt=0)
    ws_frame_burst: int = Field(default=100, ge=1)
    typing_min_interval_ms: int = Field(default=1000, ge=0)
    presence_grace_ms: int = Field(default=5000, ge=0)
    dispatch_tick_ms: int = Field(default=1000, ge=10)

    # --- calls ---------------------------------------------------------------------------
    turn_shared_secret: str = ""
    turn_shared_secret_file: Path | None = None
    turn_urls: CsvList = []
    stun_urls: CsvList = []
    turn_ttl_seconds: int = Field(default=3600, ge=60, le=86_400)
    call_ring_timeout_seconds: float = Field(default=45.0, gt=0)
    call_disconnect_grace_seconds: float = Field(default=20.0, gt=0)
    call_signal_max_bytes: int = Field(default=16 * 1024, ge=256)

    # --- HTTP edge -----------------------------------------------------------------------
    cors_origins: CsvList = []
    trusted_proxies: CsvList = []
    rate_limits: Literal["on", "off"] = "on"
    rate_limit_ip_per_second: float = Field(default=20.0, gt=0)
    rate_limit_ip_burst: int = Field(default=100, ge=1)
    rate_limit_user_per_second: float = Field(default=10.0, gt=0)
    rate_limit_user_burst: int = Field(default=50, ge=1)
    max_connections_per_ip: int = Field(default=100, ge=1)
    # Strict-Transport-Security max-age sent on responses that came over TLS; 0: no HSTS.
    hsts_max_age_seconds: int = Field(default=31_536_000, ge=0)

    _split = field_validator("turn_urls", "stun_urls", "cors_origins", "trusted_proxies",
                             mode="before")(_split_csv)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or CIDR: {item!r}") from None
        return value

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        pairs = [
            ("jwt_secret", "jwt_secret_file"),
            ("turn_shared_secret", "turn_shared_secret_file"),
            ("external_jwt_secret", "external_jwt_secret_file"),
        ]
        for inline, file_field in pairs:
            path = getattr(self, file_field)
            if path is None:
                continue
            if getattr(self, inline):
                raise ValueError(
                    f"set NOVA_{inline.upper()} or NOVA_{file_field.upper()}, not both"
                )
            try:
                value = Path(path).read_text().strip()
            except OSError as exc:
                raise ValueError(f"NOVA_{file_field.upper()}: cannot read {path}: {exc}") from exc
            object.__setattr__(self, inline, value)
        for url in [*self.turn_urls, *self.stun_urls]:
            if not url.startswith(("turn:", "turns:", "stun:", "stuns:")):
                raise ValueError(f"not a STUN/TURN URL: {url!r}")
        if self.database_url and not self.database_url.startswith(
            ("postgresql://", "postgres://", "postgresql+asyncpg://", "sqlite://",
             "sqlite+aiosqlite://")
        ):
            raise ValueError("NOVA_DATABASE_URL must be postgresql://… or sqlite://…")
        return self

    # --- derived -------------------------------------------------------------------------
    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql", "postgres:"))

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL in SQLAlchemy's async form."""
        url = self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'nova.db').resolve()}"
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        if url.startswith("postgresql://"):
            return "postgresql+asyncpg://" + url[len("postgresql://"):]
        if url.startswith("sqlite://"):
            return "sqlite+aiosqlite://" + url[len("sqlite://"):]
        return url

    @property
    def rate_limits_enabled(self) -> bool:
        return self.rate_limits == "on"

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with every secret replaced by ``***``."""
        out = self.model_dump(mode="json")
        for key in SECRET_FIELDS:
            if out.get(key):
                out[key] = "***"
        for key in ("database_url", "redis_url"):
            out[key] = _redact_url(out[key])
        return out


def _redact_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment (and ``env_file``); raise ``ConfigError``."""
    from pydantic import ValidationError

    try:
        if env_file is not None:
            return Settings(_env_file=str(env_file), **overrides)  # type: ignore[call-arg]
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(problems) from None

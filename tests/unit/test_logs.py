"""nova.logs: JSON lines, request id, redaction of secrets and message bodies."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from nova.logs import REDACTED, configure_logging, redact_text, request_id

SECRETS = ("hunter2-PASSWORD", "eyJhbGciOi.SECRET.sig", "rt_SECRETREFRESH", "TURNSECRET99")


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging("info", "json", stream=stream)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_logs_json_one_line_per_record_with_fields(capture: io.StringIO) -> None:
    log = logging.getLogger("nova.test")
    token = request_id.set("req-42")
    try:
        log.info("user %s joined\nsecond line", "u_1", extra={"conversation_kind": "group"})
    finally:
        request_id.reset(token)
    log.debug("dropped at info level")
    log.warning("outside a request")
    raw = capture.getvalue().splitlines()
    assert len(raw) == 2
    first, second = lines(capture)
    assert first["msg"] == "user u_1 joined\nsecond line"
    assert first["level"] == "info" and first["logger"] == "nova.test"
    assert first["request_id"] == "req-42" and first["conversation_kind"] == "group"
    assert str(first["ts"]).endswith("Z") and len(str(first["ts"])) == 24
    assert second["request_id"] is None and second["level"] == "warning"


def test_logs_never_contain_passwords_tokens_or_bodies(capture: io.StringIO) -> None:
    log = logging.getLogger("nova.test")
    log.info(
        "login attempt",
        extra={
            "username": "alice",
            "password": SECRETS[0],
            "access_token": SECRETS[1],
            "tokens": {"refresh_token": SECRETS[2]},
            "body": "my private message text",
            "message_body": "another private text",
            "turn_shared_secret": SECRETS[3],
        },
    )
    log.info("GET /ws?access_token=%s&since=5", SECRETS[1])
    log.info("headers: Authorization: Bearer %s", SECRETS[1])
    log.info("payload %s", json.dumps({"username": "bob", "password": SECRETS[0]}))
    log.info("connecting to postgresql://nova:%s@db:5432/nova", SECRETS[3])
    log.info("refresh_token=%s client_secret: %s", SECRETS[2], SECRETS[3])
    try:
        raise ValueError(f"bad credentials password={SECRETS[0]}")
    except ValueError:
        log.exception("failed")
    text = capture.getvalue()
    for secret in SECRETS:
        assert secret not in text
    assert "private" not in text
    records = lines(capture)
    assert records[0]["username"] == "alice" and records[0]["password"] == REDACTED
    assert records[0]["tokens"] == REDACTED
    assert records[1]["msg"] == f"GET /ws?access_token={REDACTED}&since=5"
    assert "postgresql://nova:" in str(records[4]["msg"]) and "@db:5432" in str(records[4]["msg"])
    assert "ValueError" in str(records[-1]["exc"])


def test_logs_redact_text_leaves_ordinary_text_alone() -> None:
    plain = "delivered 5 frames to 3 sockets; tokens_issued=4 secretary=bob"
    assert redact_text(plain) == plain
    assert redact_text('{"password": "x1", "n": 1}') == f'{{"password": "{REDACTED}", "n": 1}}'


def test_logs_text_format_and_level_setting() -> None:
    stream = io.StringIO()
    handler = configure_logging("warning", "text", stream=stream)
    try:
        log = logging.getLogger("nova.test")
        log.info("quiet")
        log.error("loud password=%s", SECRETS[0], extra={"status": 503})
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    out = stream.getvalue()
    assert "quiet" not in out
    assert "ERROR" in out and "nova.test [-] loud" in out and "status=503" in out
    assert SECRETS[0] not in out


def test_logs_configure_is_idempotent_and_validates() -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    h1 = configure_logging("info", "json", stream=io.StringIO())
    h2 = configure_logging("debug", "json", stream=io.StringIO())
    try:
        assert h1 not in root.handlers and h2 in root.handlers
        assert len(root.handlers) == before + 1
        assert logging.getLogger("uvicorn.access").disabled
    finally:
        root.removeHandler(h2)
        root.setLevel(logging.WARNING)
    with pytest.raises(ValueError):
        configure_logging("loud", "json")
    with pytest.raises(ValueError):
        configure_logging("info", "xml")  # type: ignore[arg-type]

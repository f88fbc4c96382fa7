"""Realtime through the edge: an account (a probe made for this run, or the operator's), a
WebSocket that gets ``hello`` and answers a ``ping``, and the probe's clean-up."""

from __future__ import annotations

import asyncio
import secrets

import websockets

from nova.client import ApiError, NovaClient
from nova.verify.result import Result, failed, passed

PROBE_PREFIX = "nova-verify-"


async def sign_in(client: NovaClient, username: str | None,
                  password: str | None) -> tuple[Result, bool]:
    """Log in with the given credentials, or register a probe account. Returns the result and
    whether a probe account was created (it must be closed afterwards)."""
    name = "realtime.account"
    if username:
        try:
            await client.login(username, password or "")
        except ApiError as exc:
            return failed(name, f"login as {username}: {exc}",
                          "check --username / --password-file"), False
        except Exception as exc:
            return failed(name, f"login: {type(exc).__name__}: {exc}", "see https.health"), False
        return passed(name, f"logged in as {username}"), False
    probe = PROBE_PREFIX + secrets.token_hex(4)
    try:
        await client.register(probe, secrets.token_urlsafe(24))
    except ApiError as exc:
        return failed(name, f"registering probe account {probe}: {exc}",
                      "if sign-up is closed, pass --username/--password-file of a test "
                      "account"), False
    except Exception as exc:
        return failed(name, f"register: {type(exc).__name__}: {exc}", "see https.health"), False
    return passed(name, f"probe account {probe} created"), True


async def check_websocket(client: NovaClient, timeout: float = 10.0) -> Result:
    name = "realtime.websocket"
    try:
        async with asyncio.timeout(timeout * 2):
            async with client.socket(open_timeout=timeout) as ws:
                hello = ws.hello or {}
                pong = await ws.ping(timeout)
    except websockets.InvalidStatus as exc:
        status = exc.response.status_code
        return failed(name, f"upgrade refused: HTTP {status}",
                      "the edge must pass WebSocket upgrades on /ws (nginx: Upgrade and "
                      "Connection headers; ingress: websocket timeouts)"
                      if status in (400, 404, 426) else
                      "check Nova's allowed origins and the edge's connection limits")
    except ApiError as exc:
        return failed(name, f"first frame was not hello: {exc}", "see Nova's logs")
    except (TimeoutError, OSError, websockets.WebSocketException) as exc:
        return failed(name, f"{type(exc).__name__}: {exc}",
                      "the edge must pass WebSocket upgrades on /ws with long timeouts")
    if pong.get("type") != "pong":
        return failed(name, f"ping answered with {pong!r}", "see Nova's logs")
    return passed(name, f"hello (heartbeat {hello.get('heartbeat_interval_ms')} ms), "
                        "ping answered")


async def clean_up(client: NovaClient, probe: bool) -> Result:
    name = "realtime.cleanup"
    try:
        if probe:
            await client.close_account()
            return passed(name, f"probe account {(client.user or {}).get('username')} closed "
                                "(DELETE /api/v1/users/me)")
        await client.logout()
        return passed(name, "session logged out")
    except Exception as exc:
        return failed(name, f"{type(exc).__name__}: {exc}",
                      "disable it by hand: nova user disable <username>")

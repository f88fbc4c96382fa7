"""TURN: a STUN Binding, then a TURN allocation with the credentials Nova hands its clients
(``GET /api/v1/calls/ice-servers``), using Nova's own client (``nova.calls.turncheck``)."""

from __future__ import annotations

import re
from typing import Any

from nova.calls.turncheck import check_turn_server, parse_host_port
from nova.client import NovaClient
from nova.verify.result import Result, failed, passed, skipped

_TURN_URL = re.compile(r"^turns?:(?P<host>\[[^\]]+\]|[^:?]+)(?::(?P<port>\d+))?"
                       r"(?:\?transport=(?P<transport>udp|tcp))?$")


def turn_entry(body: dict[str, Any]) -> dict[str, Any] | None:
    for server in body.get("ice_servers", []):
        if server.get("username") and server.get("credential"):
            return dict(server)
    return None


def target_from_urls(urls: list[str]) -> tuple[str, int] | None:
    """The first plain ``turn:`` URL over UDP (or without transport) as (host, port)."""
    for url in urls:
        m = _TURN_URL.match(url)
        if m and url.startswith("turn:") and m.group("transport") in (None, "udp"):
            return m.group("host").strip("[]"), int(m.group("port") or 3478)
    return None


async def check_turn(client: NovaClient | None, target: str | None,
                     timeout: float = 5.0) -> list[Result]:
    stun, alloc = "turn.stun", "turn.allocation"
    entry: dict[str, Any] | None = None
    why_no_creds = "no account (see realtime.account)"
    if client is not None and client.access_token:
        try:
            entry = turn_entry(await client.ice_servers())
            if entry is None:
                why_no_creds = "ice-servers lists no TURN server with credentials"
        except Exception as exc:
            why_no_creds = f"GET /api/v1/calls/ice-servers: {exc}"
    if target:
        try:
            host, port = parse_host_port(target)
        except ValueError as exc:
            return [failed(stun, str(exc), "--turn HOST[:PORT]")]
    elif entry is not None and (found := target_from_urls(list(entry.get("urls", [])))):
        host, port = found
    else:
        return [skipped(stun, "no --turn given and no turn: URL from ice-servers"),
                skipped(alloc, why_no_creds if entry is None else "no udp turn: URL")]
    where = f"{host}:{port}/udp"
    report = await check_turn_server(
        host, port, username=entry["username"] if entry else None,
        password=entry["credential"] if entry else None, step_timeout=timeout)
    rows = {r.name: r for r in report.results}
    out: list[Result] = []
    down_hint = ("is coturn running and UDP 3478 open? kubectl get pods -n nova-turn; "
                 "nova turn check HOST")
    if "connect" in rows:
        out.append(failed(stun, f"{where}: {rows['connect'].detail}", down_hint))
    elif rows["stun_binding"].ok:
        out.append(passed(stun, f"{where}: {rows['stun_binding'].detail}"))
    else:
        out.append(failed(stun, f"{where}: {rows['stun_binding'].detail}", down_hint))
    if entry is None:
        out.append(failed(alloc, why_no_creds,
                          "set NOVA_TURN_SHARED_SECRET and NOVA_TURN_URLS on Nova")
                   if client is not None and client.access_token else skipped(alloc,
                                                                              why_no_creds))
    elif "turn_allocate" in rows:
        r = rows["turn_allocate"]
        out.append(passed(alloc, f"{where}: {r.detail}") if r.ok else failed(
            alloc, f"{where}: {r.detail}",
            "Nova and coturn must share the same static-auth-secret; check clocks (NTP)"))
    else:
        out.append(failed(alloc, "no allocation attempted: the server did not answer STUN",
                          down_hint))
    return out

"""``verify(options)``: every check in order, as one ``Report``. Never raises for a failing
service: each failure is a ``fail`` row with its reason and a hint."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import httpx

from nova.client import NovaClient
from nova.verify import argocd, https, prometheus, realtime, turn
from nova.verify.result import Report, skipped


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    url: str  # https://HOST[:PORT]
    http_url: str | None = None  # default http://HOST
    turn: str | None = None  # HOST[:PORT]; default the turn: URL Nova hands out
    prometheus: str | None = None
    alertmanager: str | None = None
    argocd: str | None = None
    argocd_token: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    username: str | None = None
    password: str | None = None
    timeout: float = 10.0
    nova_job: str = "nova"


def _verify_arg(options: VerifyOptions) -> bool | ssl.SSLContext:
    """Nova's URL: the system CAs, or ONLY the given CA (a private CA must be the issuer)."""
    if options.insecure:
        return False
    if options.ca_file:
        return ssl.create_default_context(cafile=options.ca_file)
    return True


def _tools_verify_arg(options: VerifyOptions) -> bool | ssl.SSLContext:
    """Prometheus, Alertmanager, Argo CD: the system CAs plus the given CA, if any."""
    if options.insecure:
        return False
    ctx = ssl.create_default_context()
    if options.ca_file:
        ctx.load_verify_locations(cafile=options.ca_file)
    return ctx


async def verify(options: VerifyOptions) -> Report:
    url = options.url.rstrip("/")
    host, port = https.host_port(url)
    report = Report(url)
    add = report.results.append
    tls = _verify_arg(options)
    tools_tls = _tools_verify_arg(options)

    # --- HTTPS ------------------------------------------------------------------------------
    add(await asyncio.to_thread(https.check_certificate, host, port, ca_file=options.ca_file,
                                insecure=options.insecure, timeout=options.timeout))
    add(await asyncio.to_thread(https.check_legacy_tls_refused, host, port, options.timeout))
    async with httpx.AsyncClient(base_url=url, verify=tls, timeout=options.timeout) as http:
        health, response = await https.check_health(http)
        add(health)
        add(await https.check_ready(http))
    add(https.check_security_headers(response))
    http_url = options.http_url or f"http://{f'[{host}]' if ':' in host else host}"
    add(await https.check_redirect(http_url, host, options.timeout))

    # --- realtime and TURN (one account for both) -------------------------------------------
    async with NovaClient(url, verify=tls, timeout=options.timeout) as client:
        account, probe = await realtime.sign_in(client, options.username, options.password)
        add(account)
        signed_in = client.access_token is not None
        if signed_in:
            add(await realtime.check_websocket(client, options.timeout))
        else:
            add(skipped("realtime.websocket", "no account (see realtime.account)"))
        for r in await turn.check_turn(client if signed_in else None, options.turn,
                                       min(options.timeout, 5.0)):
            add(r)
        if signed_in:
            add(await realtime.clean_up(client, probe))

    # --- monitoring ---------------------------------------------------------------------------
    if options.prometheus:
        async with httpx.AsyncClient(base_url=options.prometheus.rstrip("/"),
                                     timeout=options.timeout, verify=tools_tls) as prom:
            add(await prometheus.check_targets(prom, options.nova_job))
            add(await prometheus.check_metrics(prom, options.nova_job))
            add(await prometheus.check_rules(prom))
    else:
        for name in ("prometheus.targets", "prometheus.metrics", "prometheus.rules"):
            add(skipped(name, "no --prometheus URL given"))
    if options.alertmanager:
        async with httpx.AsyncClient(base_url=options.alertmanager.rstrip("/"),
                                     timeout=options.timeout, verify=tools_tls) as am:
            report.results.extend(await prometheus.check_alertmanager(am))
    else:
        for name in ("alertmanager.health", "alertmanager.receivers"):
            add(skipped(name, "no --alertmanager URL given"))

    # --- GitOps -------------------------------------------------------------------------------
    if options.argocd:
        headers = {"Authorization": f"Bearer {options.argocd_token}"} \
            if options.argocd_token else {}
        async with httpx.AsyncClient(base_url=options.argocd.rstrip("/"), headers=headers,
                                     timeout=options.timeout, verify=tools_tls) as argo:
            report.results.extend(await argocd.check_applications(argo))
    else:
        for app in argocd.APPLICATIONS:
            add(skipped(f"argocd.{app}", "no --argocd URL given"))
    return report


__all__ = ["VerifyOptions", "verify"]

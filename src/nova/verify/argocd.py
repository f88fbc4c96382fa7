"""Argo CD: each Nova Application is ``Synced`` and ``Healthy`` (REST API, bearer token)."""

from __future__ import annotations

import httpx

from nova.verify.result import Result, failed, passed

APPLICATIONS: tuple[str, ...] = ("messaging-service", "turn-server", "monitoring-stack")


async def check_applications(http: httpx.AsyncClient,
                             names: tuple[str, ...] = APPLICATIONS) -> list[Result]:
    out = []
    for app in names:
        name = f"argocd.{app}"
        try:
            r = await http.get(f"/api/v1/applications/{app}")
        except httpx.HTTPError as exc:
            out.append(failed(name, f"{type(exc).__name__}: {exc}",
                              "is --argocd the Argo CD server URL?"))
            continue
        if r.status_code in (401, 403):
            out.append(failed(name, f"HTTP {r.status_code}: token refused or no access",
                              "argocd account generate-token; the account needs "
                              "'applications, get' on project nova"))
            continue
        if r.status_code == 404:
            out.append(failed(name, "Application not found",
                              "apply deploy/components/gitops (kubectl apply -k)"))
            continue
        try:
            r.raise_for_status()
            status = r.json().get("status") or {}
        except (httpx.HTTPError, ValueError) as exc:
            out.append(failed(name, f"{exc}", "is --argocd the Argo CD server URL?"))
            continue
        sync = (status.get("sync") or {}).get("status", "Unknown")
        health_info = status.get("health") or {}
        health = health_info.get("status", "Unknown")
        revision = str((status.get("sync") or {}).get("revision", ""))[:8]
        detail = f"{sync}, {health}" + (f" at {revision}" if revision else "")
        if sync == "Synced" and health == "Healthy":
            out.append(passed(name, detail))
            continue
        message = health_info.get("message") or \
            (status.get("operationState") or {}).get("message") or ""
        out.append(failed(name, detail + (f": {message}" if message else ""),
                          f"argocd app get {app}; argocd app sync {app} (or roll back: "
                          f"argocd app rollback {app})"))
    return out

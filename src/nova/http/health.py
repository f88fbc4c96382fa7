"""Health, readiness and metrics (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from nova import metrics
from nova.http.deps import services
from nova.http.responses import Json
from nova.http.schemas import HealthOut, ReadyOut

router = APIRouter(tags=["health"])


@router.get("/health", response_model=None, responses={200: {"model": HealthOut}})
async def health() -> Json:
    """Liveness: the process serves. Touches no dependency."""
    return Json({"status": "ok"})


@router.get("/ready", response_model=None,
            responses={200: {"model": ReadyOut}, 503: {"model": ReadyOut}})
async def ready(request: Request) -> Json:
    """Readiness: the database and the broker answer."""
    checks = await services(request).readiness()
    ok = all(v == "ok" for v in checks.values())
    return Json({"status": "ready" if ok else "unavailable", "checks": checks},
                status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render_metrics()
    return Response(body, media_type=content_type)

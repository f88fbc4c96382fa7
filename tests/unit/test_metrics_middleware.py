"""nova.metrics and ObservabilityMiddleware on tiny FastAPI / Starlette apps (no sockets)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from nova import metrics
from nova.http.middleware import ObservabilityMiddleware
from nova.logs import configure_logging, request_id

CONTRACT_NAMES = (
    "http_requests_total",
    "http_request_duration_seconds",
    "websocket_connections_active",
    "websocket_errors_total",
    "database_query_duration_seconds",
    "database_errors_total",
)
DOMAIN_NAMES = (
    "nova_messages_sent_total",
    "nova_messages_delivered_total",
    "nova_events_appended_total",
    "nova_events_fanned_out_total",
    "nova_dispatch_catchups_total",
    "nova_dispatch_lag_seconds",
    "nova_broker_publish_errors_total",
    "nova_broker_reconnects_total",
    "nova_events_replayed_total",
    "nova_ws_slow_consumers_total",
    "nova_calls_total",
    "nova_turn_credentials_issued_total",
    "nova_rate_limited_total",
)


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def route_values() -> set[str]:
    body, _ = metrics.render_metrics()
    out: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "http_requests":
            out |= {s.labels["route"] for s in family.samples}
    return out


def make_fastapi_app() -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/api/v1")

    @router.get("/conversations/{conversation_id}")
    async def get_conversation(conversation_id: str) -> dict[str, str]:
        logging.getLogger("nova.test").info("inside handler")
        return {"id": conversation_id, "request_id": request_id.get() or ""}

    @router.post("/conversations/{conversation_id}/messages", status_code=201)
    async def post_message(conversation_id: str) -> dict[str, str]:
        return {"ok": conversation_id}

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    @router.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(status_code=503, detail="down")

    app.include_router(router)
    app.add_middleware(ObservabilityMiddleware)
    return app


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging("debug", "json", stream=stream)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)


def client(app: object, **kw: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://test", **kw)  # type: ignore[arg-type]


def test_metrics_render_exposes_every_contract_and_domain_name() -> None:
    body, content_type = metrics.render_metrics()
    assert content_type.startswith("text/plain")
    text = body.decode()
    for name in CONTRACT_NAMES + DOMAIN_NAMES:
        assert f"# HELP {name} " in text, name
    assert "_created" not in text  # no duplicate *_created series per counter
    # fixed label sets exist at 0 before any event, so rate() and alerts see them
    assert 'nova_calls_total{outcome="missed"}' in text
    assert 'nova_dispatch_catchups_total{reason="broker_reconnect"}' in text
    assert 'websocket_errors_total{reason="bad_frame"}' in text


def test_metrics_buckets_span_submillisecond_to_seconds() -> None:
    assert metrics.LATENCY_BUCKETS[0] <= 0.0005
    assert metrics.LATENCY_BUCKETS[-1] >= 10
    assert list(metrics.LATENCY_BUCKETS) == sorted(metrics.LATENCY_BUCKETS)


def test_metrics_unknown_label_values_collapse_to_other() -> None:
    before = sample("nova_calls_total", outcome="other")
    metrics.record_call("user-1234-weird")
    assert sample("nova_calls_total", outcome="other") == before + 1
    metrics.record_ws_error("conv_42")
    body, _ = metrics.render_metrics()
    assert b"conv_42" not in body and b"user-1234" not in body
    with pytest.raises(ValueError):
        metrics.record_catchup("because")


def test_metrics_observe_db_times_and_counts_errors() -> None:
    op = "unit_test_insert"
    assert sample("database_query_duration_seconds_count", operation=op) == 0
    with metrics.observe_db(op):
        pass
    assert sample("database_query_duration_seconds_count", operation=op) == 1
    assert sample("database_errors_total", operation=op) == 0
    # the error series exists (at 0) as soon as the operation was used
    assert b'database_errors_total{operation="unit_test_insert"} 0.0' in metrics.render_metrics()[0]

    with pytest.raises(KeyError), metrics.observe_db(op):
        raise KeyError("db down")
    assert sample("database_errors_total", operation=op) == 1
    assert sample("database_query_duration_seconds_count", operation=op) == 2

    # an expected exception is timed, not counted as an error
    with pytest.raises(LookupError), metrics.observe_db(op, expected=(LookupError,)):
        raise LookupError("duplicate")
    assert sample("database_errors_total", operation=op) == 1


async def test_metrics_observe_db_decorates_async_and_sync() -> None:
    op = "unit_test_decorated"

    @metrics.observe_db(op)
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    @metrics.observe_db(op)
    def fail() -> None:
        raise OSError("gone")

    assert await fetch(21) == 42
    async with metrics.observe_db(op):
        await asyncio.sleep(0)
    with pytest.raises(OSError):
        fail()
    assert sample("database_query_duration_seconds_count", operation=op) == 3
    assert sample("database_errors_total", operation=op) == 1
    # a cancellation is not a database error
    with pytest.raises(asyncio.CancelledError):
        async with metrics.observe_db(op):
            raise asyncio.CancelledError
    assert sample("database_errors_total", operation=op) == 1
    with pytest.raises(ValueError):
        metrics.observe_db("SELECT * FROM users WHERE id=1")


def test_metrics_database_error_series_exists_from_first_timing() -> None:
    # the store times operations with DATABASE_QUERY_DURATION directly
    metrics.DATABASE_QUERY_DURATION.labels(operation="unit_test_direct").observe(0.001)
    body, _ = metrics.render_metrics()
    assert b'database_errors_total{operation="unit_test_direct"} 0.0' in body


async def test_middleware_route_label_is_the_template_not_the_id(
    access_lines: io.StringIO,
) -> None:
    app = make_fastapi_app()
    template = "/api/v1/conversations/{conversation_id}"
    before = sample("http_requests_total", method="GET", route=template, status="200")
    async with client(app) as c:
        for conv_id in ("c_1a2b3c", "c_9z8y7x"):
            r = await c.get(f"/api/v1/conversations/{conv_id}")
            assert r.status_code == 200
        r = await c.post("/api/v1/conversations/c_1a2b3c/messages")
        assert r.status_code == 201
    assert sample("http_requests_total", method="GET", route=template, status="200") == before + 2
    assert sample("http_request_duration_seconds_count", method="GET", route=template) >= 2
    assert sample(
        "http_requests_total", method="POST",
        route="/api/v1/conversations/{conversation_id}/messages", status="201",
    ) >= 1
    routes = route_values()
    assert template in routes
    assert not [r for r in routes if "c_1a2b3c" in r or "c_9z8y7x" in r]


async def test_middleware_unmatched_and_errors_are_bounded(access_lines: io.StringIO) -> None:
    app = make_fastapi_app()
    before_404 = sample("http_requests_total", method="GET", route="unmatched", status="404")
    before_500 = sample("http_requests_total", method="GET", route="/api/v1/boom", status="500")
    async with client(app) as c:
        for i in range(3):
            assert (await c.get(f"/no/such/path/{i}")).status_code == 404
        assert (await c.get("/api/v1/boom")).status_code == 500
        assert (await c.get("/api/v1/teapot")).status_code == 503
        assert (await c.request("BREW", "/api/v1/teapot")).status_code == 405
    assert sample("http_requests_total", method="GET", route="unmatched", status="404") == (
        before_404 + 3
    )
    assert sample("http_requests_total", method="GET", route="/api/v1/boom", status="500") == (
        before_500 + 1
    )
    assert sample("http_requests_total", method="GET", route="/api/v1/teapot", status="503") >= 1
    assert sample("http_requests_total", method="OTHER", route="/api/v1/teapot", status="405") >= 1
    assert not [r for r in route_values() if "/no/such" in r]


async def test_middleware_plain_starlette_and_mounts_get_templates() -> None:
    async def item(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route("/things/{thing_id}", item)])
    app = Starlette(routes=[Route("/items/{item_id:int}", item), Mount("/sub", app=inner)])
    app.add_middleware(ObservabilityMiddleware)
    async with client(app) as c:
        assert (await c.get("/items/12345")).status_code == 200
        assert (await c.get("/sub/things/t-777")).status_code == 200
    routes = route_values()
    assert "/items/{item_id:int}" in routes
    assert "/sub/things/{thing_id}" in routes
    assert not [r for r in routes if "12345" in r or "t-777" in r]


async def test_middleware_request_id_generated_honoured_or_replaced(
    access_lines: io.StringIO,
) -> None:
    app = make_fastapi_app()
    async with client(app) as c:
        r = await c.get("/api/v1/conversations/c1")
        generated = r.headers["x-request-id"]
        assert len(generated) == 32 and r.json()["request_id"] == generated

        r = await c.get("/api/v1/conversations/c1", headers={"X-Request-ID": "abc-123.XYZ:9"})
        assert r.headers["x-request-id"] == "abc-123.XYZ:9"
        assert r.json()["request_id"] == "abc-123.XYZ:9"

        for bad in ("has space", "x" * 200, "<script>", "a\tb"):
            r = await c.get("/api/v1/conversations/c1", headers={"X-Request-ID": bad})
            assert r.headers["x-request-id"] != bad
            assert len(r.headers["x-request-id"]) == 32
        assert len(r.headers.get_list("x-request-id")) == 1
    assert request_id.get() is None  # reset after each request

    lines = [json.loads(line) for line in access_lines.getvalue().splitlines()]
    handler_lines = [ln for ln in lines if ln["msg"] == "inside handler"]
    assert handler_lines[1]["request_id"] == "abc-123.XYZ:9"
    access = [ln for ln in lines if ln["logger"] == "nova.access"]
    assert access and access[1]["request_id"] == "abc-123.XYZ:9"
    assert {"method", "route", "path", "status", "duration_ms"} <= access[0].keys()


async def test_middleware_access_log_has_no_query_string_or_secrets(
    access_lines: io.StringIO,
) -> None:
    app = make_fastapi_app()
    async with client(app) as c:
        r = await c.get(
            "/api/v1/conversations/c1?access_token=SEKRET-TOKEN-1&q=hello",
            headers={"Authorization": "Bearer SEKRET-BEARER-2"},
        )
        assert r.status_code == 200
    text = access_lines.getvalue()
    assert "SEKRET" not in text
    access_raw = [ln for ln in text.splitlines() if '"nova.access"' in ln]
    assert access_raw
    assert not [ln for ln in access_raw if "access_token" in ln or "q=hello" in ln]
    access = [json.loads(ln) for ln in access_raw]
    assert access[-1]["path"] == "/api/v1/conversations/c1"
    assert access[-1]["route"] == "/api/v1/conversations/{conversation_id}"
    assert access[-1]["status"] == 200

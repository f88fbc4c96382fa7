"""Every Prometheus metric of the service, in one module (a leaf: every layer may import it).

The names in PRODUCT.md (Observability contract) stay exactly as written, because the shipped
alert rules (deploy/config/prometheus/rules/) and the Grafana dashboard query them. Every other
metric is ``nova_<area>_<name>_<unit>``. Labels are low-cardinality: route templates, error
reasons, outcomes from a fixed set; never user ids, conversation ids or raw paths. Labels from a
fixed set are pre-created at import, so every series exists (at 0) from the first scrape and
``rate()`` works without waiting for a first event.

Objects live in prometheus_client's default registry; ``render_metrics()`` serves ``/metrics``.
"""

from __future__ import annotations

import functools
import inspect
import re
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

__all__ = [
    "BROKER_PUBLISH_ERRORS",
    "BROKER_RECONNECTS",
    "CALLS",
    "CALL_OUTCOMES",
    "CATCHUP_REASONS",
    "DATABASE_ERRORS",
    "DATABASE_QUERY_DURATION",
    "DISPATCH_CATCHUPS",
    "DISPATCH_LAG",
    "EVENTS_APPENDED",
    "EVENTS_FANNED_OUT",
    "EVENTS_REPLAYED",
    "EVENT_TYPES",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_DURATION",
    "LATENCY_BUCKETS",
    "MESSAGES_DELIVERED",
    "MESSAGES_SENT",
    "MESSAGE_TRANSPORTS",
    "RATE_LIMITED",
    "RATE_LIMIT_SCOPES",
    "TURN_CREDENTIALS_ISSUED",
    "WS_CONNECTIONS",
    "WS_ERRORS",
    "WS_ERROR_REASONS",
    "WS_SLOW_CONSUMERS",
    "observe_db",
    "record_call",
    "record_catchup",
    "record_event_appended",
    "record_rate_limited",
    "record_ws_error",
    "render_metrics",
]

# No ``*_created`` series next to every counter and histogram: half the series, no value.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Sub-millisecond (SQLite lookups, in-process fan-out) to multi-second (slow PostgreSQL,
# catch-up after a broker reconnect). 14 buckets + ``+Inf``.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

# --- the fixed label sets (anything else is recorded as "other") ----------------------------
WS_ERROR_REASONS = (
    "bad_frame",  # not JSON, missing fields, wrong types
    "unknown_frame",  # a frame type the server does not know
    "frame_too_large",
    "flood",  # past the frame rate limit
    "origin",  # Origin not allowed
    "unauthorized",
    "too_many_sockets",
    "slow_consumer",
    "heartbeat_timeout",
    "internal",
    "other",
)
MESSAGE_TRANSPORTS = ("http", "ws")
EVENT_TYPES = (
    "message.created", "message.updated", "message.deleted",
    "conversation.created", "conversation.updated",
    "member.added", "member.removed",
    "receipt.read",
    "call.ringing", "call.accepted", "call.declined", "call.ended", "call.signal",
    "other",
)
CATCHUP_REASONS = ("doorbell", "tick", "broker_reconnect")
CALL_OUTCOMES = ("answered", "declined", "missed", "cancelled", "hangup", "failed", "other")
RATE_LIMIT_SCOPES = ("ip", "user", "ws_frames", "connections", "other")

# --- the contract names (PRODUCT.md) --------------------------------------------------------
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from request start to the end of the response body, by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
WS_CONNECTIONS = Gauge(
    "websocket_connections_active",
    "WebSocket connections currently open on this replica.",
)
WS_ERRORS = Counter(
    "websocket_errors_total",
    "WebSocket errors (error frames sent and abnormal closes), by reason.",
    ["reason"],
)
class _DatabaseHistogram(Histogram):
    """Creating the duration series of an operation also creates its error series (at 0),
    so ``rate(database_errors_total[5m])`` exists for every operation that ever ran,
    whichever code path (``observe_db`` or the store's own timing) records it."""

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        child = super().labels(*labelvalues, **labelkwargs)
        DATABASE_ERRORS.labels(*labelvalues, **labelkwargs)
        return child


DATABASE_QUERY_DURATION = _DatabaseHistogram(
    "database_query_duration_seconds",
    "Duration of database operations (one storage call, possibly several statements).",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
DATABASE_ERRORS = Counter(
    "database_errors_total",
    "Database operations that raised an unexpected error, by operation.",
    ["operation"],
)

# --- domain metrics -------------------------------------------------------------------------
MESSAGES_SENT = Counter(
    "nova_messages_sent_total",
    "Messages durably stored (first send only; an idempotent retry is not counted), "
    "by the transport they came in on (http, ws).",
    ["transport"],
)
MESSAGES_DELIVERED = Counter(
    "nova_messages_delivered_total",
    "message.created event frames written to WebSockets.",
)
EVENTS_APPENDED = Counter(
    "nova_events_appended_total",
    "Durable events appended to the event log, by event type.",
    ["type"],
)
EVENTS_FANNED_OUT = Counter(
    "nova_events_fanned_out_total",
    "Event frames written to WebSockets (all types).",
)
EVENTS_REPLAYED = Counter(
    "nova_events_replayed_total",
    "Events sent from the log to a resuming socket (``?since=``).",
)
DISPATCH_CATCHUPS = Counter(
    "nova_dispatch_catchups_total",
    "Dispatcher catch-up reads of the event log, by what triggered them.",
    ["reason"],
)
DISPATCH_LAG = Histogram(
    "nova_dispatch_lag_seconds",
    "Time from an event's commit to its dispatch to local sockets.",
    buckets=LATENCY_BUCKETS,
)
BROKER_PUBLISH_ERRORS = Counter(
    "nova_broker_publish_errors_total",
    "Broker publishes that failed (events still reach sockets through the catch-up tick).",
)
BROKER_RECONNECTS = Counter(
    "nova_broker_reconnects_total",
    "Broker subscriber reconnects (each followed by a catch-up from the event log).",
)
WS_SLOW_CONSUMERS = Counter(
    "nova_ws_slow_consumers_total",
    "WebSockets closed because their send queue overflowed.",
)
CALLS = Counter(
    "nova_calls_total",
    "Calls by outcome: 'answered' when accepted, else the end_reason of an unanswered call.",
    ["outcome"],
)
TURN_CREDENTIALS_ISSUED = Counter(
    "nova_turn_credentials_issued_total",
    "TURN REST credentials minted for clients.",
)
RATE_LIMITED = Counter(
    "nova_rate_limited_total",
    "Requests or frames refused by a rate or connection limit, by scope.",
    ["scope"],
)

for _reason in WS_ERROR_REASONS:
    WS_ERRORS.labels(_reason)
for _transport in MESSAGE_TRANSPORTS:
    MESSAGES_SENT.labels(_transport)
for _type in EVENT_TYPES:
    EVENTS_APPENDED.labels(_type)
for _reason in CATCHUP_REASONS:
    DISPATCH_CATCHUPS.labels(_reason)
for _outcome in CALL_OUTCOMES:
    CALLS.labels(_outcome)
for _scope in RATE_LIMIT_SCOPES:
    RATE_LIMITED.labels(_scope)


def _bounded(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else "other"


def record_ws_error(reason: str) -> None:
    """Count one WebSocket error; an unknown reason is counted as ``other``."""
    WS_ERRORS.labels(_bounded(reason, WS_ERROR_REASONS)).inc()


def record_event_appended(event_type: str) -> None:
    EVENTS_APPENDED.labels(_bounded(event_type, EVENT_TYPES)).inc()


def record_catchup(reason: str) -> None:
    """Count one catch-up read; ``reason`` is ``doorbell``, ``tick`` or ``broker_reconnect``."""
    if reason not in CATCHUP_REASONS:
        raise ValueError(f"unknown catch-up reason {reason!r}")
    DISPATCH_CATCHUPS.labels(reason).inc()


def record_call(outcome: str) -> None:
    """Count one call: ``answered`` when accepted, else its ``end_reason``."""
    CALLS.labels(_bounded(outcome, CALL_OUTCOMES)).inc()


def record_rate_limited(scope: str) -> None:
    RATE_LIMITED.labels(_bounded(scope, RATE_LIMIT_SCOPES)).inc()


def render_metrics() -> tuple[bytes, str]:
    """The text exposition of the default registry and its content type, for ``/metrics``."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# --- database timing ------------------------------------------------------------------------
_OPERATION_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
F = TypeVar("F", bound=Callable[..., Any])


class observe_db:  # lowercase: used like a function, `with observe_db("insert_message"):`
    """Time a database operation into ``database_query_duration_seconds{operation}``.

    An ``Exception`` (not a cancellation) also counts ``database_errors_total{operation}``
    and is re-raised; exception types listed in ``expected`` (e.g. a unique-key ``Conflict``
    that the caller handles) are timed but not counted as errors. Works as ``with``,
    ``async with`` and as a decorator of sync or async functions. ``operation`` is a fixed
    snake_case name chosen by the code (never data), which keeps the label bounded.
    The error series of an operation is created at 0 on first use, so alerts see it.
    """

    def __init__(
        self, operation: str, *, expected: tuple[type[BaseException], ...] = ()
    ) -> None:
        if not _OPERATION_RE.match(operation):
            raise ValueError(f"operation must be snake_case, got {operation!r}")
        self.operation = operation
        self.expected = expected
        self._histogram = DATABASE_QUERY_DURATION.labels(operation)
        self._errors = DATABASE_ERRORS.labels(operation)
        self._starts: list[float] = []  # a stack: the same object may be re-entered

    # -- context manager --
    def __enter__(self) -> observe_db:
        self._starts.append(time.perf_counter())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._starts.pop()
        self._histogram.observe(elapsed)
        if (
            exc is not None
            and isinstance(exc, Exception)
            and not isinstance(exc, self.expected)
        ):
            self._errors.inc()

    async def __aenter__(self) -> observe_db:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- decorator --
    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with observe_db(self.operation, expected=self.expected):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with observe_db(self.operation, expected=self.expected):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

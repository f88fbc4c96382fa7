"""Every metric of the service (prometheus_client). Placeholder set; see monitoring branch."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

DATABASE_QUERY_DURATION = Histogram("database_query_duration_seconds",
                                    "Database operation latency", ["operation"],
                                    buckets=DB_BUCKETS)
DATABASE_ERRORS = Counter("database_errors_total", "Database operations that failed",
                          ["operation"])
EVENTS_APPENDED = Counter("nova_events_appended_total", "Events appended to the log", ["type"])


@contextlib.contextmanager
def observe_db(operation: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    except Exception:
        DATABASE_ERRORS.labels(operation=operation).inc()
        raise
    finally:
        DATABASE_QUERY_DURATION.labels(operation=operation).observe(time.perf_counter() - start)

LATENCY_BUCKETS = DB_BUCKETS
EVENTS_FANNED_OUT = Counter("nova_events_fanned_out_total", "Event frames queued to sockets")
MESSAGES_DELIVERED = Counter("nova_messages_delivered_total",
                             "message.created frames queued to sockets")
MESSAGES_SENT = Counter("nova_messages_sent_total", "Messages stored", ["transport"])
EVENTS_REPLAYED = Counter("nova_events_replayed_total", "Events replayed on resume")
DISPATCH_CATCHUPS = Counter("nova_dispatch_catchups_total", "Log catch-ups", ["reason"])
DISPATCH_LAG = Histogram("nova_dispatch_lag_seconds", "Commit to dispatch",
                         buckets=LATENCY_BUCKETS)
WS_CONNECTIONS = Gauge("websocket_connections_active", "Open WebSocket connections")
WS_ERRORS = Counter("websocket_errors_total", "WebSocket errors", ["reason"])
WS_SLOW_CONSUMERS = Counter("nova_ws_slow_consumers_total", "Sockets cut off as too slow")
BROKER_RECONNECTS = Counter("nova_broker_reconnects_total", "Broker subscriber reconnects")
BROKER_PUBLISH_ERRORS = Counter("nova_broker_publish_errors_total", "Failed broker publishes")


def render_metrics() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST

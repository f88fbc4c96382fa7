"""Run the ASGI app under uvicorn (uvloop + httptools + websockets).

On SIGTERM the server stops accepting, closes every WebSocket with 1001 after its
in-flight request (so clients move to another replica and resume by cursor), waits for
in-flight HTTP requests, then exits.
"""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from nova.settings import Settings

log = logging.getLogger("nova")


def configure_logging(settings: Settings) -> None:
    try:
        from nova.logs import configure_logging as configure
    except ImportError:  # pragma: no cover - until the structured logger is wired
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        return
    configure(settings.log_level, settings.log_format)


class _Server(uvicorn.Server):
    async def shutdown(self, sockets: Any = None) -> None:
        from nova.gateway.endpoint import close_all

        for server in self.servers:
            server.close()
        app = self.config.loaded_app
        services = getattr(getattr(app, "state", None), "services", None)
        if services is None:  # wrapped by middleware: find the FastAPI app
            inner = app
            while services is None and inner is not None:
                inner = getattr(inner, "app", None)
                services = getattr(getattr(inner, "state", None), "services", None)
        if services is not None:
            await close_all(services)
        await super().shutdown(sockets)


def build_config(settings: Settings, tls_cert: str | None = None,
                 tls_key: str | None = None) -> uvicorn.Config:
    from nova.app import create_app

    app = create_app(settings)
    interval = settings.heartbeat_interval_ms / 1000
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.ws_max_frame_bytes,
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_interval=interval,
        ws_ping_timeout=2 * interval,
        proxy_headers=False,  # client IPs come from the trusted-proxy setting instead
        server_header=False,
        date_header=True,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 1,
        timeout_keep_alive=30,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        backlog=4096,
    )


def run_server(settings: Settings, tls_cert: str | None = None,
               tls_key: str | None = None) -> None:
    configure_logging(settings)
    config = build_config(settings, tls_cert, tls_key)
    scheme = "https" if tls_cert else "http"
    log.info("listening on %s://%s:%d", scheme, settings.host, settings.port)
    _Server(config).run()

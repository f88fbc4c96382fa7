"""Where a figure was measured: cores, CPU model, Python and package versions."""

from __future__ import annotations

import os
import platform
from functools import cache
from importlib import metadata
from typing import Any

PACKAGES = ("nova", "websockets", "uvicorn", "uvloop", "httptools", "starlette", "fastapi",
            "sqlalchemy", "aiosqlite", "asyncpg", "redis", "python-socketio", "aiohttp",
            "httpx")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@cache
def machine_info() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "cpu_model": cpu_model(), "kernel": platform.release(),
            "versions": versions()}

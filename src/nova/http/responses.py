"""Fast JSON responses (orjson) for the domain's wire dicts."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from nova.http.schemas import Problem


class Json(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem documents an endpoint may return."""
    return {s: {"model": Problem, "content": {"application/problem+json": {}}}
            for s in statuses}

"""Fixtures for the REST API tests. Every test using ``api`` runs against the live app on
SQLite AND on PostgreSQL (the ``db_kind`` parameter of ``settings``)."""

from __future__ import annotations

import httpx
import pytest
from _api import Api


@pytest.fixture
def api(http: httpx.AsyncClient) -> Api:
    return Api(http)

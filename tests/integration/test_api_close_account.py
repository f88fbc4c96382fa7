"""DELETE /api/v1/users/me: the caller closes their own account (used by `nova verify` to
clean up its probe account), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from _api import PASSWORD, Api, problem

pytestmark = pytest.mark.integration


async def test_close_account_disables_login_and_revokes_every_token(api: Api) -> None:
    probe = await api.register()
    other = await api.register()
    second = (await api.http.post("/api/v1/auth/login", json={
        "username": probe.username, "password": PASSWORD})).json()
    assert (await api.call("DELETE", "/api/v1/users/me", probe)).status_code == 204

    problem(await api.call("GET", "/api/v1/users/me", probe), 401, "unauthorized")
    problem(await api.http.get("/api/v1/users/me", headers={
        "Authorization": f"Bearer {second['access_token']}"}), 401, "unauthorized")
    for refresh in (probe.refresh, second["refresh_token"]):
        resp = await api.http.post("/api/v1/auth/refresh", json={"refresh_token": refresh})
        assert resp.status_code == 401, resp.text
    problem(await api.http.post("/api/v1/auth/login", json={
        "username": probe.username, "password": PASSWORD}), 401, "account_disabled")
    # the username stays taken; other accounts are untouched
    problem(await api.http.post("/api/v1/auth/register", json={
        "username": probe.username, "password": PASSWORD}), 409, "username_taken")
    assert (await api.call("GET", "/api/v1/users/me", other)).status_code == 200


async def test_close_account_needs_a_token(api: Api) -> None:
    problem(await api.http.delete("/api/v1/users/me"), 401, "unauthorized")


async def test_close_account_is_in_the_openapi_schema(api: Api) -> None:
    schema = (await api.http.get("/openapi.json")).json()
    op = schema["paths"]["/api/v1/users/me"]["delete"]
    assert "204" in op["responses"] and "401" in op["responses"]

"""Accounts and tokens over HTTP (PROTOCOL.md "Accounts and tokens"), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from _api import PASSWORD, Api, problem
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

pytestmark = pytest.mark.integration

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
EXT_SECRET = "external-auth-service-secret-" + "y" * 20
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def settings(db_kind: str, make_settings: Any, tmp_path: Path,
             request: pytest.FixtureRequest) -> Any:
    """The default settings, or (parametrized indirectly) external tokens switched on."""
    mode = getattr(request, "param", None)
    if mode == "hs256":
        return make_settings(db_kind, external_jwt_secret=EXT_SECRET)
    if mode == "rsa":
        pem = _RSA.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        path = tmp_path / "ext.pub.pem"
        path.write_bytes(pem)
        return make_settings(db_kind, external_jwt_public_key_file=path)
    return make_settings(db_kind)


def _ours(live: Any, sub: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": sub, "sid": "s1", "iat": now, "exp": now + 60, "iss": "nova", **claims}
    return jwt.encode(payload, live.settings.jwt_secret, algorithm="HS256")


async def test_register_returns_user_and_tokens_as_protocol_says(api: Api, live: Any) -> None:
    resp = await api.http.post("/api/v1/auth/register", json={
        "username": "Alice.W_1", "password": PASSWORD, "display_name": "  Alice W  "})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == {"user", "access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == live.settings.access_token_ttl_seconds
    user = body["user"]
    assert set(user) == {"id", "username", "display_name", "created_at"}
    assert user["username"] == "alice.w_1" and user["display_name"] == "Alice W"
    assert RFC3339_MS.match(user["created_at"]), user["created_at"]
    claims = jwt.decode(body["access_token"], live.settings.jwt_secret, algorithms=["HS256"],
                        issuer="nova")
    assert claims["sub"] == user["id"]
    assert claims["exp"] - claims["iat"] == live.settings.access_token_ttl_seconds
    # Passwords are stored as argon2id hashes, never in clear.
    _, pw_hash = await live.services.store.get_login("alice.w_1")
    assert pw_hash.startswith("$argon2id$") and PASSWORD not in pw_hash
    # Usernames are unique ignoring case.
    problem(await api.http.post("/api/v1/auth/register", json={
        "username": "ALICE.w_1", "password": PASSWORD}), 409, "username_taken")


async def test_login_right_pair_wrong_pair_unknown_user(api: Api) -> None:
    acct = await api.register()
    resp = await api.http.post("/api/v1/auth/login",
                               json={"username": acct.username.upper(), "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["user"]["id"] == acct.id and body["token_type"] == "Bearer"
    assert body["refresh_token"] != acct.refresh
    me = await api.ok("GET", "/api/v1/users/me",
                      headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me["id"] == acct.id
    problem(await api.http.post("/api/v1/auth/login", json={
        "username": acct.username, "password": PASSWORD + "x"}), 401, "invalid_credentials")
    problem(await api.http.post("/api/v1/auth/login", json={
        "username": "nobody_here", "password": PASSWORD}), 401, "invalid_credentials")


async def test_refresh_rotates_and_reuse_revokes_the_family(api: Api) -> None:
    acct = await api.register()
    other_session = (await api.ok("POST", "/api/v1/auth/login", json={
        "username": acct.username, "password": PASSWORD}))["refresh_token"]
    first = await api.ok("POST", "/api/v1/auth/refresh", json={"refresh_token": acct.refresh})
    assert first["refresh_token"] != acct.refresh and first["user"]["id"] == acct.id
    assert first["access_token"] and first["token_type"] == "Bearer"
    second = await api.ok("POST", "/api/v1/auth/refresh",
                          json={"refresh_token": first["refresh_token"]})
    # The spent token again: 401, and the whole family (including `second`) is revoked.
    problem(await api.http.post("/api/v1/auth/refresh", json={"refresh_token": acct.refresh}),
            401, "token_reused")
    problem(await api.http.post("/api/v1/auth/refresh",
                                json={"refresh_token": second["refresh_token"]}),
            401, "unauthorized")
    # Another session (another family) is untouched.
    await api.ok("POST", "/api/v1/auth/refresh", json={"refresh_token": other_session})
    problem(await api.http.post("/api/v1/auth/refresh", json={"refresh_token": "made-up"}),
            401, "unauthorized")


async def test_logout_revokes_only_that_sessions_refresh_token(api: Api) -> None:
    acct = await api.register()
    login = await api.ok("POST", "/api/v1/auth/login", json={
        "username": acct.username, "password": PASSWORD})
    resp = await api.call("POST", "/api/v1/auth/logout", acct)
    assert resp.status_code == 204 and resp.content == b""
    problem(await api.http.post("/api/v1/auth/refresh", json={"refresh_token": acct.refresh}),
            401, "unauthorized")
    await api.ok("POST", "/api/v1/auth/refresh", json={"refresh_token": login["refresh_token"]})
    problem(await api.http.post("/api/v1/auth/logout"), 401, "unauthorized")


async def test_users_me_lookup_and_prefix_search(api: Api) -> None:
    prefix = api.fresh_name("srch")
    a = await api.register(prefix + "_a", display_name="A")
    b = await api.register(prefix + "_b")
    await api.register(api.fresh_name("other"))
    me = await api.ok("GET", "/api/v1/users/me", a)
    assert me == {"id": a.id, "username": a.username, "display_name": "A",
                  "created_at": me["created_at"]}
    assert (await api.ok("GET", f"/api/v1/users/{b.id}", a))["username"] == b.username
    found = await api.ok("GET", "/api/v1/users", a, params={"q": prefix.upper()})
    assert [u["id"] for u in found["items"]] == [a.id, b.id]
    one = await api.ok("GET", "/api/v1/users", a, params={"q": prefix, "limit": 1})
    assert [u["id"] for u in one["items"]] == [a.id]
    problem(await api.call("GET", "/api/v1/users/does-not-exist", a), 404, "not_found")


async def test_bad_access_tokens_are_401_unauthorized(api: Api, live: Any) -> None:
    acct = await api.register()
    past = int(time.time()) - 3600
    tokens = {
        "expired": _ours(live, acct.id, iat=past - 60, exp=past),
        "garbage": "not.a.jwt",
        "wrong key": jwt.encode({"sub": acct.id, "sid": "s", "exp": past + 7200, "iss": "nova"},
                                "another-secret-that-is-long-enough-000000", algorithm="HS256"),
        "wrong issuer": _ours(live, acct.id, iss="someone-else"),
        "unknown user": _ours(live, "no-such-user"),
        "alg none": jwt.encode({"sub": acct.id, "sid": "s", "exp": past + 7200, "iss": "nova"},
                               None, algorithm="none"),
    }
    for name, token in tokens.items():
        resp = await api.http.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        body = problem(resp, 401, "unauthorized")
        assert resp.headers.get("www-authenticate") == "Bearer", name
        if name == "expired":
            assert "expired" in body["detail"]
    for header in ("", "Bearer", "Basic dXNlcjpwYXNz", f"Token {acct.access}"):
        problem(await api.http.get("/api/v1/users/me", headers={"Authorization": header}),
                401, "unauthorized")
    # A valid token made by hand is accepted (so the cases above fail for their reason).
    ok = await api.http.get("/api/v1/users/me",
                            headers={"Authorization": f"Bearer {_ours(live, acct.id)}"})
    assert ok.status_code == 200


async def test_disabled_account_cannot_log_in_or_refresh(api: Api, live: Any) -> None:
    acct = await api.register()
    await live.services.store.set_user_disabled(acct.username, True)
    problem(await api.http.post("/api/v1/auth/login", json={
        "username": acct.username, "password": PASSWORD}), 401, "account_disabled")
    resp = await api.http.post("/api/v1/auth/refresh", json={"refresh_token": acct.refresh})
    assert resp.status_code == 401


@pytest.mark.parametrize("settings", ["hs256"], indirect=True)
async def test_external_hs256_token_provisions_unknown_user(api: Api) -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "ext-user-42", "exp": now + 60}, EXT_SECRET, algorithm="HS256")
    h = {"Authorization": f"Bearer {token}"}
    me = await api.ok("GET", "/api/v1/users/me", headers=h)
    assert me["id"] == "ext-user-42"
    again = await api.ok("GET", "/api/v1/users/me", headers=h)
    assert again == me
    # The provisioned user is a real user: others can start a conversation with them.
    local = await api.register()
    conv = await api.direct(local, type("A", (), {"id": "ext-user-42"})())  # type: ignore[arg-type]
    listed = await api.ok("GET", "/api/v1/conversations", headers=h)
    assert [c["id"] for c in listed["items"]] == [conv["id"]]
    # Own tokens still work next to external ones; a wrong external secret does not.
    await api.ok("GET", "/api/v1/users/me", local)
    bad = jwt.encode({"sub": "ext-user-43", "exp": now + 60}, EXT_SECRET + "x", algorithm="HS256")
    problem(await api.http.get("/api/v1/users/me", headers={"Authorization": f"Bearer {bad}"}),
            401, "unauthorized")
    expired = jwt.encode({"sub": "ext-user-42", "exp": now - 600}, EXT_SECRET, algorithm="HS256")
    problem(await api.http.get("/api/v1/users/me",
                               headers={"Authorization": f"Bearer {expired}"}),
            401, "unauthorized")


@pytest.mark.parametrize("settings", ["rsa"], indirect=True)
async def test_external_public_key_token_with_sub_as_user_id(api: Api) -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "rsa-user-1", "exp": now + 60}, _RSA, algorithm="RS256")
    me = await api.ok("GET", "/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me["id"] == "rsa-user-1"
    forged = jwt.encode({"sub": "rsa-user-2", "exp": now + 60}, _RSA_OTHER, algorithm="RS256")
    problem(await api.http.get("/api/v1/users/me", headers={"Authorization": f"Bearer {forged}"}),
            401, "unauthorized")
    # The external key can act as an existing local user, named by id.
    local = await api.register()
    as_local = jwt.encode({"sub": local.id, "exp": now + 60}, _RSA, algorithm="RS256")
    me2 = await api.ok("GET", "/api/v1/users/me",
                       headers={"Authorization": f"Bearer {as_local}"})
    assert me2["username"] == local.username

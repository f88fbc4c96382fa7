"""AccountService on a real SqlStore (SQLite in tmp): argon2, JWT access tokens, refresh
rotation with reuse detection, logout, external tokens with first-sight provisioning."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from nova.domain.accounts import AccountService, validate_password, validate_username
from nova.errors import Conflict, ErrorCode, InvalidInput, Unauthorized

KEY = "unit-signing-key-" + "k" * 32
EXT = "external-secret-" + "e" * 32


def service(store: Any, **kw: Any) -> AccountService:
    return AccountService(store, KEY, access_ttl=kw.pop("access_ttl", 60),
                          refresh_ttl=kw.pop("refresh_ttl", 300), **kw)


@pytest.mark.parametrize(("name", "ok"), [
    ("abc", True), ("A.b-c_9", True), ("x" * 32, True), ("ab", False), ("x" * 33, False),
    ("a b", False), ("ünï", False), ("", False), (None, False), (123, False)])
def test_accounts_username_rule(name: Any, ok: bool) -> None:
    if ok:
        assert validate_username(name) == name.lower()
    else:
        with pytest.raises(InvalidInput) as err:
            validate_username(name)
        assert err.value.code == ErrorCode.INVALID_USERNAME


def test_accounts_password_rule() -> None:
    assert validate_password("12345678") == "12345678"
    for bad in ("1234567", "", None, "x" * 1025):
        with pytest.raises(InvalidInput) as err:
            validate_password(bad)
        assert err.value.code == ErrorCode.WEAK_PASSWORD


async def test_accounts_register_login_and_access_token(sql_store: Any) -> None:
    acc = service(sql_store)
    tokens = await acc.register("Alice", "password-1", "Alice A")
    assert tokens.user.username == "alice" and tokens.expires_in == 60
    _, pw_hash = await sql_store.get_login("alice")
    assert pw_hash.startswith("$argon2id$")
    claims = jwt.decode(tokens.access_token, KEY, algorithms=["HS256"], issuer="nova")
    assert claims["sub"] == tokens.user.id and claims["exp"] - claims["iat"] == 60
    who = await acc.authenticate(tokens.access_token)
    assert who.user_id == tokens.user.id and who.session_id == claims["sid"]
    with pytest.raises(Conflict) as dup:
        await acc.register("ALICE", "password-2")
    assert dup.value.code == ErrorCode.USERNAME_TAKEN
    assert (await acc.login("aLiCe", "password-1")).user.id == tokens.user.id
    for user, pw in (("alice", "password-2"), ("nobody", "password-1")):
        with pytest.raises(Unauthorized) as bad:
            await acc.login(user, pw)
        assert bad.value.code == ErrorCode.INVALID_CREDENTIALS


async def test_accounts_refresh_rotation_reuse_and_logout(sql_store: Any) -> None:
    acc = service(sql_store)
    t0 = await acc.register("bob", "password-1")
    t1 = await acc.refresh(t0.refresh_token)
    t2 = await acc.refresh(t1.refresh_token)
    assert len({t0.refresh_token, t1.refresh_token, t2.refresh_token}) == 3
    with pytest.raises(Unauthorized) as reused:
        await acc.refresh(t0.refresh_token)
    assert reused.value.code == ErrorCode.TOKEN_REUSED
    with pytest.raises(Unauthorized):
        await acc.refresh(t2.refresh_token)  # the family is revoked
    s2 = await acc.login("bob", "password-1")
    await acc.logout(await acc.authenticate(s2.access_token))
    with pytest.raises(Unauthorized):
        await acc.refresh(s2.refresh_token)
    with pytest.raises(InvalidInput):
        await acc.refresh(None)


async def test_accounts_expired_refresh_and_disabled_user(sql_store: Any) -> None:
    short = service(sql_store, refresh_ttl=-1)
    t = await short.register("carol", "password-1")
    with pytest.raises(Unauthorized) as exp:
        await short.refresh(t.refresh_token)
    assert exp.value.code == ErrorCode.UNAUTHORIZED
    acc = service(sql_store)
    t = await acc.login("carol", "password-1")
    await sql_store.set_user_disabled("carol", True)
    with pytest.raises(Unauthorized) as dis:
        await acc.login("carol", "password-1")
    assert dis.value.code == ErrorCode.ACCOUNT_DISABLED
    with pytest.raises(Unauthorized):
        await acc.refresh(t.refresh_token)
    with pytest.raises(Unauthorized):  # a fresh service has no cache: the token stops working
        await service(sql_store).authenticate(t.access_token)


async def test_accounts_bad_access_tokens(sql_store: Any) -> None:
    acc = service(sql_store)
    uid = (await acc.register("dave", "password-1")).user.id
    now = int(time.time())
    base = {"sub": uid, "sid": "s", "iss": "nova", "exp": now + 60}
    cases = {
        "missing": None, "garbage": "x.y.z",
        "expired": jwt.encode({**base, "exp": now - 120}, KEY, algorithm="HS256"),
        "other key": jwt.encode(base, "k" * 40, algorithm="HS256"),
        "other issuer": jwt.encode({**base, "iss": "evil"}, KEY, algorithm="HS256"),
        "no sid": jwt.encode({k: v for k, v in base.items() if k != "sid"}, KEY,
                             algorithm="HS256"),
        "unknown user": jwt.encode({**base, "sub": "ghost"}, KEY, algorithm="HS256"),
    }
    for name, token in cases.items():
        with pytest.raises(Unauthorized) as err:
            await acc.authenticate(token)
        assert err.value.code == ErrorCode.UNAUTHORIZED, name
    assert (await acc.authenticate(jwt.encode(base, KEY, algorithm="HS256"))).user_id == uid


async def test_accounts_external_tokens_provision_on_first_sight(sql_store: Any) -> None:
    acc = service(sql_store, external_key=EXT, external_algorithms=["HS256"],
                  external_issuer="https://idp.example", external_audience="nova")
    now = int(time.time())
    claims = {"sub": "idp|42", "exp": now + 60, "iss": "https://idp.example", "aud": "nova"}
    who = await acc.authenticate(jwt.encode(claims, EXT, algorithm="HS256"))
    assert who.user_id == "idp|42"
    user = await sql_store.get_user("idp|42")
    assert user is not None and user.username == "idp42"
    # Second sight: the same user, no second account.
    await acc.authenticate(jwt.encode({**claims, "jti": "2"}, EXT, algorithm="HS256"))
    assert len(await sql_store.list_users(10)) == 1
    for bad in ({**claims, "aud": "other"}, {**claims, "iss": "https://evil"},
                {**claims, "exp": now - 120}, {**claims, "sub": "x" * 41}):
        with pytest.raises(Unauthorized):
            await acc.authenticate(jwt.encode(bad, EXT, algorithm="HS256"))
    # Without an external key such tokens are refused outright.
    with pytest.raises(Unauthorized):
        await service(sql_store).authenticate(jwt.encode(claims, EXT, algorithm="HS256"))

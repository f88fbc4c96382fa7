"""Accounts and tokens: argon2id passwords, short-lived JWT access tokens, opaque refresh
tokens rotated on use; a spent refresh token used again revokes its whole family."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from nova.domain.models import Tokens, User
from nova.domain.ports import Store
from nova.errors import ErrorCode, InvalidInput, NotFound, Unauthorized

USERNAME_RE = re.compile(r"^[a-z0-9_.-]{3,32}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: the user id and the session (refresh-token family)."""

    user_id: str
    session_id: str


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_username(username: Any) -> str:
    if not isinstance(username, str) or not USERNAME_RE.match(username.lower()):
        raise InvalidInput("username must be 3-32 characters of a-z, 0-9, _ . -",
                           ErrorCode.INVALID_USERNAME, field="username")
    return username.lower()


def validate_password(password: Any) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InvalidInput(f"password must be at least {MIN_PASSWORD} characters",
                           ErrorCode.WEAK_PASSWORD, field="password")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"password must be at most {MAX_PASSWORD} characters",
                           ErrorCode.WEAK_PASSWORD, field="password")
    return password


class AccountService:
    def __init__(self, store: Store, signing_key: str, *, access_ttl: int, refresh_ttl: int,
                 external_key: str | None = None, external_algorithms: list[str] | None = None,
                 external_issuer: str = "", external_audience: str = "") -> None:
        self.store = store
        self._key = signing_key
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self._hasher = PasswordHasher()
        self._ext_key = external_key
        self._ext_algs = external_algorithms or ["HS256"]
        self._ext_iss = external_issuer
        self._ext_aud = external_audience
        self._user_cache: dict[str, tuple[float, User | None]] = {}
        # A dummy hash so that an unknown username costs as much as a wrong password.
        self._dummy_hash = self._hasher.hash(secrets.token_hex(16))

    # --- sign-up and sign-in ----------------------------------------------------------
    async def register(self, username: Any, password: Any, display_name: Any = None) -> Tokens:
        name = validate_username(username)
        pw = validate_password(password)
        if display_name is not None and not isinstance(display_name, str):
            raise InvalidInput("display_name must be a string", field="display_name")
        shown = (display_name or "").strip()[:128] or name
        pw_hash = await asyncio.to_thread(self._hasher.hash, pw)
        user = await self.store.create_user(name, shown, pw_hash)
        return await self._issue(user)

    async def create_user(self, username: str, password: str,
                          display_name: str | None = None) -> User:
        name = validate_username(username)
        pw_hash = await asyncio.to_thread(self._hasher.hash, validate_password(password))
        return await self.store.create_user(name, (display_name or name)[:128], pw_hash)

    async def login(self, username: Any, password: Any) -> Tokens:
        if not isinstance(username, str) or not isinstance(password, str):
            raise InvalidInput("username and password must be strings")
        found = await self.store.get_login(username)
        stored = found[1] if found else None
        ok = await asyncio.to_thread(self._verify, stored or self._dummy_hash, password)
        if not found or not stored or not ok:
            raise Unauthorized("wrong username or password", ErrorCode.INVALID_CREDENTIALS)
        user = found[0]
        if user.disabled:
            raise Unauthorized("this account is disabled", ErrorCode.ACCOUNT_DISABLED)
        return await self._issue(user)

    def _verify(self, pw_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(pw_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def refresh(self, refresh_token: Any) -> Tokens:
        if not isinstance(refresh_token, str) or not refresh_token:
            raise InvalidInput("refresh_token must be a string", field="refresh_token")
        new_token = secrets.token_urlsafe(32)
        status, user_id, family = await self.store.rotate_refresh_token(
            _hash_token(refresh_token), _hash_token(new_token), self._refresh_expiry())
        if status == "reused":
            raise Unauthorized("refresh token already used; the session was revoked",
                               ErrorCode.TOKEN_REUSED)
        if status != "ok" or user_id is None or family is None:
            raise Unauthorized("refresh token is invalid or expired")
        user = await self.store.get_user(user_id)
        if user is None or user.disabled:
            await self.store.revoke_family(family)
            raise Unauthorized("this account is disabled", ErrorCode.ACCOUNT_DISABLED)
        return Tokens(user, self._access_token(user.id, family), new_token, self.access_ttl)

    async def logout(self, principal: Principal) -> None:
        await self.store.revoke_family(principal.session_id)

    async def close_account(self, principal: Principal) -> None:
        """The caller closes their own account: it is disabled (it can no longer log in and
        its username stays taken) and every refresh token of every session is revoked.
        Access tokens stop working on the next request (this replica at once, others within
        the few seconds of the user cache). Messages already sent stay in their
        conversations."""
        user = await self.get_user(principal.user_id)
        await self.store.set_user_disabled(user.username, True)
        self._user_cache.pop(principal.user_id, None)

    def _refresh_expiry(self) -> int:
        return int((time.time() + self.refresh_ttl) * 1000)

    async def _issue(self, user: User) -> Tokens:
        family = secrets.token_hex(16)
        refresh_token = secrets.token_urlsafe(32)
        await self.store.add_refresh_token(_hash_token(refresh_token), family, user.id,
                                           self._refresh_expiry())
        return Tokens(user, self._access_token(user.id, family), refresh_token,
                      self.access_ttl)

    def _access_token(self, user_id: str, session_id: str) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "sid": session_id, "iat": now, "exp": now + self.access_ttl,
                  "iss": "nova", "typ": "access"}
        return jwt.encode(claims, self._key, algorithm="HS256")

    # --- every request ------------------------------------------------------------------
    async def authenticate(self, token: str | None) -> Principal:
        """The principal of an access token, or ``Unauthorized``."""
        if not token:
            raise Unauthorized("missing access token")
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"], issuer="nova",
                                options={"require": ["exp", "sub", "sid"]})
            principal = Principal(str(claims["sub"]), str(claims["sid"]))
            external = False
        except jwt.ExpiredSignatureError:
            raise Unauthorized("access token expired") from None
        except jwt.PyJWTError:
            if self._ext_key is None:
                raise Unauthorized("access token is invalid") from None
            principal = self._external(token)
            external = True
        user = await self._cached_user(principal.user_id)
        if user is None and external:
            user = await self._provision(principal.user_id)
        if user is None or user.disabled:
            raise Unauthorized("access token is invalid")
        return principal

    def _external(self, token: str) -> Principal:
        options: dict[str, Any] = {"require": ["exp", "sub"]}
        kwargs: dict[str, Any] = {}
        if self._ext_iss:
            kwargs["issuer"] = self._ext_iss
        if self._ext_aud:
            kwargs["audience"] = self._ext_aud
        else:
            options["verify_aud"] = False
        try:
            claims = jwt.decode(token, self._ext_key, algorithms=self._ext_algs,
                                options=options, **kwargs)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("access token expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("access token is invalid") from None
        sub = str(claims["sub"])
        if not sub or len(sub) > 40:
            raise Unauthorized("access token subject is not usable as a user id")
        return Principal(sub, f"ext:{claims.get('sid') or claims.get('jti') or sub}")

    async def _provision(self, user_id: str) -> User | None:
        """First sight of an externally authenticated user: create the account."""
        base = re.sub(r"[^a-z0-9_.-]", "", user_id.lower())[:24] or "user"
        name = base if len(base) >= 3 else f"user-{base}"
        for attempt in range(5):
            candidate = name if attempt == 0 else f"{name[:24]}-{secrets.token_hex(3)}"
            try:
                user = await self.store.create_user(candidate, candidate, None, user_id=user_id)
            except Exception:
                existing = await self.store.get_user(user_id)
                if existing is not None:
                    return existing
                continue
            self._user_cache.pop(user_id, None)
            return user
        return None

    async def _cached_user(self, user_id: str) -> User | None:
        hit = self._user_cache.get(user_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        user = await self.store.get_user(user_id)
        if len(self._user_cache) > 100_000:
            self._user_cache.clear()
        self._user_cache[user_id] = (now + 5.0, user)
        return user

    # --- users --------------------------------------------------------------------------
    async def get_user(self, user_id: str) -> User:
        user = await self.store.get_user(user_id)
        if user is None:
            raise NotFound("user not found")
        return user

    async def search(self, prefix: str, limit: int) -> list[User]:
        return await self.store.search_users(prefix.strip().lower(), limit)

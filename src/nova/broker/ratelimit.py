"""Token-bucket rate limiters: one in memory (one process), one in Redis (shared by replicas).

Every limiter has one method, ``await limiter.hit(key, cost=1.0)``: it takes ``cost`` tokens
from the bucket named ``key`` and returns ``None`` when they were there, or the number of
seconds after which they will be (the ``Retry-After``). A bucket holds at most ``burst``
tokens and refills at ``rate`` tokens per second; a new key starts full.

``build_rate_limiters(settings)`` picks the engine: Redis when ``NOVA_REDIS_URL`` is set (so
the limits hold across replicas), memory otherwise, and no limiter at all when
``NOVA_RATE_LIMITS=off`` (a warning is logged). The HTTP layer never imports this module;
``app.py`` builds the limiters and hands them to the middlewares and the routes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nova.settings import Settings

log = logging.getLogger("nova.ratelimit")


class RateLimiter(Protocol):
    """What the HTTP middleware and the routes need from a limiter."""

    async def hit(self, key: str, cost: float = 1.0) -> float | None: ...


class DisabledRateLimiter:
    """``NOVA_RATE_LIMITS=off``: every hit is allowed."""

    async def hit(self, key: str, cost: float = 1.0) -> float | None:
        return None


class MemoryRateLimiter:
    """Token buckets in a dict: exact for one process, per replica when there are several.

    Full buckets are forgotten (a full bucket and a missing one behave alike), so memory
    stays bounded by the keys active in the last ``burst / rate`` seconds; past ``max_keys``
    the least recently used ones are dropped.
    """

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at); LRU order
        self._hits = 0

    async def hit(self, key: str, cost: float = 1.0) -> float | None:
        now = self._clock()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        retry: float | None = None
        if tokens >= cost:
            tokens -= cost
        else:
            retry = (cost - tokens) / self.rate
        self._buckets[key] = (tokens, now)  # re-inserted: most recently used is last
        self._hits += 1
        if len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]  # the least recently used
        if self._hits % 1024 == 0:
            self._sweep(now)
        return retry

    def _sweep(self, now: float) -> None:
        full = [k for k, (tokens, at) in self._buckets.items()
                if tokens + (now - at) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)


# One atomic step per hit: refill by elapsed time (Redis server clock, so replicas with
# skewed clocks agree), take ``cost`` if there, store, and expire the key once it would be
# full again. Returns the wait in seconds as a string ("0" = allowed): Lua numbers would be
# truncated to integers on the way out.
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
local elapsed = now - at
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1)
return tostring(wait)
"""


class RedisRateLimiter:
    """Token buckets in Redis hashes ``<prefix>:rl:<name>:<key>``, one Lua script per hit.

    Shared by every replica using the same Redis and prefix. If Redis cannot be reached the
    hit is allowed (fail open: a Redis outage must not lock every user out) and a warning is
    logged at most once a minute.
    """

    def __init__(self, redis: Any, rate: float, burst: int, *, prefix: str = "nova",
                 name: str = "default") -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.redis = redis
        self.rate = float(rate)
        self.burst = int(burst)
        self.key_prefix = f"{prefix}:rl:{name}:"
        self._script = redis.register_script(_TOKEN_BUCKET_LUA)
        self._last_warning = 0.0

    async def hit(self, key: str, cost: float = 1.0) -> float | None:
        from redis.exceptions import RedisError

        try:
            raw = await self._script(keys=[self.key_prefix + key],
                                     args=[repr(self.rate), str(self.burst), repr(float(cost))])
        except (RedisError, OSError) as exc:
            now = time.monotonic()
            if now - self._last_warning > 60:
                self._last_warning = now
                log.warning("rate limiter: Redis unavailable, allowing requests: %s", exc)
            return None
        wait = float(raw.decode() if isinstance(raw, bytes) else raw)
        return wait if wait > 0 else None


@dataclass
class RateLimiters:
    """The limiters ``app.py`` hands out: ``ip`` to the middleware, ``user`` to the routes."""

    ip: RateLimiter
    user: RateLimiter
    enabled: bool
    _owned_redis: Any = field(default=None, repr=False)

    async def aclose(self) -> None:
        """Close the Redis client this object created (not one that was passed in)."""
        if self._owned_redis is not None:
            await self._owned_redis.aclose()
            self._owned_redis = None


def build_rate_limiters(settings: Settings, redis: Any = None) -> RateLimiters:
    """Build the per-IP and per-user limiters from settings.

    ``redis``: an existing ``redis.asyncio.Redis`` to share (e.g. the broker's); when it is
    ``None`` and ``NOVA_REDIS_URL`` is set, a client is created here and closed by
    ``RateLimiters.aclose()``.
    """
    if not settings.rate_limits_enabled:
        log.warning("NOVA_RATE_LIMITS=off: every rate limit is disabled "
                    "(for load tests and benchmarks only)")
        off = DisabledRateLimiter()
        return RateLimiters(ip=off, user=off, enabled=False)
    owned = None
    if redis is None and settings.redis_url:
        import redis.asyncio as aioredis

        redis = owned = aioredis.from_url(settings.redis_url)
    ip: RateLimiter
    user: RateLimiter
    if redis is not None:
        ip = RedisRateLimiter(redis, settings.rate_limit_ip_per_second,
                              settings.rate_limit_ip_burst, prefix=settings.redis_prefix,
                              name="ip")
        user = RedisRateLimiter(redis, settings.rate_limit_user_per_second,
                                settings.rate_limit_user_burst, prefix=settings.redis_prefix,
                                name="user")
    else:
        ip = MemoryRateLimiter(settings.rate_limit_ip_per_second, settings.rate_limit_ip_burst)
        user = MemoryRateLimiter(settings.rate_limit_user_per_second,
                                 settings.rate_limit_user_burst)
    return RateLimiters(ip=ip, user=user, enabled=True, _owned_redis=owned)


__all__ = [
    "DisabledRateLimiter",
    "MemoryRateLimiter",
    "RateLimiter",
    "RateLimiters",
    "RedisRateLimiter",
    "build_rate_limiters",
]

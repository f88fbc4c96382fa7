"""The Redis token bucket against a real Redis (NOVA_TEST_REDIS_URL, default 127.0.0.1:6379)."""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest
import redis.asyncio as aioredis

from nova.broker.ratelimit import RedisRateLimiter, build_rate_limiters
from nova.settings import Settings

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("NOVA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_client():  # type: ignore[no-untyped-def]
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is required in CI: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    prefix = f"nova-test-{secrets.token_hex(6)}"
    yield client, prefix
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_redis_bucket_burst_then_refused_with_retry_after(redis_client) -> None:  # type: ignore[no-untyped-def]
    client, prefix = redis_client
    limiter = RedisRateLimiter(client, rate=0.5, burst=3, prefix=prefix, name="ip")
    results = [await limiter.hit("ip:192.0.2.1") for _ in range(5)]
    assert results[:3] == [None, None, None]
    assert results[3] is not None and 1.0 < results[3] <= 2.0  # one token per 2 s
    assert await limiter.hit("ip:192.0.2.2") is None
    key = f"{prefix}:rl:ip:ip:192.0.2.1"
    ttl = await client.ttl(key)
    assert 0 < ttl <= 8  # expires once it would be full again: (3 - ~0) / 0.5 + 1


async def test_redis_bucket_is_shared_and_atomic_across_clients(redis_client) -> None:  # type: ignore[no-untyped-def]
    client, prefix = redis_client
    other = aioredis.from_url(REDIS_URL)
    try:
        # two "replicas", each its own client and limiter object, one bucket
        a = RedisRateLimiter(client, rate=0.01, burst=20, prefix=prefix, name="user")
        b = RedisRateLimiter(other, rate=0.01, burst=20, prefix=prefix, name="user")
        results = await asyncio.gather(*[(a if i % 2 else b).hit("user:u1") for i in range(50)])
        assert sum(r is None for r in results) == 20
    finally:
        await other.aclose()


async def test_redis_bucket_refills(redis_client) -> None:  # type: ignore[no-untyped-def]
    client, prefix = redis_client
    limiter = RedisRateLimiter(client, rate=50.0, burst=1, prefix=prefix)
    assert await limiter.hit("k") is None
    wait = await limiter.hit("k")
    assert wait is not None
    await asyncio.sleep(wait + 0.05)
    assert await limiter.hit("k") is None


async def test_redis_unreachable_fails_open() -> None:
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        limiter = RedisRateLimiter(client, rate=1.0, burst=1)
        assert await limiter.hit("k") is None
        assert await limiter.hit("k") is None
    finally:
        await client.aclose()


async def test_build_rate_limiters_owns_and_closes_its_client(redis_client) -> None:  # type: ignore[no-untyped-def]
    _, prefix = redis_client
    limiters = build_rate_limiters(Settings(redis_url=REDIS_URL, redis_prefix=prefix,
                                            rate_limit_user_burst=1))
    try:
        assert await limiters.user.hit("u") is None
        assert await limiters.user.hit("u") is not None
    finally:
        await limiters.aclose()

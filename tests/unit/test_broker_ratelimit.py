"""The in-memory token bucket and the limiter factory."""

from __future__ import annotations

import logging

import pytest

from nova.broker.ratelimit import (
    DisabledRateLimiter,
    MemoryRateLimiter,
    RedisRateLimiter,
    build_rate_limiters,
)
from nova.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_bucket_allows_burst_then_refills_at_rate() -> None:
    clock = FakeClock()
    bucket = MemoryRateLimiter(rate=2.0, burst=3, clock=clock)
    assert [await bucket.hit("a") for _ in range(3)] == [None, None, None]
    assert await bucket.hit("a") == pytest.approx(0.5)
    assert await bucket.hit("b") is None  # keys are independent
    clock.now += 0.5
    assert await bucket.hit("a") is None
    assert await bucket.hit("a") == pytest.approx(0.5)
    clock.now += 100  # never more than burst
    assert [await bucket.hit("a") for _ in range(4)][-1] is not None


async def test_memory_bucket_cost_and_retry_after() -> None:
    bucket = MemoryRateLimiter(rate=1.0, burst=5, clock=FakeClock())
    assert await bucket.hit("k", cost=5) is None
    assert await bucket.hit("k", cost=2) == pytest.approx(2.0)


async def test_memory_bucket_memory_is_bounded() -> None:
    clock = FakeClock()
    bucket = MemoryRateLimiter(rate=10.0, burst=2, clock=clock, max_keys=50)
    for i in range(500):
        await bucket.hit(f"k{i}")
    assert len(bucket) <= 50
    clock.now += 10  # every bucket full again: the next sweep forgets them all
    for _ in range(1024):
        await bucket.hit("x")
    assert len(bucket) <= 2


def test_build_rate_limiters_memory_by_default() -> None:
    limiters = build_rate_limiters(Settings())
    assert limiters.enabled
    assert isinstance(limiters.ip, MemoryRateLimiter) and limiters.ip.burst == 100
    assert isinstance(limiters.user, MemoryRateLimiter)


def test_build_rate_limiters_redis_when_configured() -> None:
    limiters = build_rate_limiters(Settings(redis_url="redis://127.0.0.1:1/0",
                                            redis_prefix="px"))
    assert isinstance(limiters.ip, RedisRateLimiter)
    assert limiters.ip.key_prefix == "px:rl:ip:"
    assert isinstance(limiters.user, RedisRateLimiter)


async def test_build_rate_limiters_off_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nova.ratelimit"):
        limiters = build_rate_limiters(Settings(rate_limits="off"))
    assert not limiters.enabled
    assert isinstance(limiters.ip, DisabledRateLimiter)
    assert await limiters.user.hit("u") is None
    assert "NOVA_RATE_LIMITS=off" in caplog.text

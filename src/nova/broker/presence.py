"""Who is online, across replicas: a count of sockets per user.

``MemoryPresence`` counts this process's sockets. ``RedisPresence`` keeps, per user, a hash
of socket counts per replica; a replica's counts stop counting when its liveness key
expires (a replica killed with SIGKILL does not leave its users online forever).
"""

from __future__ import annotations

import redis.asyncio as aioredis

_ADJUST = """
local key = KEYS[1]
if tonumber(ARGV[2]) ~= 0 then
  local n = redis.call('HINCRBY', key, ARGV[1], tonumber(ARGV[2]))
  if n <= 0 then redis.call('HDEL', key, ARGV[1]) end
end
local all = redis.call('HGETALL', key)
local total = 0
for i = 1, #all, 2 do
  if redis.call('EXISTS', ARGV[3] .. all[i]) == 1 then
    total = total + tonumber(all[i + 1])
  else
    redis.call('HDEL', key, all[i])
  end
end
return total
"""


class MemoryPresence:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    async def adjust(self, user_id: str, delta: int) -> int:
        """Add ``delta`` sockets for the user; return the user's sockets everywhere."""
        n = self._counts.get(user_id, 0) + delta
        if n > 0:
            self._counts[user_id] = n
        else:
            self._counts.pop(user_id, None)
        return max(n, 0)

    async def heartbeat(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisPresence:
    def __init__(self, client: aioredis.Redis, prefix: str, instance_id: str,
                 ttl_seconds: int = 30) -> None:
        self._r = client
        self._prefix = prefix
        self._instance = instance_id
        self._ttl = ttl_seconds
        self._script = client.register_script(_ADJUST)

    async def adjust(self, user_id: str, delta: int) -> int:
        total = await self._script(
            keys=[f"{self._prefix}:presence:{user_id}"],
            args=[self._instance, delta, f"{self._prefix}:instance:"])
        return int(total)

    async def heartbeat(self) -> None:
        await self._r.set(f"{self._prefix}:instance:{self._instance}", "1", ex=self._ttl)

    async def close(self) -> None:
        await self._r.delete(f"{self._prefix}:instance:{self._instance}")

"""The ingress's L1 response cache: per user + request parameters, a TTL (the seed's 5-15 min),
a bound on entries (least recently used out first), single-flight coalescing of identical
in-flight requests, and invalidation of all of one user's entries when their events arrive."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    invalidations: int = 0
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses + self.coalesced
        return (self.hits + self.coalesced) / n if n else 0.0


class ResponseCache:
    def __init__(self, ttl_s: float = 600.0, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic):
        if not ttl_s > 0:
            raise ValueError("ttl_s must be > 0")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._data: OrderedDict[Hashable, tuple[float, Any, Hashable]] = OrderedDict()
        self._by_user: dict[Hashable, set[Hashable]] = {}
        self._inflight: dict[Hashable, asyncio.Future] = {}
        self._generation: dict[Hashable, int] = {}
        self._epoch = 0  # bumped by clear(): results computed before it are not stored
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> Any | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value, _ = item
        if self.clock() >= expires:
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: Hashable, user: Hashable, value: Any) -> None:
        if key in self._data:
            self._drop(key)
        self._data[key] = (self.clock() + self.ttl_s, value, user)
        self._by_user.setdefault(user, set()).add(key)
        while len(self._data) > self.max_entries:
            old, _ = next(iter(self._data.items()))
            self._drop(old)
            self.stats.evictions += 1

    def _drop(self, key: Hashable) -> None:
        _, _, user = self._data.pop(key)
        keys = self._by_user.get(user)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_user[user]

    def invalidate_user(self, user: Hashable) -> int:
        """Drop every entry of this user; results computed before now are not stored afterwards."""
        keys = self._by_user.pop(user, set())
        for k in keys:
            self._data.pop(k, None)
        self._generation[user] = self._generation.get(user, 0) + 1
        self.stats.invalidations += 1
        return len(keys)

    def clear(self) -> int:
        """Drop everything (a catalogue change: a deleted item must not be served from cache)."""
        n = len(self._data)
        self._data.clear()
        self._by_user.clear()
        for user in list(self._generation):
            self._generation[user] += 1
        self._epoch += 1
        return n

    async def get_or_compute(
        self,
        key: Hashable,
        user: Hashable,
        compute: Callable[[], Awaitable[Any]],
        cacheable: Callable[[Any], bool] = lambda v: True,
    ) -> tuple[Any, str]:
        """(value, how): how is "hit", "coalesced" (awaited an identical in-flight request) or "miss"."""
        v = self.get(key)
        if v is not None:
            self.stats.hits += 1
            return v, "hit"
        fut = self._inflight.get(key)
        if fut is not None:
            self.stats.coalesced += 1
            return await asyncio.shield(fut), "coalesced"
        self.stats.misses += 1
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        gen = self._generation.get(user, 0)
        epoch = self._epoch
        try:
            value = await compute()
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            self._inflight.pop(key, None)
        if (
            cacheable(value) and self._generation.get(user, 0) == gen and self._epoch == epoch
        ):  # no invalidation meanwhile
            self.put(key, user, value)
        fut.set_result(value)
        return value, "miss"

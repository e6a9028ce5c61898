import asyncio

import pytest

from recserve.serving.cache import ResponseCache


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_ttl_and_lru_bound():
    clk = Clock()
    c = ResponseCache(ttl_s=300, max_entries=2, clock=clk)
    c.put("a", 1, "A")
    c.put("b", 1, "B")
    assert c.get("a") == "A"  # a is now most recent
    c.put("c", 2, "C")  # evicts b, the least recently used
    assert c.get("b") is None and c.get("a") == "A" and c.stats.evictions == 1
    clk.t = 301
    assert c.get("a") is None and len(c) == 1


def test_invalidate_user_drops_only_theirs():
    c = ResponseCache()
    c.put(("u1", "k=10"), "u1", 1)
    c.put(("u1", "k=20"), "u1", 2)
    c.put(("u2", "k=10"), "u2", 3)
    assert c.invalidate_user("u1") == 2
    assert c.get(("u1", "k=10")) is None and c.get(("u2", "k=10")) == 3


def test_single_flight_coalesces_identical_requests():
    c = ResponseCache()
    calls = []

    async def compute():
        calls.append(1)
        await asyncio.sleep(0.05)
        return {"items": [1, 2]}

    async def main():
        return await asyncio.gather(*[c.get_or_compute("k", "u", compute) for _ in range(10)])

    res = asyncio.run(main())
    assert len(calls) == 1
    assert sorted(h for _, h in res) == ["coalesced"] * 9 + ["miss"]
    assert asyncio.run(c.get_or_compute("k", "u", compute))[1] == "hit"
    assert c.stats.hit_rate == pytest.approx(10 / 11)


def test_result_computed_across_an_invalidation_is_not_stored():
    c = ResponseCache()

    async def main():
        async def slow():
            await asyncio.sleep(0.05)
            return "stale"

        task = asyncio.create_task(c.get_or_compute("k", "u", slow))
        await asyncio.sleep(0.01)
        c.invalidate_user("u")  # the user's event arrives while the old answer is computed
        return await task

    assert asyncio.run(main())[0] == "stale"
    assert c.get("k") is None


def test_failures_reach_every_waiter_and_are_not_cached():
    c = ResponseCache()

    async def boom():
        await asyncio.sleep(0.01)
        raise RuntimeError("ranker down")

    async def main():
        return await asyncio.gather(*[c.get_or_compute("k", "u", boom) for _ in range(3)], return_exceptions=True)

    res = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in res)
    assert c.get("k") is None


def test_clear_drops_everything_and_blocks_in_flight_results():
    c = ResponseCache()
    c.put("a", 1, "A")

    async def main():
        async def slow():
            await asyncio.sleep(0.05)
            return "old catalogue"

        task = asyncio.create_task(c.get_or_compute("k", 2, slow))
        await asyncio.sleep(0.01)
        assert c.clear() == 1
        return await task

    asyncio.run(main())
    assert len(c) == 0 and c.get("k") is None

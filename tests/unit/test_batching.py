import asyncio

import pytest

from recserve.serving.batching import MicroBatcher


def test_concurrent_calls_with_one_key_go_out_together():
    seen = []

    async def fn(key, items):
        seen.append((key, list(items)))
        return [i * 10 for i in items]

    async def main():
        b = MicroBatcher(fn, max_batch=8, wait_s=0.01)
        out = await asyncio.gather(*[b.submit("a", i) for i in range(5)], b.submit("b", 7))
        return b, out

    b, out = asyncio.run(main())
    assert out == [0, 10, 20, 30, 40, 70]
    assert sorted(len(items) for _, items in seen) == [1, 5] and b.calls == 2 and b.items == 6


def test_full_batch_flushes_at_once_and_errors_reach_every_caller():
    async def fn(key, items):
        if 99 in items:
            raise ValueError("bad item")
        return items

    async def main():
        b = MicroBatcher(fn, max_batch=3, wait_s=10)  # only max_batch can flush within the test
        got = await asyncio.wait_for(asyncio.gather(*[b.submit(0, i) for i in range(3)]), 2)
        res = await asyncio.gather(b.submit(1, 99), b.submit(1, 1), b.submit(1, 2), return_exceptions=True)
        return got, res

    got, res = asyncio.run(main())
    assert got == [0, 1, 2]
    assert all(isinstance(r, ValueError) for r in res)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        MicroBatcher(lambda k, i: i, max_batch=0)

import asyncio
import time

import pytest

from recserve.serving.batching import InflightBatcher


def test_a_lone_call_goes_at_once_and_waiters_go_together_when_it_returns():
    seen = []
    release = None

    async def fn(key, items):
        seen.append((key, list(items)))
        if len(seen) == 1:
            await release.wait()  # the first call is slow: the others queue behind it
        return [i * 10 for i in items]

    async def main():
        nonlocal release
        release = asyncio.Event()
        b = InflightBatcher(fn, max_batch=8, max_inflight=1)
        first = asyncio.ensure_future(b.submit("a", 0))
        await asyncio.sleep(0)  # the first call is out
        await asyncio.sleep(0)
        rest = asyncio.ensure_future(asyncio.gather(*[b.submit("a", i) for i in range(1, 5)]))
        await asyncio.sleep(0.01)
        assert len(seen) == 1  # nothing else left while one call was in flight
        release.set()
        return b, [await first] + list(await rest)

    b, out = asyncio.run(main())
    assert out == [0, 10, 20, 30, 40]
    assert [len(items) for _, items in seen] == [1, 4] and b.calls == 2 and b.items == 5


def test_no_timer_a_single_call_does_not_wait():
    async def fn(key, items):
        return items

    async def main():
        b = InflightBatcher(fn, max_batch=64, max_inflight=1)
        t = time.perf_counter()
        for i in range(50):
            assert await b.submit(0, i) == i
        return time.perf_counter() - t

    assert asyncio.run(main()) < 0.05  # 50 sequential calls: no fixed wait per call


def test_keys_batch_apart_max_batch_splits_and_errors_reach_every_caller():
    seen = []

    async def fn(key, items):
        seen.append((key, list(items)))
        await asyncio.sleep(0.01)
        if 99 in items:
            raise ValueError("bad item")
        return items

    async def main():
        b = InflightBatcher(fn, max_batch=3, max_inflight=1)
        got = await asyncio.gather(*[b.submit("x", i) for i in range(7)], b.submit("y", 5))
        res = await asyncio.gather(b.submit(1, 99), b.submit(1, 1), return_exceptions=True)
        return got, res

    got, res = asyncio.run(main())
    assert got == [0, 1, 2, 3, 4, 5, 6, 5]
    assert all(len(items) <= 3 for _, items in seen) and {k for k, _ in seen} >= {"x", "y"}
    assert any(isinstance(r, ValueError) for r in res)


def test_a_caller_that_gave_up_is_not_sent():
    seen = []

    async def fn(key, items):
        seen.append(list(items))
        await asyncio.sleep(0.05)
        return items

    async def main():
        b = InflightBatcher(fn, max_batch=8, max_inflight=1)
        first = asyncio.ensure_future(b.submit(0, "first"))
        await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.submit(0, "gave-up"), 0.01)  # its deadline passed while queued
        await first

    asyncio.run(main())
    assert seen == [["first"]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        InflightBatcher(lambda k, i: i, max_batch=0)
    with pytest.raises(ValueError):
        InflightBatcher(lambda k, i: i, max_inflight=0)


class _Remote:
    """A deployment handle's method as the ports see it: `.remote(*args)` returns an awaitable."""

    def __init__(self, fn, delay: float = 0.01):
        self.fn, self.delay, self.calls = fn, delay, []

    def remote(self, *args):
        self.calls.append(args)

        async def answer():
            await asyncio.sleep(self.delay)  # a hop's round trip: the answers behind it gather meanwhile
            return self.fn(*args)

        return answer()


def test_the_cluster_topologys_ranker_and_bandit_hops_carry_the_answers_in_flight_together():
    """HandleScore / HandleSelect (the split topology's ports): concurrent answers go out in one
    handle call per batch, each gets its own result back, an arm's spec and share go apart."""
    import numpy as np

    from recserve.ranking.bandit import Slate
    from recserve.serving.ports import HandleScore, HandleSelect

    class Handle:
        def __init__(self):
            self.score_many = _Remote(
                lambda lists, spec: [(x[:, 0] * 2, (spec or {}).get("version", "v1")) for x in lists]
            )
            self.select_many = _Remote(
                lambda items, share, arm: [Slate(r[:k], [False] * k, None) for r, k, u, rid in items]
            )

    h = Handle()
    score, select = HandleScore(h, max_inflight=1), HandleSelect(h, max_inflight=1)

    async def main():
        xs = [np.full((3, 2), float(i), dtype=np.float32) for i in range(8)]
        scored = await asyncio.gather(
            *[score.score(x) for x in xs], score.score(xs[0], {"version": "arm-b", "model_path": "x"})
        )
        slates = await asyncio.gather(*[select.select([i, i + 1, i + 2], 2, i, f"r{i}") for i in range(8)])
        return scored, slates

    scored, slates = asyncio.run(main())
    assert [float(s[0][0]) for s in scored[:8]] == [2.0 * i for i in range(8)]
    assert all(v == "v1" for _, v in scored[:8]) and scored[8][1] == "arm-b"
    # the first list went alone, the other seven with it in flight gathered into one call; the
    # arm's version in a call of its own
    assert sorted(len(c[0]) for c in h.score_many.calls) == [1, 1, 7]
    assert [s.items for s in slates] == [[i, i + 1] for i in range(8)]
    assert len(h.select_many.calls) == 2


def test_a_call_that_hangs_holds_up_nobody_after_its_callers_gave_up():
    """A replica killed under a call: the call never returns. Once its callers' deadlines pass, its
    slot is free and the next answers' calls go out (before, every later caller waited behind it)."""
    hang = asyncio.Event()
    seen = []

    async def fn(key, items):
        seen.append(list(items))
        if items == ["stuck"]:
            await hang.wait()  # never set
        return items

    async def main():
        b = InflightBatcher(fn, max_batch=8, max_inflight=1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.submit(0, "stuck"), 0.02)
        got = await asyncio.wait_for(b.submit(0, "next"), 0.5)
        return b, got

    b, got = asyncio.run(main())
    assert got == "next" and seen == [["stuck"], ["next"]] and b.abandoned == 1 and b.inflight == 0

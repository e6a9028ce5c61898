"""An ingress replica notices a ranker redeployed where its own user_config does not reach (the
split topology's Ranker deployment): its cached answers, ranked by the old version, go."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from recserve.serving.cache import ResponseCache
from recserve.serving.loops import BackgroundLoops


class Score:
    def __init__(self, v):
        self.v = v

    async def version(self):
        return self.v


def _svc(serving: str, cached_by: str | None, own_spec=None):
    cache = ResponseCache(ttl_s=600)
    cache.put(("u1", "k"), "u1", b"answer")
    return SimpleNamespace(
        ports=SimpleNamespace(score=Score(serving)),
        ladder=SimpleNamespace(ranker_spec=own_spec),
        ranker_version=cached_by,
        cache=cache,
    )


def test_a_new_ranker_version_clears_the_answers_the_old_one_ranked():
    svc = _svc("v000003", "v000001")
    asyncio.run(BackgroundLoops(svc).follow_ranker())
    assert len(svc.cache) == 0 and svc.ranker_version is None


def test_the_same_version_or_a_ladder_with_its_own_ranker_keeps_them():
    for svc in (
        _svc("v000001", "v000001"),  # nothing changed
        _svc("v000003", None),  # nothing ranked is cached yet
        _svc("v000003", "v000002", own_spec={"version": "v000002"}),  # an adopted generation's own ranker
    ):
        asyncio.run(BackgroundLoops(svc).follow_ranker())
        assert len(svc.cache) == 1

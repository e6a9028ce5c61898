"""Thompson sampling with its parameters in a real Redis, shared by two instances (replicas)."""

import json
import uuid

import numpy as np
import pytest
import redis

from recserve.ranking.bandit import ThompsonBandit

pytestmark = pytest.mark.integration


def _pair(redis_url, **kw):
    prefix = f"b-{uuid.uuid4().hex[:6]}"
    return ThompsonBandit(redis_url, prefix=prefix, seed=1, **kw), ThompsonBandit(
        redis_url, prefix=prefix, seed=2, **kw
    )


def test_exploration_slots_and_propensities(redis_url):
    b, _ = _pair(redis_url, share=0.2)
    ranked = list(range(100, 150))
    s = b.select(ranked, 10)
    assert len(s.items) == 10 and len(set(s.items)) == 10
    assert s.items[:8] == ranked[:8] and s.explored == [False] * 8 + [True] * 2
    assert all(i in ranked[8:] for i in s.items[8:])
    assert s.propensities[:8] == [1.0] * 8 and all(0 < p <= 1 for p in s.propensities[8:])
    b.log_impression("req-1", 7, s)
    row = redis.Redis.from_url(redis_url).xrange(f"{b.prefix}:impressions")[-1][1]
    assert json.loads(row[b"items"]) == s.items and json.loads(row[b"propensities"]) == s.propensities


def test_feedback_is_shared_and_steers_exploration(redis_url):
    b1, b2 = _pair(redis_url, share=0.5)
    ranked = list(range(20))
    for _ in range(30):
        b1.update(15, 1.0)  # replica 1 learns item 15 pays
        b1.update(16, 0.0)
    a, bb = b2.params([15, 16])  # replica 2 sees the same posterior
    assert a[0] == 31 and bb[0] == 1 and a[1] == 1 and bb[1] == 31
    shown = sum(15 in b2.select(ranked, 4).items for _ in range(50))
    never = sum(16 in b2.select(ranked, 4).items for _ in range(50))
    assert shown >= 35 and never <= 5  # vs 2 in 18 (11 %) for an item the bandit knows nothing about


def test_no_exploration_when_no_spare_candidates(redis_url):
    b, _ = _pair(redis_url, share=0.3)
    s = b.select([1, 2, 3], 5)
    assert s.items == [1, 2, 3] and not any(s.explored)
    with pytest.raises(ValueError):
        b.update(1, 2.0)
    assert np.isfinite(b.params([1])[0]).all()

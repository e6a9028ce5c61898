"""The online path as a plain class over real parts: registry artifacts from the offline jobs,
the index on VectorShard actors, the bandit on a real Redis."""

import numpy as np
import pytest

from recserve.index.client import IndexRouter
from recserve.ranking.bandit import ThompsonBandit
from recserve.serving.recommender import LEVEL_FULL, LEVEL_POPULAR, LEVEL_TEMPLATES, Recommender
from tests.conftest import trained_registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(stack, redis_url, tmp_path_factory):
    cfg, _ = stack
    root = tmp_path_factory.mktemp("served")
    reg = trained_registry(cfg, root)
    rt = IndexRouter.from_artifact(reg.fetch("index"), root / "live", replicas=1)
    rec = Recommender(cfg, reg, rt, ThompsonBandit(redis_url, prefix="rec-test", share=0.2, seed=0))
    yield rec, rt
    rt.shutdown()


def test_known_user_gets_k_unseen_items(served):
    rec, _ = served
    u = int(rec.data.user_ids[0])
    r = rec.recommend(u, k=10)
    ids = [i["item_id"] for i in r.items]
    assert len(ids) == 10 == len(set(ids))
    assert not set(ids) & set(rec._seen(0).tolist())
    assert r.degradation_level == LEVEL_FULL and set(r.model_versions) == {"embeddings", "index", "ranker"}
    assert r.to_json()["took_ms"] > 0


def test_filters_and_exclusions_inside_the_search(served):
    rec, _ = served
    u = int(rec.data.user_ids[1])
    cat = str(rec.item_category[0])
    first = rec.recommend(u, k=5, filters={"categories": [cat]})
    got = [i["item_id"] for i in first.items]
    dense = np.searchsorted(rec.data.item_ids, got)
    assert all(rec.item_category[d] == cat for d in dense)
    again = rec.recommend(u, k=5, filters={"categories": [cat], "exclude_ids": got})
    assert not set(i["item_id"] for i in again.items) & set(got)


def test_explanations_and_cold_start(served):
    rec, _ = served
    r = rec.recommend(int(rec.data.user_ids[2]), k=5, explain=True)
    assert r.degradation_level == LEVEL_TEMPLATES and all(i["reasons"] for i in r.items)
    cold = rec.recommend(10**9, k=5)
    assert cold.degradation_level == LEVEL_FULL and len(cold.items) == 5
    assert all(i["reasons"] == ["popular right now"] for i in cold.items)


def test_index_down_degrades_to_popular(served, stack, tmp_path):
    rec, rt = served
    saved = rt.groups
    rt.groups = []  # no shard reachable
    try:
        r = rec.recommend(int(rec.data.user_ids[3]), k=5)
    finally:
        rt.groups = saved
    assert r.degradation_level == LEVEL_POPULAR and len(r.items) == 5

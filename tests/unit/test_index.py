import numpy as np
import pytest

from recserve.config import IndexConfig
from recserve.index.build import ShardSet, build_sharded
from recserve.index.hashing import HASH_SPACE, even_ranges, item_hash, shard_of


def _vecs(n=600, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return np.arange(1000, 1000 + n, dtype=np.int64), rng.standard_normal((n, d)).astype(np.float32)


def test_hash_routing_is_stable_and_balanced():
    ids = np.arange(100_000)
    h = item_hash(ids)
    assert h.min() >= 0 and h.max() < HASH_SPACE
    assert int(item_hash(12345)) == int(item_hash(np.array([12345]))[0])
    owner = shard_of(ids, even_ranges(4))
    counts = np.bincount(owner, minlength=4)
    assert counts.min() > 0.23 * len(ids)  # even ranges split a good hash evenly


@pytest.mark.parametrize(
    "kind,storage", [("flat", "fp32"), ("hnsw", "fp32"), ("hnsw", "fp16"), ("flat", "sq8"), ("ivfpq", "fp32")]
)
def test_sharded_search_matches_exact(tmp_path, kind, storage):
    ids, x = _vecs()
    cfg = IndexConfig(num_shards=3, kind=kind, storage=storage, pq_m=4, ivf_nlist=8, nprobe=8)
    built = build_sharded(ids, x, cfg, tmp_path)
    assert sum(s["count"] for s in built.manifest["shards"]) == len(ids)
    assert [len(list(tmp_path.glob("shard_*.faiss")))] == [3]
    ss = ShardSet(tmp_path)
    q = x[:20] + 0.01
    got, scores = ss.search(q, 10)
    exact = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    assert recall >= (0.95 if kind != "ivfpq" else 0.4)
    assert (np.diff(scores, axis=1) <= 1e-5).all()  # merged in score order


def test_exclusion_inside_search_still_returns_k(tmp_path):
    ids, x = _vecs(n=200)
    build_sharded(ids, x, IndexConfig(num_shards=2, kind="hnsw"), tmp_path)
    ss = ShardSet(tmp_path)
    q = x[:3]
    first, _ = ss.search(q, 10)
    excl = [first[r] for r in range(3)]  # exclude each query's whole first page
    second, _ = ss.search(q, 10, exclude=excl)
    for r in range(3):
        assert len(second[r]) == 10 and (second[r] >= 0).all()
        assert not set(second[r]) & set(excl[r])


def test_nan_vectors_rejected(tmp_path):
    ids, x = _vecs(n=10)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_sharded(ids, x, IndexConfig(num_shards=2), tmp_path)


def test_the_index_searched_in_process_answers_as_its_actors_would_and_keeps_its_writes(tmp_path):
    """serve.index_placement router: IndexClient over recserve.index.local.LocalShard (the
    replicas in this process, no Ray): the same top-k as the shard set, writes through the log,
    a restart (a new client on the same live root) finds them again."""
    import asyncio

    from recserve.index.client import IndexClient
    from recserve.index.local import LocalShard

    ids, x = _vecs(n=300)
    build_sharded(ids, x, IndexConfig(num_shards=3, kind="flat"), tmp_path / "art")
    ix = IndexClient.from_artifact(tmp_path / "art", tmp_path / "live", shard_actor=LocalShard(), replicas=1)
    assert ix.local
    q = x[:5] + 0.01
    want, _ = ShardSet(tmp_path / "art").search(q, 10)
    got, _ = asyncio.run(ix.asearch(q, 10))
    assert (got == want).all()
    new = np.full((1, x.shape[1]), 0.0, dtype=np.float32)
    new[0, 0] = 50.0  # far along the first axis: the top answer of a query there
    ix.upsert([5], new)
    ix.delete([int(want[0][0])])
    probe = np.zeros((1, x.shape[1]), dtype=np.float32)
    probe[0, 0] = 1.0
    assert asyncio.run(ix.asearch(probe, 3))[0][0][0] == 5
    assert int(want[0][0]) not in asyncio.run(ix.asearch(q[:1], 10))[0][0]
    assert sum(asyncio.run(ix.asizes()).values()) == len(ids)  # one in, one out
    again = IndexClient.from_artifact(tmp_path / "art", tmp_path / "live", shard_actor=LocalShard(), replicas=1)
    assert asyncio.run(again.asearch(probe, 3))[0][0][0] == 5  # the log replayed
    assert int(want[0][0]) not in asyncio.run(again.asearch(q[:1], 10))[0][0]


def test_auto_placement_searches_a_small_unshared_index_in_process(tmp_path):
    from recserve.config import Config
    from recserve.serving.wiring import index_placement

    ids, x = _vecs(n=300)
    build_sharded(ids, x, IndexConfig(num_shards=2, kind="flat"), tmp_path)
    cfg = Config()
    assert index_placement(cfg, tmp_path, shared=False) == "router"
    assert index_placement(cfg, tmp_path, shared=True) == "actors"  # several ingress replicas share it
    small = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"index_router_max_mb": 0.001})})
    assert index_placement(small, tmp_path, shared=False) == "actors"  # too big to sit beside the ingress
    forced = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"index_placement": "router"})})
    with pytest.raises(ValueError, match="several ingress replicas"):
        index_placement(forced, tmp_path, shared=True)


def test_a_retired_replica_is_killed_after_its_grace_not_at_once():
    """A swap, a rebalance or a generation's promotion retires replicas a search may still be
    using: they are killed `grace_s` later, not under that search."""
    import threading

    from recserve.index import local

    closed = threading.Event()

    class Handle(local.LocalHandle):
        def __init__(self):
            pass

        def close(self):
            closed.set()

    local.kill_later([Handle()], grace_s=0.5)
    assert not closed.is_set()  # the search that picked it before the switch can still finish
    assert closed.wait(10)  # and then it goes

"""The sharded index on real Ray actors: replicas, failover, recovery, rebalancing, hot swap."""

import threading
import time

import numpy as np
import pytest
import ray

from actors.vector_shard import VectorShard
from recserve.config import IndexConfig
from recserve.index.build import ShardSet, build_sharded
from recserve.index.client import IndexClient
from recserve.index.shard import ShardError

pytestmark = pytest.mark.integration
D = 8


def _in_range(ids, g):
    from recserve.index.hashing import item_hash

    return [int(i) for i in ids if g.lo <= int(item_hash(i)) < g.hi]


def _kill_and_wait(handle, timeout=60):
    """Kill an actor (Ray restarts it) and return the restarted actor's stats."""
    old = ray.get(handle.pid.remote())
    ray.kill(handle, no_restart=False)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            st = ray.get(handle.stats.remote(), timeout=5)
            if st["pid"] != old:
                return st
        except Exception:  # noqa: BLE001 - restarting
            pass
        time.sleep(0.3)
    raise AssertionError("actor did not restart")


def _unit(n, seed):
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def client(stack, tmp_path):
    ids = np.arange(1, 401, dtype=np.int64)
    x = _unit(400, 0)
    build_sharded(ids, x, IndexConfig(num_shards=2, kind="flat"), tmp_path / "art")
    metas = {int(i): {"category": f"c{i % 5}", "attributes": {"band": "low" if i % 2 else "high"}} for i in ids}
    rt = IndexClient.from_artifact(
        tmp_path / "art", tmp_path / "live", metas, shard_actor=VectorShard, replicas=2, timeout_s=3.0
    )
    yield rt, ids, x
    rt.shutdown()


def test_client_matches_in_process_shards(client, tmp_path):
    rt, ids, x = client
    got, sc = rt.search(x[:20], 10)
    ref, _ = ShardSet(tmp_path / "art").search(x[:20], 10)
    assert (got == ref).all()
    assert (got[:, 0] == ids[:20]).all()
    got, _ = rt.search(x[:5], 10, {"categories": ["c3"], "attributes": {"band": ["low"]}})
    assert ((got % 5 == 3) & (got % 2 == 1)).all()  # filtered inside the search: all match, k of them


@pytest.mark.parametrize(
    "args,match",
    [
        (lambda x: (x[:, :3], 5, None), "dimension"),
        (lambda x: (np.full((1, D), np.nan, np.float32), 5, None), "NaN"),
        (lambda x: (x[:1], 0, None), "k must be"),
        (lambda x: (x[:1], 100000, None), "k must be"),
        (lambda x: (x[:1], 5, {"price": [1]}), "unknown filter field 'price'"),
    ],
)
def test_client_rejects_bad_queries(client, args, match):
    rt, ids, x = client
    with pytest.raises(ShardError, match=match):
        rt.search(*args(x))
    assert (rt.search(x[:3], 1)[0][:, 0] == ids[:3]).all()  # still serving


def test_killed_replica_fails_no_query_and_loses_no_upsert(client):
    rt, ids, x = client
    errors, answered = [], [0]
    stop = threading.Event()

    def query_loop():
        while not stop.is_set():
            try:
                got, _ = rt.search(x[:8], 5)
                assert (got[:, 0] == ids[:8]).all()
                answered[0] += 1
            except Exception as e:  # noqa: BLE001 - any failure is what this test looks for
                errors.append(repr(e))

    t = threading.Thread(target=query_loop)
    t.start()
    new_ids = np.arange(10_000, 10_200, dtype=np.int64)
    new_x = _unit(200, 1)
    acked = []
    victim = rt.groups[0].replicas[0]
    old_pid = ray.get(victim.handle.pid.remote())
    for b in range(10):
        sl = slice(b * 20, (b + 1) * 20)
        rt.upsert(new_ids[sl], new_x[sl], [{"category": "new"}] * 20)
        acked.extend(new_ids[sl].tolist())
        if b == 3:
            ray.kill(victim.handle, no_restart=False)  # Ray restarts it (max_restarts)
    time.sleep(0.5)
    stop.set()
    t.join()
    assert not errors and answered[0] > 0
    # the restarted replica reloaded and replayed the log: every acknowledged upsert is there
    deadline = time.time() + 60
    while True:
        try:
            new_pid = ray.get(victim.handle.pid.remote(), timeout=5)
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    assert new_pid != old_pid
    rt.refresh()
    for g in rt.groups:
        owned = _in_range(acked, g)
        for r in g.replicas:
            assert all(ray.get(r.handle.contains.remote(owned))), r.name
    got, _ = rt.search(new_x, 1)
    assert (got[:, 0] == new_ids).all()


def test_snapshot_then_restart_replays_only_the_tail(client):
    rt, ids, x = client
    rt.upsert([5000], _unit(1, 3), [{"category": "a"}])
    rt.snapshot()
    rt.upsert([5001], _unit(1, 4), [{"category": "a"}])
    rep = rt.groups[0].replicas[1]
    st = _kill_and_wait(rep.handle)
    assert st["restored_from"].startswith("snap-")
    assert st["replayed"] <= 1


def test_corrupt_snapshot_falls_back_and_keeps_serving(client):
    rt, ids, x = client
    rt.snapshot()
    rep = rt.groups[1].replicas[0]
    snapdir = rt.root / "g0" / "shard_0001" / "replica_0"
    snap = sorted(snapdir.glob("snap-*"))[-1]
    (snap / "live.npy").write_bytes(b"broken")
    st = _kill_and_wait(rep.handle)
    assert st["restored_from"] == "artifact"  # the corrupt snapshot was skipped, with an error logged
    assert st["count"] == len(_in_range(ids, rt.groups[1]))
    assert (rt.search(x[:5], 1)[0][:, 0] == ids[:5]).all()


def test_rebalance_2_to_4_while_querying(client):
    rt, ids, x = client
    misses, errors = [], []
    stop = threading.Event()

    def query_loop():
        rng = np.random.default_rng(0)
        while not stop.is_set():
            pick = rng.choice(len(ids), size=16, replace=False)
            try:
                got, _ = rt.search(x[pick], 1)
                misses.extend(int(ids[p]) for p, g in zip(pick, got[:, 0]) if g != ids[p])
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

    t = threading.Thread(target=query_loop)
    t.start()
    time.sleep(0.3)
    rt.upsert([7000], _unit(1, 9), [{"category": "late"}])  # a write before the move
    rt.rebalance(4)
    stop.set()
    t.join()
    assert not errors and not misses
    assert len(rt.groups) == 4 and rt.generation == 1
    got, _ = rt.search(x, 1)
    assert (got[:, 0] == ids).all()
    assert rt.search(_unit(1, 9), 1)[0][0, 0] == 7000
    total = sum(ray.get(g.replicas[0].handle.stats.remote())["count"] for g in rt.groups)
    assert total == len(ids) + 1


def test_writes_during_and_after_a_rebalance_are_all_found(client):
    """One sequence across generations: upserts acknowledged while the shards move and after it
    (of new items, and new vectors of items that moved) are all searchable afterwards, and a
    replica restarted after the move replays them."""
    rt, ids, x = client
    acked: dict[int, np.ndarray] = {}
    stop = threading.Event()

    def writer():
        j = 0
        while not stop.is_set():
            v = _unit(1, 1000 + j)
            rt.upsert([20_000 + j], v, [{"category": "during"}])
            acked[20_000 + j] = v[0]
            j += 1

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.2)
    rt.rebalance(4)
    time.sleep(0.2)
    stop.set()
    t.join()
    moved_new = _unit(1, 77)
    rt.upsert([int(ids[5])], moved_new, [{"category": "changed"}])  # an item that moved
    rt.upsert([30_000], _unit(1, 78), [{"category": "after"}])  # a new one
    acked[int(ids[5])], acked[30_000] = moved_new[0], _unit(1, 78)[0]
    assert len(acked) > 5

    def all_found():
        keys = list(acked)
        got, _ = rt.search(np.stack([acked[k] for k in keys]), 1)
        return [k for k, g in zip(keys, got[:, 0]) if g != k]

    assert all_found() == []
    _kill_and_wait(rt.groups[0].replicas[0].handle)  # a restart replays the new generation's log
    _kill_and_wait(rt.groups[0].replicas[1].handle)
    rt.refresh()
    assert all_found() == []


def test_hot_swap_without_a_gap(client, tmp_path):
    rt, ids, x = client
    ids2 = np.arange(1, 401, dtype=np.int64)
    x2 = _unit(400, 42)
    build_sharded(ids2, x2, IndexConfig(num_shards=3, kind="hnsw"), tmp_path / "art2")
    errors = []
    stop = threading.Event()

    def query_loop():
        while not stop.is_set():
            try:
                rt.search(x[:4], 3)
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

    t = threading.Thread(target=query_loop)
    t.start()
    # catalogue writes made to the running index: a new item, a new vector of a known one, a delete
    new_v, moved_v = _unit(1, 501), _unit(1, 502)
    rt.upsert([50_000], new_v, [{"category": "added"}])
    rt.upsert([7], moved_v, [{"category": "changed"}])
    rt.delete([9])
    rt.swap(tmp_path / "art2")
    stop.set()
    t.join()
    assert not errors
    assert len(rt.groups) == 3
    assert (rt.search(x2[10:20], 1)[0][:, 0] == ids2[10:20]).all()
    # the writes made before the swap are in the new index too
    assert rt.search(new_v, 1)[0][0, 0] == 50_000 and rt.search(moved_v, 1)[0][0, 0] == 7
    assert 9 not in set(rt.search(x2[8:9], 5)[0][0].tolist())

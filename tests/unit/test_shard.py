import numpy as np
import pytest

from recserve.config import IndexConfig
from recserve.index.shard import ShardCore, ShardError, SnapshotError
from recserve.index.wal import WriteAheadLog

D = 8


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.arange(10, 10 + n, dtype=np.int64)
    x = rng.standard_normal((n, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # unit vectors: under inner product each finds itself first
    metas = [
        {"category": f"c{i % 10}", "attributes": {"band": ["low", "mid", "high"][i % 3], "tags": [f"t{i % 4}"]}}
        for i in range(n)
    ]
    return ids, x, metas


def _exact(ids, x, q, k, mask=None):
    s = q @ x.T
    if mask is not None:
        s = np.where(mask[None, :], s, -np.inf)
    return ids[np.argsort(-s, axis=1)[:, :k]]


@pytest.mark.parametrize("kind,storage", [("flat", "fp32"), ("hnsw", "fp32"), ("hnsw", "sq8"), ("ivfpq", "fp32")])
def test_upsert_search_delete(kind, storage):
    ids, x, metas = _data()
    core = ShardCore(D, IndexConfig(kind=kind, storage=storage, pq_m=4, ivf_nlist=4, nprobe=4), "t")
    core.upsert(ids, x, metas)
    got, sc = core.search(x[:5], 5)
    if kind != "ivfpq":
        assert (got[:, 0] == ids[:5]).all()  # each vector finds itself first
    core.delete(ids[:5])
    got, _ = core.search(x[:5], 5)
    assert not set(got.ravel()) & set(ids[:5].tolist())
    assert (got >= 0).all()  # still k results: tombstones never take a place
    assert core.count == len(ids) - 5


def test_filters_inside_search_return_k_matching():
    ids, x, metas = _data(n=500)
    core = ShardCore(D, IndexConfig(kind="hnsw"), "t")
    core.upsert(ids, x, metas)
    q = x[:10]
    flt = {"categories": ["c3"], "attributes": {"band": ["low", "mid"]}}
    got, _ = core.search(q, 10, flt)
    mask = np.array([m["category"] == "c3" and m["attributes"]["band"] in ("low", "mid") for m in metas])
    assert mask.sum() >= 10
    for row in got:
        assert (row >= 0).all() and len(row) == 10  # k of them, since k exist
        for i in row:
            m = metas[int(i) - 10]
            assert m["category"] == "c3" and m["attributes"]["band"] in ("low", "mid")
    exact = _exact(ids, x, q, 10, mask)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    assert recall >= 0.9
    # list-valued attributes match any of their values; exclusions apply per query
    got, _ = core.search(q[:2], 5, [{"attributes": {"tags": ["t1"]}}, {"exclude_ids": [int(ids[1])]}])
    assert all(metas[int(i) - 10]["attributes"]["tags"] == ["t1"] for i in got[0])
    assert int(ids[1]) not in got[1]


def test_filter_with_fewer_matches_than_k_pads():
    ids, x, metas = _data(n=50)
    core = ShardCore(D, IndexConfig(kind="flat"), "t")
    core.upsert(ids, x, metas)
    got, sc = core.search(x[:1], 10, {"categories": ["c1"]})
    assert (got[0] >= 0).sum() == 5 and np.isneginf(sc[0][5:]).all()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda c, x: c.search(x[:, :4], 5), "dimension"),
        (lambda c, x: c.search(np.full((1, D), np.nan), 5), "NaN"),
        (lambda c, x: c.search(x[:1], 0), "k must be"),
        (lambda c, x: c.search(x[:1], 5000), "k must be"),
        (lambda c, x: c.search(x[:1], 5, {"colour": ["red"]}), "unknown filter field 'colour'"),
        (lambda c, x: c.upsert([1], np.full((1, D), np.inf)), "NaN or infinite"),
        (lambda c, x: c.upsert([1, 2], x[:2, :3]), "dimension"),
        (lambda c, x: c.upsert([1, 1], x[:2]), "twice"),
    ],
)
def test_bad_input_is_rejected_and_state_kept(call, match):
    ids, x, metas = _data(n=40)
    core = ShardCore(D, IndexConfig(kind="hnsw"), "t")
    core.upsert(ids, x, metas)
    before = core.search(x[:3], 5)
    with pytest.raises(ShardError, match=match):
        call(core, x)
    after = core.search(x[:3], 5)
    assert (before[0] == after[0]).all() and core.count == 40


def test_older_writes_never_overwrite_newer():
    ids, x, metas = _data(n=20)
    core = ShardCore(D, IndexConfig(kind="flat"), "t")
    core.upsert(ids[:1], x[:1], seq=5)
    core.upsert(ids[:1], x[1:2], seq=3)  # a stale replay
    got, _ = core.search(x[:1], 1)
    assert got[0, 0] == ids[0]
    core.delete(ids[:1], seq=4)  # an older delete loses to the newer upsert
    assert core.count == 1
    core.delete(ids[:1], seq=6)
    assert core.count == 0


def test_rebuild_past_tombstone_threshold():
    ids, x, metas = _data(n=100)
    core = ShardCore(D, IndexConfig(kind="hnsw"), "t", rebuild_ratio=0.2)
    core.upsert(ids, x, metas)
    core.delete(ids[:30])
    assert core.rebuilds == 1 and core.tombstones == 0 and core.index.ntotal == 70
    got, _ = core.search(x[30:33], 1)
    assert (got[:, 0] == ids[30:33]).all()
    got, _ = core.search(x[:5], 3, {"categories": ["c5"]})  # metadata survived the rebuild
    assert all(int(i) % 10 == 5 for i in got.ravel() - 10)


def test_background_rebuild_keeps_serving_and_journals_writes():
    ids, x, metas = _data(n=2000)
    core = ShardCore(D, IndexConfig(kind="hnsw"), "t", rebuild_ratio=0.2, background_rebuild=True)
    core.upsert(ids, x, metas)
    core.delete(ids[:500])  # past the threshold: a rebuild starts in the background
    core.upsert([99999], x[:1], [{"category": "late"}])  # a write while it may be running
    core.delete(ids[600:601])
    assert (core.search(x[700:703], 1)[0][:, 0] == ids[700:703]).all()  # still serving
    core.wait_rebuild(30)
    assert core.rebuilds >= 1 and core.tombstones <= 2
    assert core.count == 2000 - 500 - 1 + 1
    assert core.search(x[:1], 1, {"categories": ["late"]})[0][0, 0] == 99999
    assert int(ids[600]) not in core.search(x[600:601], 5)[0][0]


def test_snapshot_restore_and_corruption(tmp_path):
    ids, x, metas = _data(n=200)
    cfg = IndexConfig(kind="flat", storage="fp16")
    core = ShardCore(D, cfg, "t")
    core.upsert(ids, x, metas)
    core.delete(ids[:3])
    man = core.snapshot(tmp_path)
    snap = tmp_path / f"snap-{man['version']:012d}"
    back = ShardCore.restore(snap, cfg)
    a, b = core.search(x[:10], 5, {"categories": ["c2"]}), back.search(x[:10], 5, {"categories": ["c2"]})
    assert (a[0] == b[0]).all() and back.version == core.version and back.count == core.count
    back.upsert([9999], x[:1], [{"category": "c2"}])  # a restored shard takes writes
    assert back.search(x[:1], 1, {"categories": ["c2"]})[0][0, 0] == 9999
    with pytest.raises(SnapshotError, match="kind"):
        ShardCore.restore(snap, IndexConfig(kind="hnsw"))
    (snap / "slot_item.npy").write_bytes(b"garbage")
    with pytest.raises(SnapshotError, match="corrupt"):
        ShardCore.restore(snap, cfg)


def test_wal_roundtrip_and_torn_tail(tmp_path):
    wal = WriteAheadLog(tmp_path / "w.log")
    assert wal.append({"op": "upsert", "ids": np.array([1])}) == 1
    assert wal.append({"op": "delete", "ids": np.array([1])}) == 2
    with open(tmp_path / "w.log", "ab") as f:
        f.write(b"\x10\x00\x00\x00")  # a crash mid-append
    recs = list(wal.read())
    assert [r["seq"] for r in recs] == [1, 2] and [r["seq"] for r in wal.read(after=1)] == [2]
    assert recs[0]["ids"].dtype == np.array([1]).dtype and recs[1]["prev"] == 1
    assert WriteAheadLog(tmp_path / "w.log").head == 2  # from the log itself
    (tmp_path / "wal.seq").write_text("")  # an empty (unsynced) counter file
    again = WriteAheadLog(tmp_path / "w.log")
    assert again.append({"op": "delete", "ids": np.array([2])}) == 3  # recovered from the log
    assert [r["seq"] for r in again.read()] == [1, 2, 3]  # the torn tail was cut off, not kept


def test_wal_records_are_data_not_code(tmp_path):
    import pickle

    wal = WriteAheadLog(tmp_path / "w.log")
    wal.append(
        {
            "op": "upsert",
            "ids": np.arange(3),
            "vectors": np.ones((3, 2), np.float32),
            "metas": [{"category": "a"}, None, {"attributes": {"x": [1, 2]}}],
        }
    )
    raw = (tmp_path / "w.log").read_bytes()
    assert b"upsert" in raw and pickle.PROTO not in raw[12:14]
    rec = next(wal.read())
    assert rec["vectors"].shape == (3, 2) and rec["vectors"].dtype == np.float32
    assert rec["metas"][2] == {"attributes": {"x": [1, 2]}}


def test_one_sequence_across_logs_of_a_root(tmp_path):
    from recserve.index.wal import SeqCounter

    c = SeqCounter(tmp_path)
    a = WriteAheadLog(tmp_path / "g0" / "shard_0000" / "wal.log", counter=c)
    b = WriteAheadLog(tmp_path / "g1" / "shard_0000" / "wal.log", counter=c)
    assert [a.append({"op": "delete", "ids": np.array([1])}) for _ in range(3)] == [1, 2, 3]
    assert b.append({"op": "delete", "ids": np.array([1])}) == 4  # the new generation continues
    (tmp_path / "wal.seq").unlink()
    assert SeqCounter(tmp_path).next() == 5  # recovered from the logs


def test_export_by_hash_range():
    from recserve.index.hashing import item_hash

    ids, x, metas = _data(n=100)
    core = ShardCore(D, IndexConfig(kind="hnsw"), "t")
    core.upsert(ids, x, metas)
    half = 1 << 31
    a, b = core.export(0, half), core.export(half, 1 << 32)
    assert len(a["ids"]) + len(b["ids"]) == 100
    assert (item_hash(a["ids"]) < half).all()
    other = ShardCore(D, IndexConfig(kind="hnsw"), "o")
    other.load_items(a["ids"], a["vectors"], a["metas"], a["seqs"])
    j = int(np.flatnonzero(ids == a["ids"][0])[0])
    assert other.search(x[j : j + 1], 1)[0][0, 0] == ids[j]

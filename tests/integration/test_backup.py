"""Backup -> wipe -> restore on a stack of its own (a real redis-server): features, offsets and
index come back; RPO and RTO are measured, not estimated."""

import shutil
import threading
import time
import uuid

import numpy as np
import pytest
import redis

from recserve.ops.backup import BackupError, backup, list_backups, restore
from recserve.ops.stack import Stack
from recserve.streaming.aggregator import AggregatorCore, StreamSettings, live_context
from recserve.streaming.eventlog.redis import RedisStreamLog

pytestmark = pytest.mark.integration


def test_backup_wipe_restore_measures_rpo_and_rto(tmp_path):
    from tests.conftest import small_config

    cfg = small_config(tmp_path / "stack")
    st = Stack(cfg)
    st.up(with_ray=False)
    try:
        r = redis.Redis.from_url(cfg.redis_url)
        log = RedisStreamLog(r, partitions=cfg.stream.partitions)
        core = AggregatorCore(r, log, np.arange(100), np.eye(100, dtype=np.float32), StreamSettings())
        core.assign(list(range(cfg.stream.partitions)))
        index_root = tmp_path / "stack" / "index-live-test"
        (index_root / "g0").mkdir(parents=True)
        (index_root / "g0" / "wal.log").write_bytes(b"wal bytes")
        acked: list[tuple[float, str]] = []  # (time Redis acknowledged, event id)
        stop = threading.Event()

        def producer():
            i = 0
            while not stop.is_set():
                batch = [
                    {
                        "event_id": f"bk-{i + j}",
                        "user_id": (i + j) % 40,
                        "item_id": (i + j) % 100,
                        "event_type": "click",
                        "value": 1.0,
                        "ts": int(time.time()),
                    }
                    for j in range(50)
                ]
                log.append(batch)
                now = time.time()
                acked.extend((now, e["event_id"]) for e in batch)
                i += 50
                time.sleep(0.005)

        t = threading.Thread(target=producer)
        t.start()
        time.sleep(0.5)
        core.step()  # features and committed offsets exist
        dest = str(tmp_path / "backups")
        b = backup(cfg, dest, keep=3, log=lambda m: None)
        time.sleep(0.5)  # events after the backup point: lost by design
        stop.set()
        t.join(10)
        ctx_before = live_context(r, 1)
        assert ctx_before is not None and len(list_backups(dest)) == 1
        st.down()
        shutil.rmtree(tmp_path / "stack" / "redis")  # the wipe: Redis's data and the index are gone
        shutil.rmtree(index_root)
        res = restore(cfg, dest, point_in_time=time.time(), log=lambda m: None)
        t_up = time.perf_counter()
        st.up(with_ray=False)
        rto = res["restore_s"] + (time.perf_counter() - t_up)
        r = redis.Redis.from_url(cfg.redis_url)
        present = set()
        for p in range(cfg.stream.partitions):
            present |= {
                e.event["event_id"]
                for e in RedisStreamLog(r, partitions=cfg.stream.partitions).read_after(p, "0-0", 10**6)
            }
        before_point = [eid for ts, eid in acked if ts <= b["point"]]
        lost_before_point = [eid for eid in before_point if eid not in present]
        after_point = [eid for ts, eid in acked if ts > b["point"]]
        # RPO: nothing acknowledged before the backup point is lost; what came after is (by design)
        assert before_point and not lost_before_point, f"{len(lost_before_point)} acknowledged events lost"
        assert after_point and len(present) < len(acked)
        rpo_s = max(0.0, max(ts for ts, eid in acked if eid in present) - b["point"]) if present else None
        assert rpo_s is not None and rpo_s < 1.0
        # features, offsets and the index came back
        assert live_context(r, 1).events == ctx_before.events
        assert {p: o["committed_offset"] for p, o in res["offsets"].items()} == {
            p: o["committed_offset"] for p, o in b["offsets"].items()
        }
        assert (index_root / "g0" / "wal.log").read_bytes() == b"wal bytes"
        assert r.info("persistence")["aof_enabled"] == 1
        assert res["restore_s"] > 0 and rto < 60
        print(f"RPO: 0 events acknowledged before the point lost; RTO {rto:.2f}s (restore {res['restore_s']}s)")
    finally:
        st.down()


def test_restore_refuses_a_running_stack_a_bad_point_and_a_damaged_backup(tmp_path):
    from tests.conftest import small_config

    cfg = small_config(tmp_path / "s2")
    st = Stack(cfg)
    st.up(with_ray=False)
    try:
        redis.Redis.from_url(cfg.redis_url).set("k", uuid.uuid4().hex)
        dest = str(tmp_path / "b2")
        b = backup(cfg, dest, log=lambda m: None)
        with pytest.raises(BackupError, match="running"):
            restore(cfg, dest, log=lambda m: None)
    finally:
        st.down()
    with pytest.raises(BackupError, match="no backup at or before"):
        restore(cfg, dest, point_in_time="2001-01-01T00:00:00Z", log=lambda m: None)
    with pytest.raises(BackupError, match="ISO time"):
        restore(cfg, dest, point_in_time="yesterday-ish", log=lambda m: None)
    with pytest.raises(BackupError, match="holds data"):
        restore(cfg, dest, log=lambda m: None)
    (tmp_path / "b2" / b["name"] / "redis" / "dump.rdb").write_bytes(b"corrupt")
    with pytest.raises(BackupError, match="checksum"):
        restore(cfg, dest, force=True, log=lambda m: None)
    # a manifest that names a path outside the data directory is refused before anything changes
    import json

    man = tmp_path / "b2" / b["name"] / "manifest.json"
    bad = json.loads(man.read_text())
    bad["index_roots"] = ["../../victim"]
    man.write_text(json.dumps(bad))
    (tmp_path / "victim").mkdir()
    with pytest.raises(BackupError, match="not an index-live"):
        restore(cfg, dest, force=True, log=lambda m: None)
    assert (tmp_path / "victim").exists()
    bad["index_roots"], bad["files"] = [], {"../outside": {"sha256": "0"}}
    man.write_text(json.dumps(bad))
    with pytest.raises(BackupError, match="outside the backup"):
        restore(cfg, dest, force=True, log=lambda m: None)

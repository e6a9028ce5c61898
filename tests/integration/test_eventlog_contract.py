"""One contract for every event-log backend: Redis Streams (a real redis-server) and Kafka (the
session's embedded Kafka-protocol broker, or KAFKA_BOOTSTRAP_SERVERS when set)."""

import os
import time
import uuid

import pytest
import redis

from recserve.streaming.eventlog.base import partition_of
from recserve.streaming.eventlog.kafka import KafkaLog
from recserve.streaming.eventlog.redis import RedisStreamLog

pytestmark = pytest.mark.integration
P = 4


@pytest.fixture(params=["redis", "kafka"])
def log(request, redis_url):
    name = uuid.uuid4().hex[:8]
    if request.param == "redis":
        yield RedisStreamLog(redis_url, partitions=P, prefix=f"ev-{name}")
    else:
        boot = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or request.getfixturevalue("kafka_bootstrap")
        lg = KafkaLog(boot, topic=f"ev-{name}", partitions=P, dedup=redis.Redis.from_url(redis_url))
        yield lg
        lg.close()


def _events(n, users=5, prefix="e"):
    return [
        {
            "event_id": f"{prefix}{i}",
            "user_id": i % users,
            "item_id": 100 + i,
            "event_type": "click",
            "value": 1.0,
            "ts": 1_700_000_000 + i,
        }
        for i in range(n)
    ]


def _drain(log, group, consumer, expect, timeout=20):
    got = []
    deadline = time.time() + timeout
    while len(got) < expect and time.time() < deadline:
        got += log.read(group, consumer, list(range(P)), count=500, block_ms=200)
    return got


def test_append_read_in_user_order(log):
    evs = _events(60)
    offsets = log.append(evs)
    assert all(o is not None for o in offsets)
    log.ensure_group("g")
    got = _drain(log, "g", "c1", 60)
    assert sorted(e.event["event_id"] for e in got) == sorted(e["event_id"] for e in evs)
    for e in got:
        assert e.partition == partition_of(e.event["user_id"], P)
    for u in range(5):  # one user's events keep their order
        ts = [e.event["ts"] for e in got if e.event["user_id"] == u]
        assert ts == sorted(ts)


def test_duplicate_event_ids_append_once(log):
    evs = _events(10, prefix="dup")
    first = log.append(evs)
    again = log.append(evs[:5] + _events(3, prefix="new"))
    assert all(first) and again[:5] == [None] * 5 and all(again[5:])
    log.ensure_group("g")
    assert len(_drain(log, "g", "c", 13, timeout=5)) == 13


def test_ack_and_lag(log):
    log.ensure_group("g")
    log.append(_events(20, prefix="lag"))
    deadline = time.time() + 10
    while sum(log.lag("g").values()) < 20 and time.time() < deadline:
        time.sleep(0.2)
    assert sum(log.lag("g").values()) == 20
    got = _drain(log, "g", "c", 20)
    log.ack("g", got)
    assert sum(log.lag("g").values()) == 0


def test_dead_consumers_pending_entries_are_claimed(log):
    log.ensure_group("g")
    log.append(_events(12, prefix="claim"))
    got = _drain(log, "g", "dead", 12)  # delivered to a consumer that dies before acking
    assert len(got) == 12
    time.sleep(0.3)
    taken = []
    for p in range(P):
        taken += log.claim("g", "alive", p, min_idle_ms=200)
    assert sorted(e.event["event_id"] for e in taken) == sorted(e.event["event_id"] for e in got)
    log.ack("g", taken)
    assert sum(log.lag("g").values()) == 0


def test_read_after_many_resumes_from_each_offset(log):
    log.append(_events(40, prefix="ram"))
    got, deadline = [], time.time() + 10
    while len(got) < 40 and time.time() < deadline:
        got = log.read_after_many({p: "" for p in range(P)}, count=1000, block_ms=200)
    assert sorted(e.event["event_id"] for e in got) == sorted(f"ram{i}" for i in range(40))
    # from the middle of each partition on: exactly what follows
    offs, expect = {}, set()
    for p in range(P):
        mine = [e for e in got if e.partition == p]
        offs[p] = mine[len(mine) // 2 - 1].offset if len(mine) > 1 else ""
        expect |= {e.event["event_id"] for e in (mine[len(mine) // 2 :] if len(mine) > 1 else mine)}
    again = log.read_after_many(offs, count=1000, block_ms=200)
    assert {e.event["event_id"] for e in again} == expect
    # nothing new: a blocking read waits, then returns nothing
    last = {p: [e for e in got if e.partition == p][-1].offset for p in range(P) if any(e.partition == p for e in got)}
    t0 = time.monotonic()
    assert log.read_after_many(last, count=10, block_ms=300) == []
    assert time.monotonic() - t0 >= 0.2


def test_unreachable_broker_names_the_setting(redis_url):
    from recserve.ops.procs import free_port
    from recserve.streaming.eventlog import EventLogUnavailable

    with pytest.raises(EventLogUnavailable, match="stream.bootstrap_servers"):
        KafkaLog(
            f"127.0.0.1:{free_port()}", topic="nobody", partitions=2, dedup=redis.Redis.from_url(redis_url), timeout_s=2
        )


def test_a_lost_broker_acknowledges_nothing_and_the_retry_is_not_a_duplicate(redis_url, tmp_path):
    """The broker dies between two batches: the append raises (nothing marked seen), and the
    client's retry of the same event ids, once a broker is back, is appended, not dropped."""
    from recserve.ops.kafka_broker import start_kafka
    from recserve.ops.procs import free_port, stop_pid
    from recserve.streaming.eventlog import EventLogUnavailable

    port = free_port()
    proc = start_kafka(tmp_path / "k1", port)
    r = redis.Redis.from_url(redis_url)
    topic = f"lost-{uuid.uuid4().hex[:6]}"
    lg = KafkaLog(f"127.0.0.1:{port}", topic=topic, partitions=2, dedup=r, timeout_s=3)
    try:
        assert all(lg.append(_events(4, prefix=f"{topic}-a")))
        stop_pid(proc.pid)
        batch = _events(4, prefix=f"{topic}-b")
        with pytest.raises(EventLogUnavailable):
            lg.append(batch)
        assert not any(r.exists(f"{topic}:seen:{e['event_id']}") for e in batch)
        proc = start_kafka(tmp_path / "k2", port)  # a broker again (empty: memory storage)
        lg.close()
        lg = KafkaLog(f"127.0.0.1:{port}", topic=topic, partitions=2, dedup=r, timeout_s=5)
        assert all(o is not None for o in lg.append(batch)), "the retry was taken for a duplicate"
        assert lg.append(batch) == [None] * 4  # and now it is one
    finally:
        lg.close()
        stop_pid(proc.pid)


def test_a_repeated_id_within_one_batch_is_appended_once(log):
    evs = _events(3, prefix="rep")
    offsets = log.append(evs + [dict(evs[1])])
    assert offsets[3] is None and all(offsets[:3])

"""One contract for every event-log backend: Redis Streams always (a real redis-server), Kafka
when KAFKA_BOOTSTRAP_SERVERS points at a broker."""

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
        boot = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not boot:
            pytest.skip("Kafka contract run needs KAFKA_BOOTSTRAP_SERVERS (no broker on this machine)")
        lg = KafkaLog(boot, topic=f"ev-{name}", partitions=P, dedup=redis.Redis.from_url(redis_url))
        yield lg
        lg.close()


def _events(n, users=5, prefix="e"):
    return [{"event_id": f"{prefix}{i}", "user_id": i % users, "item_id": 100 + i, "event_type": "click",
             "value": 1.0, "ts": 1_700_000_000 + i} for i in range(n)]


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
    got = _drain(log, "g", "dead", 12)   # delivered to a consumer that dies before acking
    assert len(got) == 12
    time.sleep(0.3)
    taken = []
    for p in range(P):
        taken += log.claim("g", "alive", p, min_idle_ms=200)
    assert sorted(e.event["event_id"] for e in taken) == sorted(e.event["event_id"] for e in got)
    log.ack("g", taken)
    assert sum(log.lag("g").values()) == 0

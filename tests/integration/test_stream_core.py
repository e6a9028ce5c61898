"""AggregatorCore on a real redis-server, over both event-log backends (Redis Streams, and Kafka on
the session's embedded broker): state and offsets committed together, so a crash between reading
and committing, or two owners of one partition, never loses or double-counts."""

import time
import uuid

import numpy as np
import pytest
import redis

from recserve import keys
from recserve.streaming.aggregator import (
    AggregatorCore,
    LiveContext,
    StreamSettings,
    assignment,
    lag,
    live_context,
    staleness_s,
    trending,
    window_count,
    with_history,
)
from recserve.streaming.eventlog.kafka import KafkaLog
from recserve.streaming.eventlog.redis import RedisStreamLog
from recserve.streaming.supervisor import desired_aggregators

pytestmark = pytest.mark.integration
P = 2
NOW = int(time.time())


@pytest.fixture(params=["redis", "kafka"])
def env(request, redis_url):
    r = redis.Redis.from_url(redis_url)
    tag = uuid.uuid4().hex[:8]
    if request.param == "redis":
        log = RedisStreamLog(r, partitions=P, prefix=f"ev-{tag}")
    else:
        log = KafkaLog(request.getfixturevalue("kafka_bootstrap"), topic=f"ev-{tag}", partitions=P, dedup=r)
        request.addfinalizer(log.close)
    settings = StreamSettings(prefix=f"st-{tag}", bandit_prefix=f"bandit-{tag}", session_len=5)
    ids = np.arange(100, 120)
    vecs = np.eye(20, dtype=np.float32)
    return r, log, settings, ids, vecs


def _events(n, users=4, start=0, etype="click"):
    return [
        {
            "event_id": f"e{start + i}",
            "user_id": (start + i) % users,
            "item_id": 100 + (start + i) % 20,
            "event_type": etype,
            "value": 1.0,
            "ts": NOW - 10 + i % 5,
        }
        for i in range(n)
    ]


def _run(core) -> int:
    """Steps until one finds nothing new (a Kafka fetch may bring one partition at a time)."""
    total = 0
    while n := core.step():
        total += n
    return total


def _item_total(r, s, ids=range(100, 120)):
    return sum(window_count(r, "item", i, "1h", NOW, s.prefix) for i in ids)


def test_fold_context_counters_trending_bandit(env):
    r, log, s, ids, vecs = env
    log.append(_events(40))
    core = AggregatorCore(r, log, ids, vecs, s)
    core.assign(list(range(P)))
    assert _run(core) == 40 and core.step() == 0
    assert _item_total(r, s) == 40
    assert window_count(r, "user", 1, "24h", NOW, s.prefix) == 10
    # the live context keeps the session (its last 5); the user's kept events reach further back, and
    # what a request reads (live_context: both, one MGET) is the longer list with the live vector
    raw = LiveContext.loads(r.get(keys.context(1, s.prefix)))
    assert raw.n == 10 and len(raw.events) == 5
    ctx = live_context(r, 1, s.prefix)
    assert ctx.n == 10 and len(ctx.events) == 10 and ctx.vector() is not None and len(ctx.vector()) == 20
    assert ctx.events[-5:] == raw.events
    top = trending(r, 3, NOW, s.prefix)
    assert len(top) == 3 and top[0][1] == 2.0
    a = float(r.hget(f"{s.bandit_prefix}:params", "a:100"))
    assert a == 1.0 + 2  # prior + two clicks on item 100
    assert lag(r, log, s.prefix) == {0: 0, 1: 0} and staleness_s(r, log, s.prefix) == 0.0


def test_a_users_events_outlive_the_live_contexts_hour(env):
    """stream.history_events: past the live context's TTL (its key gone) a user's events still reach
    the request, the newest `history_events` of them, kept `history_ttl_s`; 0 keeps none."""
    r, log, s, ids, vecs = env
    s.history_events, s.history_ttl_s = 8, 1234
    log.append(_events(40))
    core = AggregatorCore(r, log, ids, vecs, s)
    core.assign(list(range(P)))
    _run(core)
    r.delete(keys.context(1, s.prefix))  # the hour is over
    ctx = live_context(r, 1, s.prefix)
    assert ctx is not None and len(ctx.events) == 8 and ctx.vec is None  # the real-time vector went with the hour
    mine = [[e["item_id"], e["ts"], e["event_type"]] for e in _events(40) if e["user_id"] == 1]
    assert ctx.events == mine[-8:] and 1200 < r.ttl(keys.history(1, s.prefix)) <= 1234
    # new events after the hour: a new live context, the kept events go on from where they were
    log.append(_events(4, start=41))  # users 1..4 % 4: user 1 gets one
    _run(core)
    ctx = live_context(r, 1, s.prefix)
    assert len(LiveContext.loads(r.get(keys.context(1, s.prefix))).events) == 1 and len(ctx.events) == 8
    assert ctx.events[-1][0] == 100 + 41 % 20 and ctx.vec is not None
    off = StreamSettings(prefix=s.prefix + "-off", bandit_prefix=s.bandit_prefix, session_len=5, history_events=0)
    core2 = AggregatorCore(r, RedisStreamLog(r, partitions=P, prefix=s.prefix + "-log"), ids, vecs, off)
    core2.log.append(_events(10))
    core2.assign(list(range(P)))
    _run(core2)
    assert r.get(keys.history(1, off.prefix)) is None and len(live_context(r, 1, off.prefix).events) == 3


def test_with_history_takes_the_longer_list():
    ctx = LiveContext(events=[[3, 30, "view"]], n=3, last_ts=30, vec="v")
    hist = LiveContext(events=[[1, 10, "view"], [2, 20, "view"], [3, 30, "view"]], n=3, last_ts=30)
    assert with_history(ctx, None) is ctx and with_history(None, None) is None
    got = with_history(ctx, hist)
    assert got.events == hist.events and got.vec == "v" and got.last_ts == 30
    assert with_history(None, hist).events == hist.events and with_history(None, hist).vec is None
    short = LiveContext(events=[[3, 30, "view"]], n=1, last_ts=30)  # history_events below session_len
    assert with_history(hist, short) is hist


def test_crash_before_commit_neither_loses_nor_double_counts(env):
    r, log, s, ids, vecs = env
    log.append(_events(30))
    first = AggregatorCore(r, log, ids, vecs, s)
    first.assign([0, 1])
    first._fold([e.event for e in log.read_after(0, "", 100)], 0)  # read + fold, then "killed"
    assert _item_total(r, s) == 0  # nothing applied without the commit
    again = AggregatorCore(r, log, ids, vecs, s)
    again.assign([0, 1])
    _run(again)
    log.append(_events(10, start=30))
    _run(again)
    assert _item_total(r, s) == 40


def test_two_owners_of_one_partition_commit_each_event_once(env):
    r, log, s, ids, vecs = env
    a, b = AggregatorCore(r, log, ids, vecs, s), AggregatorCore(r, log, ids, vecs, s)
    a.assign([0, 1])
    b.assign([0, 1])
    for k in range(5):
        log.append(_events(20, start=20 * k))
        # both read the same offset; the second commit finds the offset moved and applies nothing
        for p in (0, 1):
            off = (r.get(f"{s.prefix}:off:{p}") or b"").decode()
            ea, eb = log.read_after(p, off), log.read_after(p, off)
            ops_a, ops_b = a._fold([e.event for e in ea], p), b._fold([e.event for e in eb], p)
            if ea:
                assert (
                    a._commit(
                        keys=[f"{s.prefix}:off:{p}", f"{s.prefix}:done:{p}"], args=[off, ea[-1].offset, len(ea)] + ops_a
                    )
                    == 1
                )
                assert (
                    b._commit(
                        keys=[f"{s.prefix}:off:{p}", f"{s.prefix}:done:{p}"], args=[off, eb[-1].offset, len(eb)] + ops_b
                    )
                    == 0
                )
    assert _item_total(r, s) == 100
    assert sum(lag(r, log, s.prefix).values()) == 0


def test_lag_and_staleness_grow_while_nobody_consumes(env):
    r, log, s, ids, vecs = env
    log.append(_events(12))
    assert sum(lag(r, log, s.prefix).values()) == 12
    assert staleness_s(r, log, s.prefix, now=time.time() + 5) >= 5


def test_assignment_and_lag_policy():
    assert assignment(8, 3) == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert sorted(p for ps in assignment(8, 5) for p in ps) == list(range(8))
    with pytest.raises(ValueError):
        assignment(8, 0)
    # past 10K lag: one more; under 1K for 10 minutes: one fewer; in between: hold
    assert desired_aggregators(2, 12_000, None, 0, 10_000, 1_000, 600, 8) == (3, None)
    assert desired_aggregators(8, 12_000, None, 0, 10_000, 1_000, 600, 8) == (8, None)
    n, since = desired_aggregators(3, 10, None, 100.0, 10_000, 1_000, 600, 8)
    assert (n, since) == (3, 100.0)
    assert desired_aggregators(3, 10, since, 699.0, 10_000, 1_000, 600, 8)[0] == 3
    assert desired_aggregators(3, 10, since, 700.0, 10_000, 1_000, 600, 8)[0] == 2
    assert desired_aggregators(3, 5_000, since, 700.0, 10_000, 1_000, 600, 8) == (3, None)


def test_the_redis_log_is_trimmed_below_the_committed_offset_and_lag_stays_exact(redis_url):
    r = redis.Redis.from_url(redis_url)
    tag = uuid.uuid4().hex[:8]
    log = RedisStreamLog(r, partitions=P, prefix=f"ev-{tag}")
    s = StreamSettings(prefix=f"st-{tag}", bandit_prefix=f"bandit-{tag}")
    core = AggregatorCore(r, log, None, None, s)
    core.assign(list(range(P)))
    log.append(_events(30))
    assert _run(core) == 30
    log.append(_events(10, start=30))  # not committed yet
    committed = {p: r.get(f"{s.prefix}:off:{p}").decode() for p in range(P)}
    before = sum(r.xlen(log.stream(p)) for p in range(P))
    assert log.trim(committed, retention_s=3600) == 0  # all younger than the retention
    dropped = log.trim(committed, retention_s=0)
    assert dropped == 30 - P  # each partition keeps its committed entry (the read position)
    assert sum(r.xlen(log.stream(p)) for p in range(P)) == before - dropped
    assert sum(lag(r, log, s.prefix).values()) == 10  # the uncommitted ten, exactly
    assert _run(core) == 10 and sum(lag(r, log, s.prefix).values()) == 0

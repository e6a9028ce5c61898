"""Region operations on a real redis-server."""

import time
import uuid

import pytest
import redis

from recserve.ops.region import RegionError, drain, draining, lag, shift, undrain
from recserve.streaming.eventlog.redis import RedisStreamLog
from scripts.regions import REGIONS

pytestmark = pytest.mark.integration


def test_drain_and_undrain(redis_url):
    r = redis.Redis.from_url(redis_url)
    assert draining(r) is None
    st = drain(r, "us-west-2", "maintenance")
    assert draining(r)["region"] == "us-west-2" and st["draining"]
    assert undrain(r) and draining(r) is None and not undrain(r)


def test_shift_shares_sum_to_100_and_refuse_nonsense():
    assert shift({"us-west-2": 1, "us-east-1": 1}, REGIONS) == {"us-west-2": 50, "us-east-1": 50, "eu-west-1": 0}
    assert shift({"us-east-1": 1}, REGIONS)["us-east-1"] == 100
    s = shift({"us-west-2": 1, "us-east-1": 1, "eu-west-1": 1}, REGIONS)
    assert sum(s.values()) == 100
    for bad in ({"mars-1": 1}, {"us-west-2": -1}, {"us-west-2": 0}):
        with pytest.raises(RegionError):
            shift(bad, REGIONS)


def test_lag_counts_what_the_standby_lacks(redis_url, tmp_path):
    from recserve.ops.stack import free_port, start_redis, stop_pid

    port = free_port()
    proc = start_redis(tmp_path / "standby", "127.0.0.1", port)   # the standby region's Redis
    try:
        a, s = redis.Redis.from_url(redis_url), redis.Redis(port=port)
        tag = uuid.uuid4().hex[:6]
        log = RedisStreamLog(a, partitions=2, prefix=f"ev{tag}")
        log.append([{"event_id": f"{tag}-{i}", "user_id": i, "item_id": 1, "event_type": "view",
                     "ts": int(time.time())} for i in range(10)])
        for p in range(2):   # the standby has replicated the first two entries of each partition
            for eid, fields in a.xrange(log.stream(p), count=2):
                s.xadd(log.stream(p), fields, id=eid)
        time.sleep(0.05)
        res = lag(a, s, 2, prefix=f"ev{tag}")
        assert res["events_behind"] == 10 - 4 and res["lag_s"] >= 0.05
        assert lag(a, a, 2, prefix=f"ev{tag}")["events_behind"] == 0
    finally:
        stop_pid(proc.pid)

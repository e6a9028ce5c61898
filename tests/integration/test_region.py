"""Region operations on a real redis-server."""

import time
import uuid

import pytest
import redis

from recserve.ops.region import RegionError, drain, draining, lag, read_regions, shift, undrain
from recserve.streaming.eventlog.redis import RedisStreamLog

ROOT_REGIONS = __import__("pathlib").Path(__file__).resolve().parents[2] / "regions"
REGIONS = read_regions(ROOT_REGIONS)  # the region files: each one's role and share

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
    from recserve.ops.procs import free_port, stop_pid
    from recserve.ops.redis_server import start_redis

    port = free_port()
    proc = start_redis(tmp_path / "standby", "127.0.0.1", port)  # the standby region's Redis
    try:
        a, s = redis.Redis.from_url(redis_url), redis.Redis(port=port)
        tag = uuid.uuid4().hex[:6]
        log = RedisStreamLog(a, partitions=2, prefix=f"ev{tag}")
        log.append(
            [
                {"event_id": f"{tag}-{i}", "user_id": i, "item_id": 1, "event_type": "view", "ts": int(time.time())}
                for i in range(10)
            ]
        )
        for p in range(2):  # the standby has replicated the first two entries of each partition
            for eid, fields in a.xrange(log.stream(p), count=2):
                s.xadd(log.stream(p), fields, id=eid)
        time.sleep(0.05)
        res = lag(a, s, 2, prefix=f"ev{tag}")
        assert res["events_behind"] == 10 - 4 and res["lag_s"] >= 0.05
        assert lag(a, a, 2, prefix=f"ev{tag}")["events_behind"] == 0
    finally:
        stop_pid(proc.pid)


def test_the_standby_follows_an_active_region_by_replication_and_promotion_keeps_what_it_has(tmp_path):
    """Two real redis-servers with passwords: the standby's follows the active's (its own data replaced),
    `region lag --standby` sees it catch up, promotion makes it writable and keeps the events."""
    from recserve.ops.procs import free_port, stop_pid
    from recserve.ops.redis_server import start_redis
    from recserve.ops.region import follow, promote, replication

    pa, ps = free_port(), free_port()
    active_proc = start_redis(tmp_path / "active", "127.0.0.1", pa, password="pw-active")
    standby_proc = start_redis(tmp_path / "standby", "127.0.0.1", ps, password="pw-standby")
    try:
        a = redis.Redis(port=pa, password="pw-active")
        s = redis.Redis(port=ps, password="pw-standby")
        s.set("standby-only", "1")
        log = RedisStreamLog(a, partitions=2)
        log.append(
            [
                {"event_id": f"k/{i}", "user_id": i, "item_id": 1, "event_type": "view", "ts": int(time.time())}
                for i in range(20)
            ]
        )
        follow(s, "127.0.0.1", pa, "pw-active")
        deadline = time.monotonic() + 20
        while replication(s).get("link") != "up" or lag(a, s, 2)["events_behind"]:
            assert time.monotonic() < deadline, (replication(s), lag(a, s, 2))
            time.sleep(0.1)
        assert replication(s)["master"] == f"127.0.0.1:{pa}" and replication(a)["replicas"] == 1
        assert s.get("standby-only") is None  # the active's data replaced the standby's own
        log.append([{"event_id": "k/late", "user_id": 1, "item_id": 2, "event_type": "view", "ts": int(time.time())}])
        deadline = time.monotonic() + 10
        while lag(a, s, 2)["events_behind"]:  # a later event follows
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(redis.ReadOnlyError):  # a follower takes no writes of its own
            s.set("x", "1")
        assert promote(s)["role"] == "master"
        s.set("x", "1")
        assert sum(s.xlen(log.stream(p)) for p in range(2)) == 21  # it kept every event it had
    finally:
        stop_pid(standby_proc.pid)
        stop_pid(active_proc.pid)


def test_one_key_is_made_valid_in_another_regions_redis(redis_url):
    from recserve import keys as K
    from recserve.auth import AuthError, KeyStore, digest

    r1 = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/13")
    r2 = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/14")
    kid, key = KeyStore(r1).create("drill", "recommend,events")
    assert KeyStore(r2).create("drill", "recommend,events", key=key) == (kid, key)
    assert r2.get(K.auth_hash(digest(key))).decode() == kid == r1.get(K.auth_hash(digest(key))).decode()
    with pytest.raises(AuthError, match="not a recserve key"):
        KeyStore(r2).create("x", "recommend", key="rs_nothex_" + "a" * 32)
    assert KeyStore(r1).revoke(kid) and KeyStore(r2).revoke(kid)


def test_region_up_refuses_a_running_region_and_taken_ports_starting_nothing(tmp_path, redis_url):
    import socket

    from typer.testing import CliRunner

    from recserve.cli import app
    from recserve.config import load_config
    from recserve.ops.procs import free_port
    from recserve.ops.region import read_regions, region_config
    from recserve.ops.stack import Stack, StackInfo

    env = {"RECSERVE_DATA_DIR": str(tmp_path / "d"), "RAY_AUTH_MODE": "disabled"}
    # a region whose stack answers (its recorded Redis is alive): already running
    cfg = load_config(environ={}, overrides={"data_dir": str(tmp_path / "d")})
    rc = region_config(cfg, "us-east-1", read_regions(ROOT_REGIONS))
    Stack(rc).data_dir.mkdir(parents=True)
    Stack(rc)._write_state(StackInfo(redis_url=redis_url, ray_address=None, dashboard_url=None))
    res = CliRunner().invoke(app, ["region", "up", "us-east-1"], env=env)
    assert res.exit_code == 2 and "region us-east-1 is already running" in res.output
    # a region whose port something else holds
    base = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", base + 10))  # us-west-2's Redis: the base port + 10
        held.listen()
        res = CliRunner().invoke(app, ["region", "up", "us-west-2"], env={**env, "RECSERVE_REDIS__PORT": str(base)})
    assert res.exit_code == 2 and "are taken by something else: nothing was started" in res.output
    assert f"ports [{base + 10}" in res.output
    assert not (tmp_path / "d" / "us-west-2").exists() or not any((tmp_path / "d" / "us-west-2").iterdir())

"""Mirroring the event log between two regions (recserve.ops.replication) on a real redis-server:
two databases stand for the two regions' Redis."""

import time

import pytest
import redis

from recserve.ops.procs import free_port
from recserve.ops.replication import EventMirror
from recserve.streaming.eventlog.redis import RedisStreamLog

pytestmark = pytest.mark.integration


def _region(url: str, db: int):
    r = redis.Redis.from_url(url.rsplit("/", 1)[0] + f"/{db}")
    r.flushdb()
    return r, RedisStreamLog(r, partitions=4)


def _events(n: int, tag: str, user0: int = 0) -> list[dict]:
    return [
        {
            "event_id": f"k1/{tag}-{i}",
            "user_id": user0 + i % 7,
            "item_id": i,
            "event_type": "view",
            "value": 1.0,
            "ts": int(time.time()),
        }
        for i in range(n)
    ]


def _all(log) -> list[dict]:
    return [e.event for p in range(log.partitions) for e in log.read_after(p, "", 100_000)]


def test_the_mirror_is_idempotent_and_never_sends_an_event_back(redis_url):
    ra, a = _region(redis_url, 11)
    rb, b = _region(redis_url, 12)
    a.append(_events(50, "a"))
    b.append(_events(20, "b", user0=100))
    ab = EventMirror(a, b, rb, "us-west-2", "us-east-1")
    ba = EventMirror(b, a, ra, "us-east-1", "us-west-2")
    assert ab.catch_up() == 50 and ba.catch_up() == 70  # b holds its 20 and the 50 mirrored in
    assert ba.skipped == 50  # ...which it does not send back
    ids_a = sorted(e["event_id"] for e in _all(a))
    ids_b = sorted(e["event_id"] for e in _all(b))
    assert ids_a == ids_b and len(ids_a) == 70 and len(set(ids_a)) == 70
    # the same events again (a mirror that died before writing its cursors): counted once
    rb.delete(ab.key)
    assert ab.catch_up() == 70 and ab.duplicates == 50 and ab.skipped == 20 and len(_all(b)) == 70
    # a client that retried an event at the other region: it arrives twice, it counts once
    again = _events(1, "a")
    assert b.append(again) == [None]
    # an event without an id gets one from its place, so a repeat of it is dropped too
    a.append([{"user_id": 3, "item_id": 9, "event_type": "click", "value": 1.0, "ts": int(time.time())}])
    assert ab.catch_up() == 1 and len(_all(b)) == 71
    rb.delete(ab.key)
    ab.catch_up()
    assert len(_all(b)) == 71
    assert all(v["events"] == 0 for v in ab.lag().values())


def test_the_mirror_catches_up_after_a_partition_between_the_regions(redis_url):
    ra, a = _region(redis_url, 13)
    rb, b = _region(redis_url, 14)
    ab = EventMirror(a, b, rb, "us-west-2", "us-east-1")
    a.append(_events(30, "before"))
    assert ab.catch_up() == 30
    # the partition: the other region's Redis does not answer; events go on being acknowledged here
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    cut = EventMirror(a, RedisStreamLog(dead, partitions=4), dead, "us-west-2", "us-east-1")
    a.append(_events(40, "during"))
    with pytest.raises(redis.ConnectionError):
        cut.step()
    lag = ab.lag()
    assert sum(v["events"] for v in lag.values()) == 40 and max(v["seconds"] for v in lag.values()) >= 0
    # the operator's view: `recserve region lag --mirror` each way
    import json

    from typer.testing import CliRunner

    from recserve.cli import app

    base = redis_url.rsplit("/", 1)[0]
    res = CliRunner().invoke(
        app,
        ["region", "lag", "--mirror", f"us-west-2={base}/13", "--mirror", f"us-east-1={base}/14"],
        env={"RECSERVE_STREAM__PARTITIONS": "4"},
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["us-west-2 -> us-east-1"]["events"] == 40 and out["us-east-1 -> us-west-2"]["events"] == 0
    # healed: everything acknowledged during the partition arrives, once
    assert ab.catch_up() == 40
    got = [e["event_id"] for e in _all(b)]
    assert len(got) == 70 == len(set(got))
    assert sum(v["events"] for v in ab.lag().values()) == 0


def test_api_keys_are_made_valid_in_the_other_region_and_a_revocation_wins(redis_url):
    from recserve import keys as K
    from recserve.auth import KeyStore, digest

    ra, a = _region(redis_url, 15)
    rb, b = _region(redis_url, 9)
    ab, ba = EventMirror(a, b, rb, "us-west-2", "us-east-1"), EventMirror(b, a, ra, "us-east-1", "us-west-2")
    kid, key = KeyStore(ra).create("web", "recommend,events")
    assert ab.sync_keys() == 1 and ab.sync_keys() == 0  # merged once; nothing new since
    assert rb.get(K.auth_hash(digest(key))).decode() == kid  # the key is valid in the other region
    assert ba.sync_keys() == 0  # and sending it back changes nothing
    assert KeyStore(rb).revoke(kid)  # revoked in the other region...
    assert ba.sync_keys() == 1
    assert ra.get(K.auth_hash(digest(key))) is None  # ...is refused here too
    assert ab.sync_keys() == 0  # a revocation is not undone by the merge
    assert rb.get(K.auth_hash(digest(key))) is None and KeyStore(rb).list()[0]["revoked"]


def test_the_replicator_actor_mirrors_both_ways_and_a_restarted_one_resumes(stack, redis_url):
    """Two Replicator actors (one per direction) on the session's Ray; one killed and started again
    carries on from its cursors: every event in both regions, once."""
    import ray

    from actors.replicator import Replicator

    ra, a = _region(redis_url, 9)
    rb, b = _region(redis_url, 10)
    base = redis_url.rsplit("/", 1)[0]
    A = {"region": "us-west-2", "redis_url": f"{base}/9", "partitions": 4}
    B = {"region": "us-east-1", "redis_url": f"{base}/10", "partitions": 4}
    ab, ba = Replicator.remote(A, B), Replicator.remote(B, A)

    def settled(n: int) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len(_all(a)) == n and len(_all(b)) == n:
                return True
            time.sleep(0.2)
        return False

    try:
        a.append(_events(25, "a"))
        b.append(_events(15, "b", user0=50))
        assert settled(40), (len(_all(a)), len(_all(b)))
        ray.kill(ab, no_restart=True)
        # ray.kill is asynchronous: wait until the actor is really gone before writing behind it
        with pytest.raises(ray.exceptions.RayActorError):
            for _ in range(100):
                ray.get(ab.stats.remote(), timeout=10)
                time.sleep(0.1)
        a.append(_events(10, "a-while-down"))
        time.sleep(1.0)
        assert len(_all(b)) == 40  # nobody mirrors that direction now
        ab = Replicator.remote(A, B)  # a new one reads the cursors from us-east-1's Redis
        assert settled(50)
        ids = [e["event_id"] for e in _all(b)]
        assert len(ids) == len(set(ids)) == 50
        st = ray.get(ab.stats.remote())
        assert st["mirrored"] == 10 and st["from"] == "us-west-2"
        assert all(v["events"] == 0 for v in ray.get(ab.lag.remote()).values())
    finally:
        for actor in (ab, ba):
            ray.kill(actor, no_restart=True)

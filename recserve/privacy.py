"""Forgetting a user (a privacy request): `DELETE /v1/users/{id}` (admin scope) calls `forget`.

  1. a tombstone first: `users:forgotten` maps the user to the moment of forgetting. Aggregators
     skip the user's events stamped up to then (on Kafka, whose records cannot be deleted, that is
     what hides them; a user who comes back later starts afresh); offline jobs drop the same
     events from their training data (`drop_forgotten`), so the next model leaves the user out.
  2. the stores: the live context, the per-user window counters, the bandit's logged impressions
     of the user, and the user's entries of the Redis event log that the aggregators already
     committed (counted as trimmed, so the lag stays exact; later ones are skipped when read and
     trimmed with the retention).
  3. every router replica drops the user's cached answers and last personalized list (a `!<user>`
     on the invalidation channel).
The stores are swept twice, a second apart: an aggregator batch folded just before the tombstone
was written cannot bring the context back."""

from __future__ import annotations

import json
import time

from recserve import keys

SWEEP_AGAIN_S = 1.0


def tombstones(client) -> dict[int, float]:
    """Every forgotten user and when (epoch seconds)."""
    return {int(k): float(v) for k, v in client.hgetall(keys.FORGOTTEN).items()}


def forget(client, log, user_id: int, stream_prefix: str = keys.STREAM, bandit_prefix: str = keys.BANDIT,
           sweep_again_s: float = SWEEP_AGAIN_S) -> dict:
    """Forget `user_id` everywhere (a synchronous Redis client; `log` the application's event log).
    Returns what was removed from each store."""
    u = int(user_id)
    at = time.time()
    client.hset(keys.FORGOTTEN, str(u), f"{at:.3f}")
    out = _sweep(client, u, stream_prefix)
    out["impressions"] = _drop_impressions(client, u, bandit_prefix)
    out["log_entries"] = _drop_log_entries(client, log, u, stream_prefix)
    client.publish(keys.invalidate_channel(stream_prefix, keys.db_of(client)), f"!{u}")
    if sweep_again_s:
        time.sleep(sweep_again_s)
        again = sweep_again(client, u, stream_prefix)
        out = {k: v + again.get(k, 0) for k, v in out.items()}
    out["forgotten_at"] = round(at, 3)
    return out


def sweep_again(client, user_id: int, stream_prefix: str = keys.STREAM) -> dict:
    """The second sweep (a second after `forget`): what an aggregator batch in flight wrote back."""
    out = _sweep(client, int(user_id), stream_prefix)
    client.publish(keys.invalidate_channel(stream_prefix, keys.db_of(client)), f"!{int(user_id)}")
    return out


def _sweep(client, u: int, prefix: str) -> dict:
    n_ctx = int(client.delete(keys.context(u, prefix)))
    n_cnt = 0
    for k in client.scan_iter(match=keys.stream_key("user", "*", prefix=prefix), count=1000):
        n_cnt += int(client.hdel(k, str(u)))
    return {"context": n_ctx, "counters": n_cnt}


def _drop_impressions(client, u: int, prefix: str) -> int:
    key, start, gone = keys.bandit_impressions(prefix), "-", 0
    while True:
        rows = client.xrange(key, min=start, max="+", count=5000)
        if not rows:
            return gone
        mine = [eid for eid, f in rows if f.get(b"user_id") == str(u).encode()]
        if mine:
            gone += int(client.xdel(key, *mine))
        last = rows[-1][0].decode()
        start = "(" + last
        if len(rows) < 5000:
            return gone


def _drop_log_entries(client, log, u: int, prefix: str) -> int:
    """The user's entries of the Redis event log up to the aggregators' committed offset."""
    from recserve.streaming.eventlog.base import partition_of
    from recserve.streaming.eventlog.redis import RedisStreamLog

    if not isinstance(log, RedisStreamLog):
        return 0      # a Kafka record cannot be deleted: the tombstone hides it
    p = partition_of(u, log.partitions)
    off = client.get(keys.committed_offset(p, prefix))
    if not off:
        return 0
    off = off.decode()
    stream, start, gone = log.stream(p), "-", 0
    while True:
        rows = client.xrange(stream, min=start, max=off, count=5000)
        mine = []
        for eid, f in rows:
            try:
                if int(json.loads(f[b"e"]).get("user_id", -1)) == u:
                    mine.append(eid)
            except (KeyError, ValueError, TypeError, AttributeError):
                continue
        if mine:
            pipe = client.pipeline(transaction=True)
            pipe.xdel(stream, *mine)
            pipe.incrby(log.trimmed_key(p), len(mine))
            gone += int(pipe.execute()[0])
        if len(rows) < 5000:
            return gone
        start = "(" + rows[-1][0].decode()


def drop_forgotten(events, gone: dict[int, float]):
    """The events (a DataFrame with user_id and ts) without those of forgotten users stamped up to
    their forgetting."""
    if not gone or events.empty:
        return events
    import numpy as np

    at = events["user_id"].map(gone)
    return events[~(at.notna() & (events["ts"].to_numpy(dtype=np.float64) <= at.fillna(0).to_numpy()))]


def forgotten_for_training(redis_url: str, log=print) -> dict[int, float]:
    """The tombstones an offline job honours; a Redis it cannot reach is said, not hidden."""
    import redis

    try:
        r = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        try:
            return tombstones(r)
        finally:
            r.close()
    except redis.RedisError as e:
        log(f"warning: the forgotten-user list at {redis_url} cannot be read ({type(e).__name__}); training on "
            f"the dataset as it is (forgotten users would be included: run with Redis up)")
        return {}

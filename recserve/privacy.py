"""Forgetting a user (a privacy request): `DELETE /v1/users/{id}` (admin scope) calls `forget`.

  1. a tombstone first: `users:forgotten` maps the user to the moment of forgetting. Aggregators
     skip the user's events stamped up to then (on Kafka, whose records cannot be deleted, that is
     what hides them; a user who comes back later starts afresh); offline jobs drop the same
     events from their training data (`drop_forgotten`), so the next model leaves the user out.
  2. the stores: the live context, the per-user window counters, the bandit's logged impressions
     of the user, and the user's entries of the Redis event log that the aggregators already
     committed (counted as trimmed, so the lag stays exact; later ones are skipped when read and
     trimmed with the retention).
  3. every ingress replica drops the user's cached answers and last personalized list (a `!<user>`
     on the invalidation channel).
The stores are swept twice, a second apart (`forget`, then `sweep_again`): an aggregator batch
folded just before the tombstone was written cannot bring the context back."""

from __future__ import annotations

import json
import time

from recserve import keys
from recserve.redis_client import connect

SWEEP_AGAIN_S = 1.0


def tombstones(client) -> dict[int, float]:
    """Every forgotten user and when (epoch seconds)."""
    return {int(k): float(v) for k, v in client.hgetall(keys.FORGOTTEN).items()}


def forget(client, log, user_id: int, stream_prefix: str = keys.STREAM, bandit_prefix: str = keys.BANDIT) -> dict:
    """Forget `user_id` everywhere (a synchronous Redis client; `log` the application's event log).
    Returns what was removed from each store. The caller runs `sweep_again` SWEEP_AGAIN_S later."""
    u = int(user_id)
    at = time.time()
    client.hset(keys.FORGOTTEN, str(u), f"{at:.3f}")
    out = _sweep(client, u, stream_prefix)
    from recserve.featurestore import forget_user

    out["feature_store"] = forget_user(client, u)  # the user's state in every version's feature store
    out["impressions"] = _xdel_where(
        client, keys.bandit_impressions(bandit_prefix), "+", lambda f: f.get(b"user_id") == str(u).encode()
    )
    out["log_entries"] = _drop_log_entries(client, log, u, stream_prefix)
    client.publish(keys.invalidate_channel(stream_prefix, keys.db_of(client)), f"!{u}")
    out["forgotten_at"] = round(at, 3)
    return out


def sweep_again(client, user_id: int, stream_prefix: str = keys.STREAM) -> dict:
    """The second sweep (a second after `forget`): what an aggregator batch in flight wrote back."""
    out = _sweep(client, int(user_id), stream_prefix)
    client.publish(keys.invalidate_channel(stream_prefix, keys.db_of(client)), f"!{int(user_id)}")
    return out


def _sweep(client, u: int, prefix: str) -> dict:
    n_ctx = int(client.delete(keys.context(u, prefix), keys.history(u, prefix)))
    n_cnt = 0
    for k in client.scan_iter(match=keys.stream_key("user", "*", prefix=prefix), count=1000):
        n_cnt += int(client.hdel(k, str(u)))
    return {"context": n_ctx, "counters": n_cnt}


def _xdel_where(client, stream: str, max_id: str, mine, counter: str | None = None, page: int = 5000) -> int:
    """Delete the entries of `stream` up to `max_id` whose fields `mine` accepts (adding how many to
    `counter` in the same transaction); returns how many went."""
    start, gone = "-", 0
    while True:
        rows = client.xrange(stream, min=start, max=max_id, count=page)
        ids = [eid for eid, f in rows if mine(f)]
        if ids:
            pipe = client.pipeline(transaction=True)
            pipe.xdel(stream, *ids)
            if counter:
                pipe.incrby(counter, len(ids))
            gone += int(pipe.execute()[0])
        if len(rows) < page:
            return gone
        start = "(" + rows[-1][0].decode()


def _drop_log_entries(client, log, u: int, prefix: str) -> int:
    """The user's entries of the Redis event log up to the aggregators' committed offset (counted
    as trimmed, so length-based figures such as the lag stay exact)."""
    from recserve.streaming.eventlog.base import partition_of
    from recserve.streaming.eventlog.redis import RedisStreamLog

    if not isinstance(log, RedisStreamLog):
        return 0  # a Kafka record cannot be deleted: the tombstone hides it
    p = partition_of(u, log.partitions)
    off = client.get(keys.committed_offset(p, prefix))
    if not off:
        return 0

    def mine(f) -> bool:
        try:
            return int(json.loads(f[b"e"]).get("user_id", -1)) == u
        except (KeyError, ValueError, TypeError, AttributeError):
            return False

    return _xdel_where(client, log.stream(p), off.decode(), mine, log.trimmed_key(p))


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

    from recserve.config import masked_url

    try:
        r = connect(redis_url, connect_timeout=2, timeout=5)
        try:
            return tombstones(r)
        finally:
            r.close()
    except redis.RedisError as e:
        log(
            f"warning: the forgotten-user list at {masked_url(redis_url)} cannot be read ({type(e).__name__}); training on "
            f"the dataset as it is (forgotten users would be included: run with Redis up)"
        )
        return {}

"""Every Redis key and channel name recserve uses, in one place. Each function takes the prefix
its owner was configured with (tests give their own, so they never share state).

  events:<p>                  the event log's stream of partition p (RedisStreamLog)
  events:seen:<event id>      an event id already appended (deduplication, with a TTL)
  events:trimmed:<p>          entries of partition p the supervisor trimmed (they still count as appended)
  events:appended:<p>         records of partition p the Kafka broker acknowledged (KafkaLog: lag)
  st:off:<p>                  an aggregator's committed offset (stream entry id) of partition p
  st:done:<p>                 events committed from partition p (lag = stream length - done)
  st:ts:<p>                   event time and wall time of the last commit (staleness)
  st:ctx:<user>               the user's live context (JSON: last N events, count, last ts, vector)
  st:item:<w>:<bucket>        hash item -> count in that bucket of window w (1h, 24h, 7d)
  st:user:<w>:<bucket>        hash user -> count
  st:trend:<bucket>           sorted set item -> count per 5-minute bucket (trending = the last hour)
  st:trend:tmp:<ns>           a scratch union of trend buckets (deleted at once)
  st:assign:<aggregator>      the partitions an aggregator owns (restart adopts them)
  st:supervisor:<name>        the stream supervisor's aggregator count (a restarted one adopts them)
  st:supervisor:<name>:apps   the applications using that stream (the last one gone stops it)
  st:watch                    the supervisor's report each second: lag, staleness, aggregators
  st:invalidate[:db<n>]       channel: users whose events an aggregator folded (ingress replicas drop their caches);
                              `!<user>`: a forgotten user. Suffixed by the database unless it is 0
  bandit:params               hash a:<item> / b:<item>: the bandit's Beta posteriors
  bandit:impressions          stream of shown slates with their propensities (off-policy evaluation)
  bandit:rewards              stream of feedback: request id, item, reward (off-policy evaluation)
  exp:active                  the running experiment (JSON: name, its config, when it started)
  exp:<name>:stats            hash <arm>:<figure> -> sum: answers, shown, feedback, clicks, reward, reward_sq
  exp:<name>:stopped          hash arm -> JSON why and when the guardrail (or an operator) stopped it
  retrain:lock                the running retrain's run id (SET NX, a TTL its heartbeat renews: one run at a time)
  retrain:status              JSON: the last retrain's run, stage, state (running, done, failed), why, what it made
  retrain:schedule            JSON: the schedule's last submission (when, the job's id, or why it failed)
  rollout:state               JSON: the candidate generation rolled out as a canary (recserve.generations)
  region:drain                this region is draining (readiness answers 503)
  users:forgotten             hash user -> when they were forgotten (DELETE /v1/users/{id}; recserve.privacy)
  catalogue:changes           stream of catalogue writes (PUT / DELETE /v1/items) the lake's sink drains
  catalogue:items             hash item -> JSON (category, title, attributes, ts): the catalogue before a
                              generation is trained (recserve.serving.cold)
  catalogue:newest            sorted set item -> when it was added (the same)
  fs:<fid>:u:<user>           a user's state in an embeddings version's feature store (recserve.featurestore:
                              vector, last items, history, category counts, seen items; binary)
  fs:<fid>:ready              JSON: that version's users are all written (how many, when)
  fs:<fid>:lock               the replica or job writing them (SET NX with a TTL)
  fs:ids                      hash fid -> JSON (registry, embeddings version, users, when): what forgetting sweeps
  auth:ids                    set of API key ids
  auth:key:<id>               hash: an API key's name, scopes, quota overrides, created, revoked, sha256
  auth:hash:<sha256>          the key id whose secret hashes to this (deleted on revoke)
  auth:gen                    bumped on every create or revoke (ingress replicas forget looked-up keys)
"""

from __future__ import annotations

EVENTS = "events"
STREAM = "st"
BANDIT = "bandit"
REGION_DRAIN = "region:drain"
FORGOTTEN = "users:forgotten"
CATALOGUE_CHANGES = "catalogue:changes"
AUTH_IDS = "auth:ids"
AUTH_GEN = "auth:gen"


def auth_key(kid: str) -> str:
    return f"auth:key:{kid}"


def auth_hash(sha: str) -> str:
    return f"auth:hash:{sha}"


def event_stream(p: int, prefix: str = EVENTS) -> str:
    return f"{prefix}:{p}"


def event_seen(prefix: str = EVENTS) -> str:
    """The dedup keys' common start; the event id follows."""
    return f"{prefix}:seen:"


def event_trimmed(p: int, prefix: str = EVENTS) -> str:
    return f"{prefix}:trimmed:{p}"


def event_appended(p: int, prefix: str = EVENTS) -> str:
    return f"{prefix}:appended:{p}"


def stream_key(*parts, prefix: str = STREAM) -> str:
    """An aggregator key: stream_key("off", 3) -> st:off:3."""
    return ":".join([prefix, *map(str, parts)])


def committed_offset(p: int, prefix: str = STREAM) -> str:
    return stream_key("off", p, prefix=prefix)


def committed_count(p: int, prefix: str = STREAM) -> str:
    return stream_key("done", p, prefix=prefix)


def context(user_id: int, prefix: str = STREAM) -> str:
    return stream_key("ctx", int(user_id), prefix=prefix)


def history(user_id: int, prefix: str = STREAM) -> str:
    """A user's events through the stream beyond the live context's hour (the last
    `stream.history_events`, kept `stream.history_ttl_s`): what the feature store's trained state
    lacks until the next generation is trained on them."""
    return stream_key("hist", int(user_id), prefix=prefix)


def window(kind: str, w: str, bucket: int, prefix: str = STREAM) -> str:
    return stream_key(kind, w, bucket, prefix=prefix)


def trend(bucket: int, prefix: str = STREAM) -> str:
    return stream_key("trend", bucket, prefix=prefix)


def assignment(aggregator: str, prefix: str = STREAM) -> str:
    return stream_key("assign", aggregator, prefix=prefix)


def invalidate_channel(prefix: str = STREAM, db: int = 0) -> str:
    """Pub/sub channels are server-wide, not per database: an application on another database of
    the same Redis gets a channel of its own (its users' invalidations and forgettings stay its own)."""
    return stream_key("invalidate", prefix=prefix) + (f":db{db}" if db else "")


def db_of(client) -> int:
    """The database number a redis-py client (sync or asyncio) talks to."""
    return int(client.connection_pool.connection_kwargs.get("db") or 0)


def bandit_params(prefix: str = BANDIT) -> str:
    return f"{prefix}:params"


def bandit_impressions(prefix: str = BANDIT) -> str:
    return f"{prefix}:impressions"


def bandit_rewards(prefix: str = BANDIT) -> str:
    return f"{prefix}:rewards"


EXPERIMENT_ACTIVE = "exp:active"
RETRAIN_LOCK = "retrain:lock"
RETRAIN_STATUS = "retrain:status"
ROLLOUT_STATE = "rollout:state"


def experiment_stats(name: str) -> str:
    return f"exp:{name}:stats"


def experiment_stopped(name: str) -> str:
    return f"exp:{name}:stopped"


def catalogue_changes() -> str:
    """The catalogue's changelog stream (recserve.lake.sink drains it into the lake)."""
    return CATALOGUE_CHANGES


def catalogue_items() -> str:
    return "catalogue:items"


def catalogue_newest() -> str:
    return "catalogue:newest"


FEATURE_IDS = "fs:ids"


def user_state(fid: str, user_id: int) -> str:
    """A user's state in the feature store of the embeddings version whose features id is `fid`."""
    return f"fs:{fid}:u:{int(user_id)}"


def user_states_ready(fid: str) -> str:
    return f"fs:{fid}:ready"


def user_states_lock(fid: str) -> str:
    return f"fs:{fid}:lock"

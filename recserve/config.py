"""One config file (`recserve.yaml`), validated by pydantic, with `RECSERVE_*` overrides.

Environment overrides use `__` between nesting levels:
`RECSERVE_REDIS__PORT=6400` sets `redis.port`, `RECSERVE_DATA_DIR=/tmp/x` sets `data_dir`.
A wrong value fails at load time with the key's dotted name in the message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "RECSERVE_"
DEFAULT_CONFIG_NAME = "recserve.yaml"


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RedisConfig(_Strict):
    url: str | None = Field(None, description="external Redis (redis://host:port/db); None = embedded")
    host: str = "127.0.0.1"
    port: int = Field(6390, ge=1, le=65535)
    appendfsync: Literal["everysec", "always", "no"] = "always"  # an acknowledged write survives a host crash
    maxmemory_mb: int = Field(0, ge=0, description="0 = no limit")
    password: str | None = Field(
        None,
        description="Redis AUTH (requirepass). Unset: $REDIS_PASSWORD, else the file "
        "$REDIS_PASSWORD_FILE names, else for the embedded Redis the one `recserve up` "
        "generates into <data_dir>/redis.password (mode 0600). Put into redis.url when "
        "that URL carries none",
    )


class RayConfig(_Strict):
    address: str | None = Field(None, description="existing cluster; None = the stack's local head")
    gcs_port: int = Field(6389, ge=1, le=65535)
    dashboard_port: int = Field(8265, ge=1, le=65535)
    num_cpus: int | None = Field(None, ge=1)
    object_store_mb: int = Field(1024, ge=78)


class RegistryConfig(_Strict):
    uri: str | None = Field(None, description="local path or pyarrow.fs URI; None = <data_dir>/registry")
    keep: int = Field(10, ge=1)


class WorldConfig(_Strict):
    seed: int = 42
    n_users: int = Field(2000, ge=1)
    n_items: int = Field(1000, ge=2)
    n_categories: int = Field(20, ge=1)
    latent_dim: int = Field(16, ge=2)
    events_per_user: float = Field(40.0, gt=0)
    zipf_a: float = Field(1.1, gt=0)
    drift: float = Field(0.5, ge=0, le=1, description="how far interests move over a user's life")
    users_per_block: int = Field(5000, ge=1)
    start_ts: int = 1_700_000_000
    days: float = Field(60.0, gt=0)


class EmbeddingConfig(_Strict):
    dim: int = Field(64, ge=2, le=1024)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(4096, ge=1)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(3e-3, ge=0)
    negatives: int = Field(8, ge=1)
    loss: Literal["bpr", "sampled_softmax"] = "bpr"
    temperature: float = Field(0.1, gt=0)
    seed: int = 0


class IndexConfig(_Strict):
    num_shards: int = Field(4, ge=1, le=1024)
    kind: Literal["flat", "hnsw", "ivfpq"] = "hnsw"
    metric: Literal["ip", "l2"] = "ip"
    storage: Literal["fp32", "fp16", "sq8"] = "fp32"
    hnsw_m: int = Field(32, ge=4)
    ef_construction: int = Field(200, ge=8)
    ef_search: int = Field(100, ge=1)
    ivf_nlist: int = Field(256, ge=1)
    pq_m: int = Field(16, ge=1)
    nprobe: int = Field(16, ge=1)


class RankerConfig(_Strict):
    candidates: int = Field(200, ge=10)
    hidden: int = Field(64, ge=4)
    ensemble: int = Field(5, ge=1, description="MLPs trained with different seeds; scores averaged")
    epochs: int = Field(30, ge=1, description="at most; how many is measured on held-out lists (validation)")
    validation: float = Field(
        0.2,
        ge=0,
        le=0.5,
        description="share of the training lists held out (k-fold, "
        "k = 1 / validation) to find the epoch count "
        "(0: always `epochs`)",
    )
    lr: float = Field(0.003, gt=0)
    batch_size: int = Field(2048, ge=1)
    session_len: int = Field(20, ge=1, description="last N events that make the session context")
    session_items: int = Field(
        5,
        ge=1,
        le=200,
        description="the retrieval query folds in the user's last N items (recserve.ranking.content.fold_in)...",
    )
    session_weight: float = Field(
        0.7, ge=0, le=1, description="...with this share against the trained user vector (0: the user vector alone)"
    )
    trending_window_s: int = Field(7 * 86400, ge=1)
    seed: int = 0


class ServeConfig(_Strict):
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    index_replicas: int = Field(1, ge=1, le=8, description="replicas per vector-index shard")
    index_placement: Literal["auto", "router", "actors"] = Field(
        "auto",
        description="where the index shards are searched: router = in the ingress process (no actor hop; one "
        "ingress replica), actors = the VectorShard actors (the scale-out path, shared by several ingress "
        "replicas), auto = router when the ingress runs as one replica and the index's files are at most "
        "index_router_max_mb, else actors",
    )
    index_router_max_mb: float = Field(
        256.0, ge=0, description="auto placement: the largest index (MB of shard files) searched in the ingress"
    )
    user_states: int = Field(
        50_000,
        ge=0,
        description="recent users' feature-store states a replica keeps decoded (an LRU: its only "
        "state sized by users); those users are still served from it at level 2 while the feature store is away",
    )
    index_root: str | None = Field(
        None,
        description="the live index's write-ahead logs and snapshots; null = "
        "<data_dir>/index-live-<app>. Shared storage (NFS...) on a multi-node cluster, so "
        "a shard restarted on another node finds its WAL and snapshots",
    )
    shard_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per index shard actor, e.g. {index: 1} on the cluster's state pool",
    )
    bandit_share: float = Field(0.2, ge=0, le=1, description="share of each list given to exploration")
    bandit_uniform: float = Field(
        0.1,
        ge=0,
        le=1,
        description="share of slates whose exploration places are "
        "drawn uniformly instead of by Thompson sampling: every candidate keeps a chance "
        "to be shown, which off-policy evaluation of other policies needs",
    )
    ranker_quantize: bool = Field(False, description="INT8 dynamic quantisation of the ranker on CPU")
    ranker_dtype: str = Field("float32", pattern="^(float32|float16|bfloat16)$", description="ranker dtype on GPU")
    ranker_num_gpus: float = Field(0.0, ge=0, description="GPUs per ranker replica (fractions allowed)")
    cache_ttl_s: float = Field(600.0, ge=1, description="L1 response cache TTL (the seed's 5-15 min)")
    affinity: bool = Field(
        True,
        description="route a user's requests (header x-session-id: <user_id>) to one "
        "ingress replica by consistent hashing",
    )
    ingress_replicas: int = Field(1, ge=1, le=64, description="ingress replicas (without autoscaling)")
    hop_replicas: int = Field(
        2,
        ge=1,
        le=64,
        description="replicas of the Ranker and Bandit deployments where they run as deployments of their own "
        "(the cluster topology; without autoscaling): with two, a replica killed costs the calls it held, its "
        "handle sending the next ones to the other while Serve replaces it",
    )
    hop_health_check_s: float = Field(
        2.0,
        gt=0,
        description="how often Serve checks a Ranker, Bandit or Explainer replica (Serve's default is 10 s): a dead "
        "one is replaced that much sooner",
    )
    deadline_ms: float = Field(
        80.0,
        gt=0,
        description="request budget at the origin (the seed's 80 ms): each hop "
        "gets what is left; past it the answer degrades",
    )
    explainer_budget_ms: float = Field(300.0, gt=0, description="most the explainer may take (the seed's 300 ms)")
    breaker_failure_rate: float = Field(0.5, gt=0, le=1, description="circuit breakers: open at this failure share")
    breaker_min_failures: int = Field(10, ge=1, description="...with at least this many failures in the window")
    breaker_window_s: float = Field(30.0, gt=0)
    breaker_open_s: float = Field(30.0, gt=0, description="how long an open breaker stays open (at most)")
    breaker_first_open_s: float = Field(
        2.0,
        gt=0,
        description="an open breaker's first opening; each reopening before it closes lasts twice as long, "
        "up to breaker_open_s (a replica restarted in seconds is probed in seconds)",
    )
    breaker_probes: int = Field(5, ge=1, description="half-open probe calls that must succeed to close")
    feature_store_open_s: float = Field(
        1.0, gt=0, description="the feature store's breaker stays open this long (then 2 probes), not breaker_open_s"
    )
    colocate: bool | Literal["auto"] = Field(
        "auto",
        description="where the ranker, bandit and explainer run: "
        "true = inside the ingress process (no Serve hop), false = each its own "
        "deployment (the cluster topology, serve_config.yaml), auto = in the "
        "ingress unless the ranker asks for a GPU (ranker_num_gpus) or the "
        "explainer runs a model (explainer.backend is not templates)",
    )
    ingress: Literal["haproxy", "proxy"] = Field(
        "haproxy",
        description="haproxy: Ray 2.60's proxy-free ingress (HAProxy "
        "in front, the ingress replicas serve HTTP themselves; user affinity by "
        "HAProxy's balance on x-session-id); proxy: Serve's Python HTTP proxy. "
        "A cluster-wide setting, applied when the stack starts Ray",
    )
    drain_s: float = Field(
        5.0,
        gt=0,
        description="with the haproxy ingress: how long a stopping ingress replica "
        "keeps serving while HAProxy takes it out of rotation (Ray's "
        "default 30 s suits HAProxies on many nodes)",
    )


class SequenceConfig(_Strict):
    """The sequence model (recserve.ranking.sequence): trained with the embeddings (and again on the
    ranker's inner split), a ranker feature, served from the live context."""

    enabled: bool = Field(
        True, description="false: embeddings without a sequence model; the ranker's sequence_logprob feature is then 0"
    )
    dim: int = Field(64, ge=4, le=1024)
    max_len: int = Field(50, ge=2, le=1000, description="the last items of a user it reads")
    blocks: int = Field(2, ge=1, le=12)
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0)
    max_seconds: float = Field(900.0, gt=0, description="training stops after this many seconds (progress says so)")
    negatives: int = Field(
        2048,
        ge=0,
        description="sampled softmax: items drawn per batch against each target (0: a softmax over every item)",
    )
    dropout: float = Field(0.2, ge=0, lt=1)
    candidates: int = Field(
        0,
        ge=0,
        description="a retrieval source beside the index: the model's best N items "
        "for the user join the index's candidates (0: a ranker feature only)",
    )


class ExplainerConfig(_Strict):
    backend: Literal["templates", "transformers", "vllm"] = Field(
        "templates", description="templates (no model), transformers (CPU or GPU) or vllm (GPU, the llm extra)"
    )
    model: str | None = Field(
        None,
        description="the large tier: a local model directory or a name in the local "
        "Hugging Face cache (nothing is downloaded)",
    )
    small_model: str | None = Field(
        None,
        description="the small tier, used while the queue is deep or the large "
        "tier is slow (the seed's 7B at peak instead of 70B)",
    )
    device: str = Field("auto", pattern="^(auto|cpu|cuda(:[0-9]+)?)$")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_new_tokens: int = Field(32, ge=1, le=256, description="one short sentence per item")
    max_queue: int = Field(
        128, ge=1, description="requests waiting or generating per replica; past it, templates at once"
    )
    small_tier_queue: int = Field(16, ge=1, description="queue depth from which new requests take the small tier")
    small_tier_p95_ms: float = Field(200.0, gt=0, description="...or the large tier's recent p95 past this")
    cache_entries: int = Field(100_000, ge=0, description="cached sentences per (user, item, facts)")
    max_batch_prompts: int = Field(
        64,
        ge=1,
        description="prompts per generation call: requests waiting for the "
        "model share one call, each request's items together",
    )
    warmup: bool = Field(True, description="one generation per tier at start (pre-warm)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per Explainer replica")
    cpu_threads: int = Field(
        1,
        ge=0,
        description="torch threads of an Explainer replica generating on the CPU "
        "(0: torch's default, every core): a model writing in the "
        "background leaves the other cores to the serving path",
    )
    cpu_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="how many steps (Linux nice, up to 19) an Explainer's generation thread on the CPU runs "
        "below its replica's priority: the model writes with the cycles the serving path leaves (0: the same)",
    )
    cpu_idle: bool = Field(
        True,
        description="an Explainer's generation thread on the CPU also runs under Linux's SCHED_IDLE: it writes "
        "only when nothing else on the node is runnable (a nice value alone still shares the CPU in proportion)",
    )
    faithful: bool | Literal["auto"] = Field(
        "auto",
        description="the lexical check: a sentence passes only when "
        "its words come from the item's title, its facts and connectives; "
        "auto = on for a real model, off for a random-weight test model",
    )

    @model_validator(mode="after")
    def _model_given(self):
        if self.backend != "templates" and not self.model:
            raise ValueError(f"explainer.backend={self.backend} needs explainer.model (a local model directory)")
        return self


class StreamConfig(_Strict):
    backend: Literal["redis", "kafka"] = Field(
        "redis", description="the event log: Redis Streams (embedded) or a Kafka-protocol broker"
    )
    bootstrap_servers: str | None = Field(
        None,
        description="kafka: host:port[,host:port]; null = "
        "$KAFKA_BOOTSTRAP_SERVERS, else the embedded broker of `recserve up`",
    )
    kafka_port: int = Field(
        9093, ge=1, le=65535, description="the embedded Kafka-protocol broker's port (`recserve up` with backend kafka)"
    )
    topic: str = Field(
        "events",
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="the event log's name: the Kafka topic, the Redis streams' prefix",
    )
    partitions: int = Field(8, ge=1, le=1024, description="event-log partitions (streams / Kafka partitions)")
    aggregators: int = Field(2, ge=1, le=256, description="StreamAggregator actors at start")
    max_aggregators: int = Field(8, ge=1, le=256)
    session_len: int = Field(20, ge=1, le=1000, description="events kept per user in the live context")
    context_ttl_s: int = Field(3600, ge=1, description="live user context TTL (the seed's 1 h)")
    history_events: int = Field(
        50,
        ge=0,
        le=10_000,
        description="a user's newest events kept past the live context's hour (0: none), folded into their "
        "trained state at every request: the features keep every event since training, not the last hour's only",
    )
    history_ttl_s: int = Field(
        7 * 86400,
        ge=1,
        description="how long a user's events are kept that way after their last one (longer than retrain.every, "
        "so that the next generation is trained on them first)",
    )
    vector_decay: float = Field(0.7, ge=0, lt=1, description="weight of the old real-time user vector per event")
    retention_s: float = Field(
        86400.0,
        ge=0,
        description="events kept in the Redis log after every aggregator "
        "committed them (replays, backups, a standby region)",
    )
    read_batch: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="events an aggregator reads per partition per step "
        "(smaller: fresher under load; larger: fewer commits)",
    )
    scale_up_lag: int = Field(10_000, ge=1, description="add an aggregator when the lag passes this many events")
    scale_up_after_s: float = Field(10.0, ge=0, description="...for this long (a burst is not a trend)")
    scale_down_lag: int = Field(1_000, ge=0, description="remove one when the lag stays under this...")
    scale_down_after_s: float = Field(600.0, ge=0, description="...for this long (the seed's 10 minutes)")
    staleness_bound_s: float = Field(
        3600.0, gt=0, description="past this the ingress serves batch vectors (degradation level 2)"
    )
    context_cache_s: float = Field(0.2, ge=0, description="ingress's in-process cache of live contexts")
    aggregator_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per aggregator actor, e.g. {stream: 1} on the cluster's state pool",
    )
    supervisor_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources of the stream supervisor actor (it needs no CPU)"
    )


class LakeConfig(_Strict):
    enabled: bool = Field(True, description="every acknowledged event and catalogue write kept in the lake")
    uri: str | None = Field(None, description="local path or pyarrow.fs URI (s3://...); None = <data_dir>/lake")
    sinks: int = Field(1, ge=1, le=256, description="LakeSink actors, each owning a share of the partitions")
    flush_s: float = Field(5.0, gt=0, description="a sink writes what it read at least this often")
    flush_rows: int = Field(50_000, ge=1, description="...or once this many events wait")
    read_batch: int = Field(10_000, ge=1, le=100_000, description="events a sink reads per partition per call")
    compact_after_s: float = Field(
        3600.0, ge=0, description="an hour's files of a partition are merged into one this long after the hour ends"
    )
    retention_days: float = Field(0.0, ge=0, description="hours older than this are deleted; 0 = keep everything")
    sink_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources per sink actor (the cluster's state pool)"
    )


class EvalConfig(_Strict):
    holdout: float = Field(0.2, gt=0, lt=1)
    k: int = Field(10, ge=1)
    ease_lambda: float = Field(250.0, gt=0)
    als_factors: int = Field(64, ge=1)
    als_iterations: int = Field(15, ge=1)
    als_regularization: float = Field(0.05, ge=0)
    min_user_events: int = Field(5, ge=2)


def _default_quotas() -> dict:
    return {
        "recommend": {"rate": 1000.0, "burst": 2000.0},
        "events": {"rate": 500.0, "burst": 1000.0},
        "feedback": {"rate": 1000.0, "burst": 2000.0},
        "catalogue": {"rate": 50.0, "burst": 100.0},
        "admin": {"rate": 20.0, "burst": 50.0},
    }


class QuotaConfig(_Strict):
    rate: float = Field(gt=0, description="requests per second per key, over all ingress replicas")
    burst: float = Field(ge=1, description="requests a key may send at once after a quiet spell")


class AuthConfig(_Strict):
    enabled: bool = Field(
        True,
        description="API keys on every endpoint but /healthz, /readyz, the schema and "
        "the /ui page (`recserve keys create`); false only on a closed network",
    )
    quotas: dict[Literal["recommend", "events", "feedback", "catalogue", "admin"], QuotaConfig] = Field(
        default_factory=lambda: {k: QuotaConfig(**v) for k, v in _default_quotas().items()},
        description="per-key token bucket per scope (a key may carry its own: `recserve keys create --quota`); "
        "each ingress replica enforces rate / serve.ingress_replicas",
    )


ARM_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class ArmConfig(_Strict):
    """One arm of an experiment: its share of the units and what it changes (unset: as served)."""

    share: float = Field(gt=0, le=1, description="share of the experiment's users (or sessions) in this arm")
    ranker_version: str | None = Field(None, description="a registry version of the ranker (null: the one serving)")
    bandit_share: float | None = Field(None, ge=0, le=1, description="exploration share (null: serve.bandit_share)")
    candidates: int | None = Field(
        None, ge=10, description="retrieval: candidates fetched from the index (null: ranker.candidates)"
    )
    generation: str | None = Field(
        None,
        description="a registry generation serving this arm whole: embeddings, index, ranker, sequence model "
        "(a retrain's canary; null: the serving one)",
    )


class GuardrailConfig(_Strict):
    enabled: bool = True
    min_shown: int = Field(
        2000, ge=10, description="items an arm and the control must each have shown before the guardrail judges it"
    )
    alpha: float = Field(
        0.001,
        gt=0,
        lt=0.5,
        description="one-sided significance: an arm whose mean reward per "
        "shown item is below control's at this level is stopped "
        "(small: the guardrail looks every few seconds)",
    )


class ExperimentConfig(_Strict):
    """An A/B/n experiment (`recserve experiment start NAME`): each user (an anonymous visitor: their
    session) is put in one arm by hash(unit, experiment), sticky for the experiment's life."""

    control: str = Field(
        "control", description="the arm the others are compared with (and the guardrail sends a stopped arm's users to)"
    )
    arms: dict[str, ArmConfig] = Field(min_length=2)
    guardrail: GuardrailConfig = GuardrailConfig()

    @model_validator(mode="after")
    def _arms(self):
        import re

        bad = [a for a in self.arms if not re.match(ARM_NAME, a)]
        if bad:
            raise ValueError(
                f"arms: arm name {bad[0]!r} must be 1-32 of a-z, 0-9, _ and - (it goes into request "
                f"ids and metric labels)"
            )
        if self.control not in self.arms:
            raise ValueError(f"control: {self.control!r} is not one of the arms ({', '.join(self.arms)})")
        total = sum(a.share for a in self.arms.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"arms: the arms' shares sum to {total:g}, not 1; set each arms.<arm>.share so that they sum to 1"
            )
        return self


class RetrainConfig(_Strict):
    """The loop (`python -m pipelines.retrain`, `recserve retrain`, recserve.generations): a
    candidate generation trained on the lake's window, judged against the serving one, rolled out
    as a canary, promoted or rolled back."""

    every: str | None = Field(
        None,
        description="how often the application's scheduler submits a retrain (e.g. 6h, 30m, 1d); "
        "null: only by hand (`recserve retrain`)",
    )
    window_days: float | None = Field(30.0, gt=0, description="the lake's last N days trained on (null: all of it)")
    holdout: float = Field(
        0.1, gt=0, lt=0.5, description="the newest share of the window's events held out: the gate judges both on it"
    )
    margin: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="a candidate whose NDCG@10 or Recall@10 on the held-out slice is below the serving "
        "generation's by more than this share is kept, not promoted",
    )
    min_events: int = Field(200, ge=1, description="fewer events in the window: the retrain stops, nothing changes")
    ope_min_impressions: int = Field(
        500,
        ge=1,
        description="logged impressions from which the gate is decided off-policy (doubly robust) rather than by "
        "the held-out slice, which favours the generation that showed what was clicked",
    )
    offline_floor: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="judged off-policy, a candidate whose held-out NDCG@10 or Recall@10 is below the serving "
        "generation's by more than this share still fails (one that learnt nothing)",
    )
    max_events_per_user: int | None = Field(
        None,
        ge=1,
        description="train on each user's newest N events of the window only (null: all): recent interests "
        "weigh as much as old ones",
    )
    canary_share: float = Field(0.1, gt=0, lt=1, description="users served the candidate while it is a canary")
    canary_min_shown: int = Field(
        2000, ge=10, description="items the canary must have shown (and the guardrail not stopped it) to be promoted"
    )
    canary_alpha: float = Field(
        0.01, gt=0, lt=0.5, description="the canary's guardrail: one-sided level at which a worse canary is stopped"
    )
    auto_rollout: bool = Field(True, description="a candidate that passes the gate starts as a canary by itself")
    lock_ttl_s: float = Field(60.0, ge=5, description="a retrain whose heartbeat stops this long is counted dead")

    @field_validator("every")
    @classmethod
    def _every(cls, v):
        if v is not None:
            parse_duration(v)
        return v

    @property
    def every_s(self) -> float | None:
        return None if self.every is None else parse_duration(self.every)


def parse_duration(text: str) -> float:
    """Seconds of '90s', '30m', '6h', '1d' (or a bare number of seconds)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"duration {text!r}: expected a positive number with s, m, h or d (e.g. 6h, 30m)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


EMBEDDED_KAFKA = "stream.kafka_port (the embedded broker)"


class Config(_Strict):
    data_dir: Path = Path(".recserve")
    redis: RedisConfig = RedisConfig()
    ray: RayConfig = RayConfig()
    registry: RegistryConfig = RegistryConfig()
    world: WorldConfig = WorldConfig()
    embeddings: EmbeddingConfig = EmbeddingConfig()
    index: IndexConfig = IndexConfig()
    ranker: RankerConfig = RankerConfig()
    stream: StreamConfig = StreamConfig()
    lake: LakeConfig = LakeConfig()
    retrain: RetrainConfig = RetrainConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()
    explainer: ExplainerConfig = ExplainerConfig()
    sequence: SequenceConfig = SequenceConfig()
    auth: AuthConfig = AuthConfig()
    experiments: dict[str, ExperimentConfig] = Field(
        default_factory=dict, description="A/B/n experiments, started and stopped with `recserve experiment`"
    )

    @model_validator(mode="after")
    def _experiment_names(self):
        import re

        bad = [n for n in self.experiments if not re.match(ARM_NAME, n)]
        if bad:
            raise ValueError(f"experiments: name {bad[0]!r} must be 1-32 of a-z, 0-9, _ and -")
        return self

    @property
    def registry_uri(self) -> str:
        return self.registry.uri or str(self.data_dir / "registry")

    @property
    def lake_uri(self) -> str:
        return self.lake.uri or str(self.data_dir / "lake")

    @property
    def redis_url(self) -> str:
        url = self.redis.url or f"redis://{self.redis.host}:{self.redis.port}/0"
        pw = self.redis.password
        if pw and "@" not in url.split("://", 1)[-1].split("/", 1)[0]:
            from urllib.parse import quote

            scheme, rest = url.split("://", 1)
            url = f"{scheme}://:{quote(pw, safe='')}@{rest}"
        return url

    @property
    def redis_shown(self) -> str:
        """The Redis URL for messages and logs: its password masked."""
        return masked_url(self.redis_url)

    @property
    def kafka_source(self) -> tuple[str, str]:
        """(the Kafka bootstrap servers, the setting that named them): stream.bootstrap_servers, else
        $KAFKA_BOOTSTRAP_SERVERS, else the embedded broker `recserve up` starts on stream.kafka_port."""
        if self.stream.bootstrap_servers:
            return self.stream.bootstrap_servers, "stream.bootstrap_servers"
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            return os.environ["KAFKA_BOOTSTRAP_SERVERS"], "KAFKA_BOOTSTRAP_SERVERS"
        return f"127.0.0.1:{self.stream.kafka_port}", EMBEDDED_KAFKA

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_source[0]


def _set_path(tree: dict[str, Any], path: list[str], value: str) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    # YAML parsing gives "8" -> 8, "true" -> True, "null" -> None, like the file would.
    node[path[-1]] = yaml.safe_load(value) if value != "" else ""


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, tuple[list[str], str]]:
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, tuple[list[str], str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "RECSERVE_CONFIG":
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if path:
            out[name] = (path, value)
    return out


def _format_errors(err: ValidationError, sources: dict[str, str]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        src = sources.get(key, "")
        hint = f" (set by {src})" if src else ""
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f"; got {got!r}"
        lines.append(f"config key '{key}'{hint}: {e['msg']}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(
    path: str | Path | None = None, environ: dict[str, str] | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Load `recserve.yaml` (or `path`, or $RECSERVE_CONFIG), then apply env overrides."""
    env = dict(os.environ if environ is None else environ)
    if path is None:
        path = env.get("RECSERVE_CONFIG")
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None or Path(DEFAULT_CONFIG_NAME).exists():
        p = Path(path) if path is not None else Path(DEFAULT_CONFIG_NAME)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist; pass an existing file or unset RECSERVE_CONFIG")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at top level")
        tree = loaded
        base = p.resolve().parent
        if "data_dir" in tree and tree["data_dir"] and not Path(str(tree["data_dir"])).is_absolute():
            tree["data_dir"] = str(base / str(tree["data_dir"]))
    for name, (keypath, value) in env_overrides(env).items():
        _set_path(tree, keypath, value)
        sources[".".join(keypath)] = f"{name}={value!r}"
    for key, value in (overrides or {}).items():
        _set_path(tree, key.split("."), value if isinstance(value, str) else yaml.safe_dump(value))
        sources[key] = f"override {key}"
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, sources)) from None
    if cfg.redis.password is None:
        cfg.redis.password = redis_password(cfg, env)
    return cfg


REDIS_PASSWORD_FILE = "redis.password"


def redis_password(cfg: Config, env: dict[str, str]) -> str | None:
    """The Redis password from the environment, a secret file, or the embedded stack's own."""
    if env.get("REDIS_PASSWORD"):
        return env["REDIS_PASSWORD"]
    if env.get("REDIS_PASSWORD_FILE"):
        f = Path(env["REDIS_PASSWORD_FILE"])
        if not f.exists():
            raise ConfigError(f"REDIS_PASSWORD_FILE names {f}, which does not exist")
        return f.read_text().strip() or None
    own = Path(cfg.data_dir) / REDIS_PASSWORD_FILE
    if cfg.redis.url is None and own.exists():
        return own.read_text().strip() or None
    return None


def redact(url: str) -> str:
    """A Redis URL fit to print: its password replaced."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def masked_url(url: str) -> str:
    """A URL fit for a message or a log: the password of its user info replaced by ***."""
    import re

    return re.sub(r"^([a-z][a-z0-9+.-]*://[^:@/]*:)[^@/]*@", r"\1***@", url)

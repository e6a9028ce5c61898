"""The ingress's Ray metrics (exported in Prometheus format by Ray's metrics agent; names
prefixed `recserve_`): requests and latency per endpoint, latency per hop, answers per
degradation level, cache lookups per cache level (L1 responses, live contexts, explanations) and
outcome, circuit-breaker states, stream staleness and lag, vectors per index shard, the model
versions serving.

The request path only counts into local dicts (`IngressMetrics.request`, `.answer`, ...);
`flush()` — the ingress's background task, once a second — hands the sums and the latencies to
Ray's metric objects. Ray is imported at the first flush, so plain unit tests need no Ray."""

from __future__ import annotations

from collections import defaultdict

from recserve.serving.breaker import STATE_VALUE

LATENCY_MS = [1, 2, 5, 10, 20, 50, 80, 100, 200, 300, 500, 1000, 2000, 5000]


class IngressMetrics:
    def __init__(self):
        self._ray = None
        self.counts: dict[tuple[str, tuple], float] = defaultdict(float)  # (metric, tags) -> increment
        self.observed: dict[tuple[str, tuple], list[float]] = defaultdict(list)
        self.gauges: dict[tuple[str, tuple], float] = {}
        self._versions: dict[str, str] = {}

    # ----------------------------------------------------------- request path
    def request(self, endpoint: str, status: int, ms: float) -> None:
        self.counts[("requests", (("endpoint", endpoint), ("status", str(status))))] += 1
        self.observed[("latency", (("endpoint", endpoint),))].append(ms)

    def answer(self, level: int, cache_outcome: str, hop_ms: dict | None) -> None:
        self.counts[("levels", (("level", str(level)),))] += 1
        self.counts[("cache", (("level", "L1"), ("outcome", cache_outcome)))] += 1
        for hop, ms in (hop_ms or {}).items():
            self.observed[("hop_latency", (("hop", hop),))].append(float(ms))

    def explanation_lookups(self, hits: int, misses: int) -> None:
        for outcome, n in (("hit", hits), ("miss", misses)):
            if n:
                self.counts[("cache", (("level", "explanation"), ("outcome", outcome)))] += n

    def context_lookups(self, hits: int, misses: int) -> None:
        for outcome, n in (("hit", hits), ("miss", misses)):
            if n:
                self.counts[("cache", (("level", "context"), ("outcome", outcome)))] += n

    def arm_answer(self, experiment: str, arm: str, shown: int, stopped: bool) -> None:
        """An answer served by an experiment's arm (a stopped arm's users, served control: `stopped`)."""
        tags = (("arm", arm), ("experiment", experiment), ("served", "control" if stopped else "arm"))
        self.counts[("experiment_answers", tags)] += 1
        self.counts[("experiment_shown", tags)] += shown

    def arm_feedback(self, experiment: str, arm: str, reward: float) -> None:
        tags = (("arm", arm), ("experiment", experiment))
        self.counts[("experiment_feedback", tags)] += 1
        self.counts[("experiment_reward", tags)] += reward

    def arm_figures(self, summary: dict) -> None:
        """Every arm's reward per shown item and CTR with their 95 % bounds (all replicas' sums, from Redis)."""
        for arm, a in summary["arms"].items():
            for metric, fig in (("experiment_reward_per_item", "reward_per_item"), ("experiment_ctr", "ctr")):
                for bound in ("estimate", "lo", "hi"):
                    v = a[fig][bound]
                    if v is not None:
                        self.set(metric, v, experiment=summary["name"], arm=arm, bound=bound)

    def events(self, n: int) -> None:
        self.counts[("events", ())] += n

    # ------------------------------------------------------------------ gauges
    def set(self, gauge: str, value: float, **tags: str) -> None:
        self.gauges[(gauge, tuple(sorted(tags.items())))] = float(value)

    def versions(self, versions: dict[str, str]) -> None:
        for comp, v in versions.items():
            old = self._versions.get(comp)
            if old is not None and old != str(v):
                self.set("model_version", 0, component=comp, version=old)
            self.set("model_version", 1, component=comp, version=str(v))
            self._versions[comp] = str(v)

    def index_sizes(self, sizes: dict[int, int]) -> None:
        for shard, n in sizes.items():
            self.set("index_vectors", n, shard=str(shard))

    def breakers(self, snapshot: dict) -> None:
        for dep, s in snapshot.items():
            self.set("breaker", STATE_VALUE[s["state"]], dependency=dep)

    # ------------------------------------------------------------------- flush
    def _objects(self) -> dict:
        if self._ray is None:
            from ray.util.metrics import Counter, Gauge, Histogram

            self._ray = {
                "requests": Counter(
                    "recserve_requests_total", "requests by endpoint and status code", tag_keys=("endpoint", "status")
                ),
                "latency": Histogram(
                    "recserve_request_latency_ms",
                    "request latency by endpoint (ms)",
                    boundaries=LATENCY_MS,
                    tag_keys=("endpoint",),
                ),
                "hop_latency": Histogram(
                    "recserve_hop_latency_ms",
                    "latency of each hop of a recommendation (ms)",
                    boundaries=LATENCY_MS,
                    tag_keys=("hop",),
                ),
                "levels": Counter(
                    "recserve_degradation_level_total", "answers by degradation level", tag_keys=("level",)
                ),
                "cache": Counter(
                    "recserve_cache_lookups_total",
                    "cache lookups by cache level and outcome",
                    tag_keys=("level", "outcome"),
                ),
                "breaker": Gauge(
                    "recserve_breaker_state",
                    "circuit breaker state (0 closed, 1 half-open, 2 open)",
                    tag_keys=("dependency",),
                ),
                "staleness": Gauge("recserve_stream_staleness_s", "age of the oldest event no aggregator committed"),
                "events": Counter("recserve_events_accepted_total", "events acknowledged by the event log"),
                "lag": Gauge(
                    "recserve_stream_lag_events",
                    "events in the log no aggregator has committed yet (all "
                    "partitions, as the ingress sees them; per partition: recserve_stream_consumer_lag)",
                ),
                "index_vectors": Gauge("recserve_index_vectors", "live vectors per index shard", tag_keys=("shard",)),
                "experiment_answers": Counter(
                    "recserve_experiment_answers_total",
                    "answers per experiment arm (served: arm, or control for a stopped arm's users)",
                    tag_keys=("experiment", "arm", "served"),
                ),
                "experiment_shown": Counter(
                    "recserve_experiment_items_shown_total",
                    "items shown per experiment arm",
                    tag_keys=("experiment", "arm", "served"),
                ),
                "experiment_feedback": Counter(
                    "recserve_experiment_feedback_total", "feedback received per arm", tag_keys=("experiment", "arm")
                ),
                "experiment_reward": Counter(
                    "recserve_experiment_reward_total", "reward received per arm (sum)", tag_keys=("experiment", "arm")
                ),
                "experiment_arm_running": Gauge(
                    "recserve_experiment_arm_running",
                    "1 while an arm serves, 0 once stopped (the guardrail says why on /v1/status)",
                    tag_keys=("experiment", "arm"),
                ),
                "experiment_reward_per_item": Gauge(
                    "recserve_experiment_reward_per_item",
                    "reward per shown item per arm, all replicas (bound: estimate, lo, hi of the 95 % interval)",
                    tag_keys=("experiment", "arm", "bound"),
                ),
                "experiment_ctr": Gauge(
                    "recserve_experiment_ctr",
                    "clicks (reward > 0) per shown item per arm, all replicas (bound: estimate, lo, hi: Wilson 95 %)",
                    tag_keys=("experiment", "arm", "bound"),
                ),
                "model_version": Gauge(
                    "recserve_model_version",
                    "1 for the version of each component serving now, 0 for one that served before",
                    tag_keys=("component", "version"),
                ),
            }
        return self._ray

    def flush(self) -> int:
        """Hand what was counted since the last flush to Ray's metrics; returns the records handed."""
        objs = self._objects()
        counts, self.counts = self.counts, defaultdict(float)
        observed, self.observed = self.observed, defaultdict(list)
        n = 0
        for (name, tags), v in counts.items():
            objs[name].inc(v, tags=dict(tags) or None)
            n += 1
        for (name, tags), values in observed.items():
            t = dict(tags)
            for v in values:
                objs[name].observe(v, tags=t)
            n += len(values)
        for (name, tags), v in self.gauges.items():
            objs[name].set(v, tags=dict(tags) or None)
            n += 1
        return n

"""The router's Ray metrics (exported in Prometheus format by Ray's metrics agent; names
prefixed `recserve_`): requests and latency per endpoint, latency per hop, answers per
degradation level, cache lookups per cache level (L1 responses, live contexts, explanations) and
outcome, circuit-breaker states, stream staleness and lag, vectors per index shard, the model
versions serving. Created lazily, so plain unit tests that never record do not need Ray."""

from __future__ import annotations

from recserve.serving.breaker import STATE_VALUE

LATENCY_MS = [1, 2, 5, 10, 20, 50, 80, 100, 200, 300, 500, 1000, 2000, 5000]


class RouterMetrics:
    def __init__(self):
        from ray.util.metrics import Counter, Gauge, Histogram

        self.requests = Counter("recserve_requests_total", "requests by endpoint and status code",
                                tag_keys=("endpoint", "status"))
        self.latency = Histogram("recserve_request_latency_ms", "request latency by endpoint (ms)",
                                 boundaries=LATENCY_MS, tag_keys=("endpoint",))
        self.hop_latency = Histogram("recserve_hop_latency_ms", "latency of each hop of a recommendation (ms)",
                                     boundaries=LATENCY_MS, tag_keys=("hop",))
        self.levels = Counter("recserve_degradation_level_total", "answers by degradation level",
                              tag_keys=("level",))
        self.cache = Counter("recserve_cache_lookups_total", "L1 response cache lookups by outcome",
                             tag_keys=("level", "outcome"))
        self.breaker = Gauge("recserve_breaker_state", "circuit breaker state (0 closed, 1 half-open, 2 open)",
                             tag_keys=("dependency",))
        self.staleness = Gauge("recserve_stream_staleness_s", "age of the oldest event no aggregator committed")
        self.events = Counter("recserve_events_accepted_total", "events acknowledged by the event log")
        self.lag = Gauge("recserve_stream_lag_events", "events in the log no aggregator has committed yet (all "
                         "partitions, as the router sees them; per partition: recserve_stream_consumer_lag)")
        self.index_vectors = Gauge("recserve_index_vectors", "live vectors per index shard", tag_keys=("shard",))
        self.model_version = Gauge("recserve_model_version", "1 for the version of each component serving now, "
                                   "0 for one that served before", tag_keys=("component", "version"))
        self._versions: dict[str, str] = {}

    def request(self, endpoint: str, status: int, ms: float) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self.latency.observe(ms, tags={"endpoint": endpoint})

    def answer(self, out: dict, cache_outcome: str) -> None:
        self.levels.inc(tags={"level": str(out.get("degradation_level", 0))})
        self.cache.inc(tags={"level": "L1", "outcome": cache_outcome})
        for hop, ms in (out.get("hop_ms") or {}).items():
            self.hop_latency.observe(float(ms), tags={"hop": hop})

    def explanation_lookups(self, hits: int, misses: int) -> None:
        for outcome, n in (("hit", hits), ("miss", misses)):
            if n:
                self.cache.inc(n, tags={"level": "explanation", "outcome": outcome})

    def context_lookup(self, hit: bool) -> None:
        self.cache.inc(tags={"level": "context", "outcome": "hit" if hit else "miss"})

    def versions(self, versions: dict[str, str]) -> None:
        for comp, v in versions.items():
            old = self._versions.get(comp)
            if old is not None and old != v:
                self.model_version.set(0, tags={"component": comp, "version": old})
            self.model_version.set(1, tags={"component": comp, "version": str(v)})
            self._versions[comp] = str(v)

    def index_sizes(self, sizes: dict[int, int]) -> None:
        for shard, n in sizes.items():
            self.index_vectors.set(n, tags={"shard": str(shard)})

    def breakers(self, snapshot: dict) -> None:
        for dep, s in snapshot.items():
            self.breaker.set(STATE_VALUE[s["state"]], tags={"dependency": dep})

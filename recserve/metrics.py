"""The router's Ray metrics (exported in Prometheus format by Ray's metrics agent; names
prefixed `recserve_`): requests and latency per endpoint, latency per hop, answers per
degradation level, cache lookups by outcome, circuit-breaker states. Created lazily, so plain
unit tests that never record do not need Ray."""

from __future__ import annotations

from recserve.breaker import STATE_VALUE

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

    def request(self, endpoint: str, status: int, ms: float) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self.latency.observe(ms, tags={"endpoint": endpoint})

    def answer(self, out: dict, cache_outcome: str) -> None:
        self.levels.inc(tags={"level": str(out.get("degradation_level", 0))})
        self.cache.inc(tags={"level": "L1", "outcome": cache_outcome})
        for hop, ms in (out.get("hop_ms") or {}).items():
            self.hop_latency.observe(float(ms), tags={"hop": hop})

    def breakers(self, snapshot: dict) -> None:
        for dep, s in snapshot.items():
            self.breaker.set(STATE_VALUE[s["state"]], tags={"dependency": dep})

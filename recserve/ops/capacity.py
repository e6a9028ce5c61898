"""Capacity planning from the design's rules and this repo's measured figures.

Rules (the design's): aggregators = active users / 50K; embedding streamers = events/s / 1000;
10M vectors per index shard; 30% headroom; two active regions sharing traffic 50/50 plus a warm
standby. Figures (measured here, read from benchmarks/results/, never typed in):
  * ingress throughput per vCPU: `bench serving`, /v1/recommend with the cache on (Zipf users),
    concurrency 16, divided by the benchmark machine's CPUs;
  * aggregator throughput: `bench stream`, events/s end to end per aggregator;
  * index bytes per vector: `bench index`, HNSW bytes per vector minus its raw vectors = the
    graph's overhead per vector, added to dim x 4 bytes (fp32) or dim x 2 (fp16);
  * bandit CPU per request: `bench serving`, the Bandit replica's CPU ms per answered request at
    concurrency 4 (cache off); bandit servers = the requests that miss the L1 cache x that CPU.
Pools whose throughput has no benchmark here (ranking GPUs, LLM GPUs: this repo's benchmarks ran on
CPUs) are reported as unmeasured unless a figure is given on the command line; nothing is guessed."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

SEED_YEARS = {  # the design's projections, year 0 -> year 3 (geometric in between)
    "mau": (100e6, 340e6),
    "peak_qps": (500e3, 1.7e6),
    "items": (10e6, 33e6),
    "events_per_day": (1.8e9, 1.8e9 * 3.4),
}
VECTORS_PER_SHARD = 10_000_000
USERS_PER_AGGREGATOR = 50_000
DESIGN_HIT_RATE = 0.8  # the L1 hit rate the design plans with
EVENTS_PER_STREAMER = 1_000


class CapacityError(ValueError):
    pass


@dataclass
class Measured:
    ingress_rps_per_cpu: float  # at the design's L1 hit rate (DESIGN_HIT_RATE)
    aggregator_events_per_s: float
    hnsw_overhead_bytes: float
    bandit_cpu_ms: float
    sources: dict

    @classmethod
    def from_results(cls, root: str | Path = "benchmarks/results") -> Measured:
        root = Path(root)
        try:
            sv = json.loads((root / "serving.json").read_text())
            st = json.loads((root / "stream.json").read_text())
            ix = json.loads((root / "index.json").read_text())
        except FileNotFoundError as e:
            raise CapacityError(
                f"{e.filename} is missing: run the benchmark that writes it (recserve bench ...)"
            ) from e
        # an ingress CPU's answers per second at the design's hit rate, from what one hit and one miss
        # cost in the measured run (all processes' CPU per request at concurrency 4): the cached
        # run's hit rate (~0.99 over 15 s) would flatter it
        hit_ms = sv["cases"]["recommend_cached"]["4"]["cpu_ms_per_request_total"]
        miss_ms = sv["cases"]["recommend"]["4"]["cpu_ms_per_request_total"]
        rps = 1000.0 / (DESIGN_HIT_RATE * hit_ms + (1 - DESIGN_HIT_RATE) * miss_ms)
        agg = st["events_per_s"] / st["aggregators"]
        overhead = ix["index_bytes"] / ix["n"] - ix["dim"] * 4
        cpu = sv["cases"].get("recommend_split", {}).get("4", {}).get("cpu_ms_per_request", {})
        bandit_key = next((k for k in cpu if k.endswith(":Bandit")), None)
        if bandit_key is None:
            raise CapacityError(
                "serving.json has no Bandit CPU per request (cases.recommend_split.4."
                "cpu_ms_per_request): run `recserve bench serving` again"
            )
        bandit = float(cpu[bandit_key])
        return cls(
            rps,
            agg,
            overhead,
            bandit,
            {
                "ingress_rps_per_cpu": f"1000 / ({DESIGN_HIT_RATE} x serving.json cases.recommend_cached.4."
                f"cpu_ms_per_request_total + {1 - DESIGN_HIT_RATE:.1f} x cases.recommend.4."
                f"cpu_ms_per_request_total) = {rps:.1f}",
                "aggregator_events_per_s": f"stream.json events_per_s / aggregators = {agg:.0f}",
                "hnsw_overhead_bytes": f"index.json index_bytes / n - dim*4 = {overhead:.0f}",
                "bandit_cpu_ms": f"serving.json cases.recommend_split.4.cpu_ms_per_request[{bandit_key!r}] = "
                f"{bandit:.2f}",
            },
        )


def year_inputs(year: int) -> dict:
    if not 0 <= year <= 3:
        raise CapacityError("years 0..3 are projected")
    return {k: a * (b / a) ** (year / 3) for k, (a, b) in SEED_YEARS.items()}


def plan(
    mau: float,
    peak_qps: float,
    items: float,
    events_per_day: float,
    m: Measured,
    headroom: float = 0.3,
    active_share: float = 0.1,
    dim: int = 512,
    dtype: str = "fp32",
    api_node_cpus: int = 16,
    state_node_gib: float = 128,
    events_peak_factor: float = 3.0,
    regions: int = 2,
    standby_fraction: float = 0.25,
    ranker_lists_per_gpu: float | None = None,
    cache_hit_rate: float = 0.8,
) -> dict:
    """Node counts per pool, per active region and for the standby."""
    if min(mau, peak_qps, items, events_per_day) <= 0 or not 0 <= headroom < 5 or regions < 1:
        raise CapacityError("mau, peak_qps, items and events_per_day must be > 0; headroom in [0, 5); regions >= 1")
    h = 1 + headroom
    region_qps = peak_qps / regions
    api_rps = m.ingress_rps_per_cpu * api_node_cpus
    api = math.ceil(region_qps * h / api_rps)
    active_users = mau * active_share
    aggregators_rule = math.ceil(active_users / USERS_PER_AGGREGATOR / regions)
    events_s = events_per_day / 86400 * events_peak_factor / regions
    aggregators_measured = math.ceil(events_s * h / m.aggregator_events_per_s)
    aggregators = max(aggregators_rule, aggregators_measured)
    streamers = math.ceil(events_s / EVENTS_PER_STREAMER)
    bytes_per_vector = dim * (4 if dtype == "fp32" else 2) + m.hnsw_overhead_bytes
    shards = math.ceil(items / VECTORS_PER_SHARD)
    shard_gib = VECTORS_PER_SHARD * bytes_per_vector / 2**30
    shards_per_node = max(1, int(state_node_gib * 0.7 // shard_gib))  # 30% of a node's memory left free
    state_nodes = math.ceil(shards * 2 / shards_per_node) + math.ceil(aggregators / 8)  # 2 replicas per shard
    ranker = None
    if ranker_lists_per_gpu:
        ranker = math.ceil(region_qps * (1 - cache_hit_rate) * h / ranker_lists_per_gpu)
    # the bandit runs for every answer the L1 cache does not hold: CPU ms each, on nodes like the API pool's
    bandit = math.ceil(region_qps * (1 - cache_hit_rate) * h * m.bandit_cpu_ms / 1000 / api_node_cpus)
    region = {"api": api, "state": state_nodes, "ranker_gpu": ranker, "bandit": bandit, "llm_gpu": None}
    standby = {k: (None if v is None else max(1, math.ceil(v * standby_fraction))) for k, v in region.items()}
    return {
        "per_active_region": region,
        "standby": standby,
        "regions_active": regions,
        "aggregators_per_region": aggregators,
        "aggregators_by_rule": aggregators_rule,
        "aggregators_by_measured_throughput": aggregators_measured,
        "embedding_streamers_per_region": streamers,
        "index_shards": shards,
        "shard_gib": round(shard_gib, 1),
        "bytes_per_vector": round(bytes_per_vector),
        "region_peak_qps": region_qps,
        "api_node_rps": round(api_rps, 1),
        "unmeasured": [k for k, v in region.items() if v is None],
    }


def projection(m: Measured, **kw) -> list[dict]:
    out = []
    for y in range(4):
        inp = year_inputs(y)
        out.append({"year": y, "inputs": {k: round(v) for k, v in inp.items()}, **plan(**inp, m=m, **kw)})
    return out

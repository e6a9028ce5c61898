"""The capacity planner: the design's year-0 numbers from this repo's measured figures."""

import json
from pathlib import Path

import pytest

from recserve.ops.capacity import CapacityError, Measured, plan, projection, year_inputs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def measured():
    return Measured.from_results(ROOT / "benchmarks" / "results")


def test_figures_trace_to_the_benchmark_files(measured):
    sv = json.loads((ROOT / "benchmarks/results/serving.json").read_text())
    hit, miss = (sv["cases"][c]["4"]["cpu_ms_per_request_total"] for c in ("recommend_cached", "recommend"))
    assert measured.ingress_rps_per_cpu == pytest.approx(1000 / (0.8 * hit + 0.2 * miss))
    assert set(measured.sources) == {
        "ingress_rps_per_cpu",
        "aggregator_events_per_s",
        "hnsw_overhead_bytes",
        "bandit_cpu_ms",
    }
    assert (
        measured.bandit_cpu_ms
        == sv["cases"]["recommend_split"]["4"]["cpu_ms_per_request"]["ray::ServeReplica:split:Bandit"]
    )


def test_year_zero_lands_in_the_design_ranges(measured):
    y0 = projection(measured)[0]
    assert y0["inputs"]["mau"] == 100_000_000 and y0["inputs"]["peak_qps"] == 500_000
    # the design's API pool range is 50-500 nodes; measured, this serving path needs the low end or less
    assert 10 <= y0["per_active_region"]["api"] <= 500
    assert 15 <= y0["shard_gib"] <= 25  # "about 20 GB per 10M vectors at 512 dims"
    assert y0["index_shards"] == 1 and y0["aggregators_per_region"] >= 100 * 10**6 * 0.1 / 50_000 / 2
    # the design's bandit pool range is 10-50 nodes; measured (1.7 ms of CPU per uncached answer in
    # bench serving's split case), the bandit needs the low end or less, as the API pool does
    assert 1 <= y0["per_active_region"]["bandit"] <= 50
    assert y0["unmeasured"] == ["ranker_gpu", "llm_gpu"]  # no GPU benchmark here: not guessed
    years = projection(measured)
    assert [y["per_active_region"]["api"] for y in years] == sorted(y["per_active_region"]["api"] for y in years)
    assert year_inputs(3)["peak_qps"] == pytest.approx(1.7e6)


def test_a_given_gpu_figure_sizes_the_ranking_pool_and_bad_input_is_refused(measured):
    p = plan(1e8, 5e5, 1e7, 1.8e9, measured, ranker_lists_per_gpu=5000)
    assert p["per_active_region"]["ranker_gpu"] == 13  # 250K x 0.2 misses x 1.3 / 5000
    with pytest.raises(CapacityError):
        plan(0, 5e5, 1e7, 1.8e9, measured)
    with pytest.raises(CapacityError):
        year_inputs(4)
    with pytest.raises(CapacityError, match="missing"):
        Measured.from_results(ROOT / "no-such-dir")

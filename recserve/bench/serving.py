"""`recserve bench serving`: the same load generator (scripts/loadgen.py, its own process) at
concurrency 1, 4 and 16 against a no-op Serve deployment, /v1/recommend with the L1 cache off,
and /v1/recommend with the cache on under a Zipf(1.1) user mix — one run, one machine.

Needs the registry to hold embeddings, index and ranker (`recserve demo --no-serve` makes them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from recserve.bench.common import require_own_serve, write_result

CONCURRENCY = (1, 4, 16)


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of every Ray process on this machine, by process title (ray::...)."""
    import psutil

    out: dict[str, float] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            title = " ".join(p.info["cmdline"] or [])
            if title.startswith("ray::"):
                t = p.cpu_times()
                name = title.split()[0]
                out[name] = out.get(name, 0.0) + t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _load(url: str, c: int, duration: float, users: str, zipf: float | None, affinity: bool = False,
          k: int = 10) -> dict:
    cmd = [sys.executable, "-m", "recserve.bench.loadgen", "--url", url, "--concurrency", str(c), "--duration", str(duration),
           "--users", users, "--k", str(k)] + (["--zipf", str(zipf)] if zipf else []) + (["--affinity"] if affinity else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120,
                         cwd=Path(__file__).resolve().parents[2])
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(cfg, duration: float = 8.0, out: str | Path | None = None, log=print) -> dict:
    from ray import serve

    from deployments.app import build_app
    from deployments.noop import Noop
    from recserve.offline.jobs import ensure_ray
    from recserve.ops.stack import free_port
    from recserve.registry import Registry

    reg = Registry(cfg.registry_uri, cfg.registry.keep)
    user_ids = np.load(reg.fetch("embeddings") / "user_ids.npy")
    users = f"{int(user_ids.min())}-{int(user_ids.max())}"
    ensure_ray(cfg)
    require_own_serve("the benchmark")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    log("deploying noop, recommend (cache off) and recommend (cache on)")
    serve.run(Noop.bind(), name="noop", route_prefix="/noop")
    serve.run(build_app(cfg, cache=False, name="nocache"), name="nocache", route_prefix="/nocache")
    # the same path with ranker, bandit and explainer inside the router process (serve.colocate)
    serve.run(build_app(cfg, cache=False, name="colocated", colocate=True), name="colocated",
              route_prefix="/colocated")
    # the cached case runs 2 router replicas (each its own L1 cache) routed by user id
    serve.run(build_app(cfg, cache=True, name="cached", router_replicas=2, affinity=True), name="cached",
              route_prefix="/cached")
    urls = {"noop": f"{base}/noop", "recommend": f"{base}/nocache/v1/recommend",
            "recommend_colocated": f"{base}/colocated/v1/recommend",
            "recommend_cached": f"{base}/cached/v1/recommend"}
    for u in urls.values():  # warm every path once
        httpx.post(u, json={"user_id": int(user_ids[0]), "k": 10}, timeout=60)
    res: dict = {"duration_s": duration, "users": len(user_ids), "cpus": os.cpu_count(), "cases": {}}
    for case, url in urls.items():
        res["cases"][case] = {}
        cached = case == "recommend_cached"
        for c in CONCURRENCY:
            before = _cpu_seconds() if c == 4 else None
            r = _load(url, c, duration, users, 1.1 if cached else None, affinity=cached)
            if before is not None and r["requests"]:
                # where a request's CPU goes: per Ray process, ms of CPU per answered request
                # (the idle background of the other applications is included)
                after = _cpu_seconds()
                r["cpu_ms_per_request"] = {k: round((after[k] - before.get(k, 0.0)) * 1000 / r["requests"], 2)
                                           for k in after if after[k] - before.get(k, 0.0) > 0.005 * duration}
            res["cases"][case][str(c)] = r
            log(f"{case:17s} c={c:<3d} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  "
                f"errors {r['errors']}")
    cases = res["cases"]
    # hit rate from the answers themselves (each names how its cache served it), over all three
    # concurrencies; then the same Zipf load without the routing key, on cache entries of its own
    # (another k), so each user's requests spread over both replicas
    tot = {}
    for r in cases["recommend_cached"].values():
        for how, n in r["cache"].items():
            tot[how] = tot.get(how, 0) + n
    res["cache_hit_rate"] = round((tot.get("hit", 0) + tot.get("coalesced", 0)) / max(1, sum(tot.values())), 4)
    spread = {}
    for c in CONCURRENCY:
        r = _load(urls["recommend_cached"], c, duration, users, 1.1, affinity=False, k=11)
        for how, n in r["cache"].items():
            spread[how] = spread.get(how, 0) + n
    res["cache_hit_rate_no_affinity"] = round((spread.get("hit", 0) + spread.get("coalesced", 0))
                                              / max(1, sum(spread.values())), 4)
    log(f"cache hit rate: {res['cache_hit_rate']} with affinity, {res['cache_hit_rate_no_affinity']} without "
        f"(2 router replicas, Zipf(1.1) users)")
    res["recommend_vs_noop"] = round(cases["recommend"]["4"]["rps"] / cases["noop"]["4"]["rps"], 3)
    res["colocated_vs_noop"] = round(cases["recommend_colocated"]["4"]["rps"] / cases["noop"]["4"]["rps"], 3)
    res["cached_vs_noop"] = round(cases["recommend_cached"]["4"]["rps"] / cases["noop"]["4"]["rps"], 3)
    res["targets"] = {"recommend_vs_noop_ge_0_5": res["recommend_vs_noop"] >= 0.5,
                      "p95_le_80ms_c4": cases["recommend"]["4"]["p95_ms"] <= 80,
                      "hit_rate_ge_0_8": res["cache_hit_rate"] >= 0.8,
                      "cached_vs_noop_ge_0_9": res["cached_vs_noop"] >= 0.9}
    serve.shutdown()  # the bench's own Serve instance (its HTTP port is fixed once started)
    write_result(out, res)
    return res

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

CONCURRENCY = (1, 4, 16)


def _load(url: str, c: int, duration: float, users: str, zipf: float | None) -> dict:
    cmd = [sys.executable, "-m", "scripts.loadgen", "--url", url, "--concurrency", str(c), "--duration", str(duration),
           "--users", users] + (["--zipf", str(zipf)] if zipf else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120,
                         cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(cfg, duration: float = 8.0, out: str | Path | None = None, log=print) -> dict:
    from ray import serve

    from deployments.app import build_app
    from deployments.noop import Noop
    from recserve.jobs import ensure_ray
    from recserve.registry import Registry
    from recserve.stack import free_port

    reg = Registry(cfg.registry_uri, cfg.registry.keep)
    user_ids = np.load(reg.fetch("embeddings") / "user_ids.npy")
    users = f"{int(user_ids.min())}-{int(user_ids.max())}"
    ensure_ray(cfg)
    try:
        running = serve.status().applications
    except Exception:  # noqa: BLE001 - no Serve instance: what we want
        running = {}
    if running:
        raise RuntimeError(f"Serve already runs applications {sorted(running)} on this cluster (make demo?); the "
                           f"benchmark needs its own Serve instance: stop them (Ctrl-C the demo) and run it again")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    log("deploying noop, recommend (cache off) and recommend (cache on)")
    serve.run(Noop.bind(), name="noop", route_prefix="/noop")
    serve.run(build_app(cfg, cache=False, name="nocache"), name="nocache", route_prefix="/nocache")
    serve.run(build_app(cfg, cache=True, name="cached"), name="cached", route_prefix="/cached")
    urls = {"noop": f"{base}/noop", "recommend": f"{base}/nocache/v1/recommend",
            "recommend_cached": f"{base}/cached/v1/recommend"}
    for u in urls.values():  # warm every path once
        httpx.post(u, json={"user_id": int(user_ids[0]), "k": 10}, timeout=60)
    res: dict = {"duration_s": duration, "users": len(user_ids), "cpus": os.cpu_count(), "cases": {}}
    for case, url in urls.items():
        res["cases"][case] = {}
        if case == "recommend_cached":
            before = httpx.get(f"{base}/cached/v1/status").json()["cache"]
        for c in CONCURRENCY:
            r = _load(url, c, duration, users, 1.1 if case == "recommend_cached" else None)
            res["cases"][case][str(c)] = r
            log(f"{case:17s} c={c:<3d} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  "
                f"errors {r['errors']}")
        if case == "recommend_cached":
            after = httpx.get(f"{base}/cached/v1/status").json()["cache"]
            served = sum(after[x] - before[x] for x in ("hits", "misses", "coalesced"))
            res["cache_hit_rate"] = round((after["hits"] - before["hits"] + after["coalesced"] - before["coalesced"])
                                          / max(served, 1), 4)
    cases = res["cases"]
    res["recommend_vs_noop"] = round(cases["recommend"]["4"]["rps"] / cases["noop"]["4"]["rps"], 3)
    res["cached_vs_noop"] = round(cases["recommend_cached"]["4"]["rps"] / cases["noop"]["4"]["rps"], 3)
    res["cache_hit_rate_no_affinity"] = None  # needs 2 router replicas with and without affinity: not built yet
    res["targets"] = {"recommend_vs_noop_ge_0_5": res["recommend_vs_noop"] >= 0.5,
                      "p95_le_80ms_c4": cases["recommend"]["4"]["p95_ms"] <= 80,
                      "hit_rate_ge_0_8": res["cache_hit_rate"] >= 0.8,
                      "cached_vs_noop_ge_0_9": res["cached_vs_noop"] >= 0.9}
    serve.shutdown()  # the bench's own Serve instance (its HTTP port is fixed once started)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=2))
    return res

"""Closed-loop HTTP load generator (its own process): `concurrency` workers post
/v1/recommend for `duration` seconds with users drawn from a Zipf(a) or uniform mix; prints JSON
with rps, latency percentiles and error counts. Bounded in time, loopback only."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import numpy as np


async def run(url: str, concurrency: int, duration: float, users: np.ndarray, zipf: float | None, k: int,
              seed: int, affinity: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    if zipf:
        w = 1.0 / np.arange(1, len(users) + 1) ** zipf
        p = w / w.sum()
    lat: list[float] = []
    codes: dict[int, int] = {}
    errors = 0
    cache: dict[str, int] = {}
    stop = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient):
        nonlocal errors
        while time.perf_counter() < stop:
            u = int(users[rng.choice(len(users), p=p)]) if zipf else int(users[rng.integers(len(users))])
            t = time.perf_counter()
            try:
                headers = {"x-session-id": str(u)} if affinity else None  # the consistent-hash routing key
                r = await client.post(url, json={"user_id": u, "k": k}, headers=headers)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code >= 400:
                    errors += 1
                elif r.status_code == 200 and (how := r.json().get("cache")):
                    cache[how] = cache.get(how, 0) + 1
            except httpx.HTTPError:
                errors += 1
                continue
            lat.append((time.perf_counter() - t) * 1000)

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        elapsed = time.perf_counter() - t0
    a = np.array(lat) if lat else np.array([np.nan])
    return {"requests": len(lat), "rps": round(len(lat) / elapsed, 1), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "errors": errors, "status": {str(c): n for c, n in codes.items()}, "cache": cache,
            "cache_hit_rate": round(cache.get("hit", 0) / max(1, sum(cache.values())), 4) if cache else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--users", default="0-999", help="range LO-HI of user ids")
    p.add_argument("--zipf", type=float, default=None, help="Zipf exponent of the user mix (default uniform)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--affinity", action="store_true", help="send x-session-id: <user_id> (consistent-hash routing)")
    a = p.parse_args()
    lo, hi = (int(x) for x in a.users.split("-"))
    users = np.random.default_rng(a.seed).permutation(np.arange(lo, hi + 1))
    print(json.dumps(asyncio.run(run(a.url, a.concurrency, a.duration, users, a.zipf, a.k, a.seed, a.affinity))))


if __name__ == "__main__":
    main()

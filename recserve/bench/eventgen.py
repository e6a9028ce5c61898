"""Closed-loop event poster (its own process): `posters` connections POST /v1/events batches of
`batch` events for `duration` seconds; prints JSON with events accepted, posts and latency."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid

import httpx
import numpy as np

from recserve.bench.common import percentiles


async def run(
    url: str,
    posters: int,
    duration: float,
    batch: int,
    users: np.ndarray,
    items: np.ndarray,
    seed: int,
    key: str | None = None,
) -> dict:
    rng = np.random.default_rng(seed)
    run_id = uuid.uuid4().hex[:8]
    accepted, dups, errors, posts, lat = 0, 0, 0, 0, []
    stop = time.perf_counter() + duration
    types = np.array(["view", "view", "view", "click", "purchase"])

    async def poster(client: httpx.AsyncClient, w: int):
        nonlocal accepted, dups, errors, posts
        n = 0
        while time.perf_counter() < stop:
            u = users[rng.integers(len(users), size=batch)]
            it = items[rng.integers(len(items), size=batch)]
            ty = types[rng.integers(len(types), size=batch)]
            now = int(time.time())
            body = {
                "events": [
                    {
                        "event_id": f"{run_id}-{w}-{n + j}",
                        "user_id": int(a),
                        "item_id": int(b),
                        "event_type": str(c),
                        "ts": now,
                    }
                    for j, (a, b, c) in enumerate(zip(u, it, ty))
                ]
            }
            n += batch
            t = time.perf_counter()
            try:
                r = await client.post(url, json=body)
            except httpx.HTTPError:
                errors += 1
                continue
            lat.append((time.perf_counter() - t) * 1000)
            posts += 1
            if r.status_code == 202:
                accepted += r.json()["accepted"]
                dups += r.json()["duplicates"]
            else:
                errors += 1

    async with httpx.AsyncClient(
        timeout=60,
        limits=httpx.Limits(max_connections=posters),
        headers={"authorization": f"Bearer {key}"} if key else None,
    ) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[poster(client, w) for w in range(posters)])
        elapsed = time.perf_counter() - t0
    a = np.array(lat) if lat else np.array([np.nan])
    return {
        "accepted": accepted,
        "duplicates": dups,
        "posts": posts,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "events_per_s": round(accepted / elapsed, 1),
        **percentiles(a, prefix="post_p"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--posters", type=int, default=2)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--users", default="0-999", help="range LO-HI of user ids")
    p.add_argument("--items", default="0-999", help="range LO-HI of item ids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--key",
        default=os.environ.get("RECSERVE_API_KEY"),
        help="API key with the events scope (default $RECSERVE_API_KEY)",
    )
    a = p.parse_args()
    ulo, uhi = (int(x) for x in a.users.split("-"))
    ilo, ihi = (int(x) for x in a.items.split("-"))
    print(
        json.dumps(
            asyncio.run(
                run(
                    a.url,
                    a.posters,
                    a.duration,
                    a.batch,
                    np.arange(ulo, uhi + 1),
                    np.arange(ilo, ihi + 1),
                    a.seed,
                    a.key,
                )
            )
        )
    )


if __name__ == "__main__":
    main()

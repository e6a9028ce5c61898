"""Ray job: write a generated world (users, items, drifting interests, Zipf popularity, events)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pipelines._cli import parser, run, setup
from recserve.offline.jobs import say
from recserve.ops.ray_head import ensure_ray


def main(argv=None):
    p = parser(
        "generate_world",
        "Generate a deterministic synthetic world as a dataset directory "
        "(events/*.parquet, items.parquet, truth/), block by block through Ray Data.",
    )
    p.add_argument("--out", required=True, help="dataset directory to write (replaced atomically)")
    p.add_argument("--users", type=int, help="number of users (world.n_users)")
    p.add_argument("--items", type=int, help="number of items (world.n_items)")
    p.add_argument("--events-per-user", type=float, help="mean events per user")
    p.add_argument("--seed", type=int, help="world.seed")
    p.add_argument("--no-ray", action="store_true", help="generate in this process (small worlds, tests)")
    p.add_argument("--report", help="also write the result (counts, seconds) as JSON to this file")
    args = p.parse_args(argv)

    def go():
        for flag, key in (
            ("users", "world.n_users"),
            ("items", "world.n_items"),
            ("events_per_user", "world.events_per_user"),
            ("seed", "world.seed"),
        ):
            if getattr(args, flag) is not None:
                args.set.append(f"{key}={getattr(args, flag)}")
        cfg, _ = setup(args)
        from recserve.offline.data import generate_world

        log = say("generate_world")
        if not args.no_ray:
            ensure_ray(cfg)
        log(
            f"{cfg.world.n_users} users in {-(-cfg.world.n_users // cfg.world.users_per_block)} blocks, "
            f"{cfg.world.n_items} items"
        )
        t0 = time.perf_counter()
        meta = generate_world(cfg.world, args.out, use_ray=not args.no_ray)
        seconds = time.perf_counter() - t0
        log(f"wrote {meta['n_events']} events to {args.out} in {seconds:.1f}s")
        result = {
            "out": args.out,
            "n_events": meta["n_events"],
            "n_users": meta["n_users"],
            "n_items": meta["n_items"],
            "seconds": round(seconds, 1),
            "events_per_s": round(meta["n_events"] / seconds),
            "ray": not args.no_ray,
            "cpus": os.cpu_count(),
        }
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(json.dumps(result, indent=2))
        return result

    run(go)


if __name__ == "__main__":
    main()

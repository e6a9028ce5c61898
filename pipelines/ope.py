"""Ray job: off-policy evaluation (recserve.offline.ope) of candidate policies — the current bandit,
the serving ranker greedy, random, popularity and other registry ranker versions — from logged
impressions (context, shown items, propensities) and rewards: IPS, self-normalised IPS and
doubly-robust estimates of each one's reward per shown item with 95 % intervals. JSON, a markdown
table and a plot, published to the registry as a version of `ope`.

  --source live       the live system's logs: the bandit's impressions and the feedback in Redis
  --source simulate   a simulation on a generated world, whose truth gives every policy's true
                      reward to compare the estimates with (what `recserve simulate` runs)"""

from __future__ import annotations

from pipelines._cli import parser, run, setup
from recserve.redis_client import connect


def main(argv=None):
    p = parser("ope", __doc__)
    p.add_argument("--source", choices=("live", "simulate"), default="live")
    p.add_argument(
        "--ranker-version",
        action="append",
        default=[],
        dest="versions",
        help="another registry version of the ranker to judge (repeatable)",
    )
    p.add_argument(
        "--impressions", type=int, default=50_000, help="simulate: impressions to log; live: the newest this many"
    )
    p.add_argument("--dataset", help="simulate: the generated world (default: the one the embeddings were trained on)")
    p.add_argument(
        "--warmup",
        type=int,
        default=20_000,
        help="simulate: impressions the bandit learns from before its posteriors are frozen as the 'current bandit'",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--replications",
        type=int,
        default=0,
        help="simulate: more runs with seeds seed+1.. (coverage and order-agreement rates)",
    )
    p.add_argument("--out", help="write the JSON here too (and .md / .png beside it)")
    args = p.parse_args(argv)

    def go():
        from pathlib import Path

        import ray

        from recserve.offline import ope
        from recserve.ops.ray_head import ensure_ray

        cfg, reg = setup(args)
        if args.impressions < 1:
            raise ValueError("--impressions must be at least 1")
        ensure_ray(cfg)

        @ray.remote(num_cpus=1)
        def job():
            log = lambda m: print(f"[ope] {m}", flush=True)  # noqa: E731
            if args.source == "simulate":
                from recserve.artifacts import trained_on

                return ope.simulate(
                    cfg,
                    args.dataset or trained_on(reg),
                    reg,
                    args.impressions,
                    warmup=args.warmup,
                    versions=args.versions,
                    seed=args.seed,
                    replications=args.replications,
                    log=log,
                )

            return ope.evaluate_live(
                cfg,
                reg,
                connect(cfg.redis_url, timeout=None),
                max_impressions=args.impressions,
                versions=args.versions,
                log=log,
            )

        report = ray.get(job.remote())
        report["version"] = ope.publish(reg, report, {"source": args.source})
        if args.out:
            ope.write(report, Path(args.out))
        print(ope.markdown(report))
        return {"ope": report["version"], "out": args.out}

    run(go)


if __name__ == "__main__":
    main()

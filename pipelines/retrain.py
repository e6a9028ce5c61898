"""Ray job: the loop's retrain. The lake's last retrain.window_days are exported; the newest
retrain.holdout share of their events is held out and the rest trains a candidate generation
(embeddings with the sequence model, index, ranker), published without moving what serves. The
gate then ranks the held-out users with the candidate and with the serving generation from the
same history (Recall@10 and NDCG@10 with intervals; off-policy estimates from the logged
impressions where there are any), and a `generation` version records the verdict: `candidate`
when it passed, `rejected` when it is worse beyond retrain.margin. With retrain.auto_rollout a
passing candidate then starts as a canary (`recserve rollout status`).

One run at a time; a failed or interrupted run leaves the registry and what serves as they were,
and `recserve retrain status` says why it stopped."""

from __future__ import annotations

from pipelines._cli import parser, run, setup


def main(argv=None):
    p = parser("retrain", __doc__)
    p.add_argument("--lake", help="the lake's path or pyarrow.fs URI (default: the config's lake.uri)")
    p.add_argument(
        "--window-days", type=float, help="the lake's last N days (default: retrain.window_days; 0: all of it)"
    )
    p.add_argument(
        "--negative-control",
        choices=("shuffled",),
        help="the gate's self-check: train the candidate on the window with its item ids shuffled over the events "
        "(the gate must reject it)",
    )
    p.add_argument("--no-rollout", action="store_true", help="publish the verdict only; start no canary")
    args = p.parse_args(argv)

    def go():
        cfg, reg = setup(args)
        from recserve.offline.jobs.retrain import retrain

        window = -1.0 if args.window_days is None else (None if args.window_days == 0 else args.window_days)
        out = retrain(cfg, reg, window_days=window, lake_uri=args.lake, negative_control=args.negative_control)
        if out["state"] == "candidate" and cfg.retrain.auto_rollout and not args.no_rollout:
            from recserve.redis_client import connect
            from recserve.rollout import roll_out

            out["rollout"] = roll_out(cfg, reg, connect(cfg.redis_url, timeout=10), out["generation"])
        return out

    run(go)


if __name__ == "__main__":
    main()

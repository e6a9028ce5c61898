"""Ray job: train user and item vectors (matrix factorisation in torch, BPR or sampled softmax)
on Ray Data batches inside a Ray task, and publish them to the registry."""

from __future__ import annotations

from pipelines._cli import dataset_args, dataset_of, parser, run, setup


def main(argv=None):
    p = parser("train_embeddings", __doc__)
    dataset_args(p)
    p.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="train on all but the last HOLDOUT share of each user's events (0 = all; eval uses 0.2)",
    )
    args = p.parse_args(argv)

    def go():
        cfg, reg = setup(args)
        dataset = dataset_of(args, cfg, reg)
        from recserve.offline.jobs import train_embeddings

        return {"embeddings": train_embeddings(cfg, dataset, args.holdout, reg)}

    run(go)


if __name__ == "__main__":
    main()

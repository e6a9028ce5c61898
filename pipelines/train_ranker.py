"""Ray job: train the torch ranking model over retrieval, popularity, trending, session and
co-visitation features (the same feature functions the stream uses online) and publish it."""

from __future__ import annotations

from pipelines._cli import dataset_args, dataset_of, parser, run, setup


def main(argv=None):
    p = parser("train_ranker", __doc__)
    dataset_args(p)
    p.add_argument("--holdout", type=float, default=0.0, help="as for train_embeddings (eval uses 0.2)")
    p.add_argument("--embeddings-version", help="embeddings version the ranker serves with (default: latest)")
    args = p.parse_args(argv)

    def go():
        cfg, reg = setup(args)
        dataset = dataset_of(args, cfg, reg)
        from recserve.offline.jobs import train_ranker

        return {"ranker": train_ranker(cfg, dataset, args.holdout, reg, args.embeddings_version)}

    run(go)


if __name__ == "__main__":
    main()

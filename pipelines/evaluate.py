"""Ray job: Recall@10, NDCG@10 and coverage of popularity, implicit ALS, EASE, retrieval and
retrieval + ranker on the per-user temporal split; JSON, a markdown table and a PNG plot."""

from __future__ import annotations

from pipelines._cli import dataset_args, dataset_of, parser, run, setup


def main(argv=None):
    p = parser("evaluate", __doc__)
    dataset_args(p)
    p.add_argument("--out", help="write the JSON here (and .md / .png beside it)")
    p.add_argument(
        "--methods", default="popularity,als,ease,retrieval,retrieval_ranker", help="comma-separated subset of methods"
    )
    args = p.parse_args(argv)

    def go():
        cfg, reg = setup(args)
        dataset = dataset_of(args, cfg, reg)
        from recserve.offline.jobs import METHODS, evaluate, markdown_table

        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        report = evaluate(cfg, dataset, reg, args.out, methods)
        print(markdown_table(report, cfg.eval.k))
        return {"evaluation": report["version"], "out": args.out}

    run(go)


if __name__ == "__main__":
    main()

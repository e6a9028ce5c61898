"""Job: turn a MovieLens folder (ratings.csv + movies.csv, or ml-1m .dat files) into a dataset."""

from __future__ import annotations

from pipelines._cli import parser, run, setup
from recserve.offline.jobs import say


def main(argv=None):
    p = parser(
        "import_movielens",
        "Read MovieLens ratings and movies into the canonical events/items "
        "tables. Invalid rows are named; a few are skipped, more fail the import.",
    )
    p.add_argument("--data-dir", required=True, help="folder with ratings.csv + movies.csv (or .dat)")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--strict", action="store_true", help="fail on any invalid row")
    p.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.001,
        help="share of invalid rows skipped before the import fails (default 0.001)",
    )
    args = p.parse_args(argv)

    def go():
        setup(args)
        from recserve.offline.data import import_movielens

        log = say("import_movielens")
        meta = import_movielens(args.data_dir, args.out, strict=args.strict, max_bad_fraction=args.max_bad_fraction)
        for r in meta.get("rejected", []):
            log(f"skipped {r['file']} line {r['line']}: {r['cause']}")
        log(f"{meta['n_events']} ratings, {meta['n_users']} users, {meta['n_items']} movies -> {args.out}")
        return {"out": args.out, "n_events": meta["n_events"], "rejected": len(meta.get("rejected", []))}

    run(go)


if __name__ == "__main__":
    main()

"""Ray job: the chain on the system's own traffic. A window of the lake (every acknowledged event,
the catalogue as its changelog left it) is written out as a dataset directory, then embeddings (with
the sequence model), the index and the ranker are trained on it and published to the registry."""

from __future__ import annotations

from pipelines._cli import parser, run, setup


def main(argv=None):
    p = parser("train_on_lake", __doc__)
    p.add_argument("--lake", help="the lake's path or pyarrow.fs URI (default: the config's lake.uri)")
    p.add_argument("--window-days", type=float, help="only the lake's last N days (default: all of it)")
    args = p.parse_args(argv)

    def go():
        cfg, reg = setup(args)
        from recserve.offline.jobs.lake import train_on_lake

        return train_on_lake(cfg, reg, args.window_days, lake_uri=args.lake)

    run(go)


if __name__ == "__main__":
    main()

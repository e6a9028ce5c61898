"""Ray job: build sharded FAISS indexes (one file per shard, built in parallel Ray tasks) from an
embeddings version, with a manifest holding the routing table, and publish them."""

from __future__ import annotations

from pipelines._cli import parser, run, setup


def main(argv=None):
    p = parser("build_index", __doc__)
    p.add_argument("--embeddings-version", help="embeddings version to index (default: latest)")
    p.add_argument("--shards", type=int, help="index.num_shards")
    p.add_argument("--kind", choices=["flat", "hnsw", "ivfpq"], help="index.kind")
    args = p.parse_args(argv)

    def go():
        if args.shards is not None:
            args.set.append(f"index.num_shards={args.shards}")
        if args.kind:
            args.set.append(f"index.kind={args.kind}")
        cfg, reg = setup(args)
        from recserve.offline.jobs import build_index

        return {"index": build_index(cfg, args.embeddings_version, reg)}

    run(go)


if __name__ == "__main__":
    main()

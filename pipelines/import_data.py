"""Ray job: your own events (and items) from parquet, CSV or JSON lines (a file, a folder or a
pyarrow.fs URI) into a dataset directory the offline chain trains on. Columns are mapped by flags or
a mapping file; each rejected row is named with its file, row and column (a few are skipped, more
fail the import; --strict fails on any). Streamed in Ray Data tasks, never a whole file in one
process."""

from __future__ import annotations

from pipelines._cli import parser, run, setup


def add_import_args(p) -> None:
    p.add_argument("--events", required=True, help="the events (a file, a folder or a pyarrow.fs URI)")
    p.add_argument("--items", help="the items (id, category, title, attributes), likewise")
    p.add_argument("--out", help="dataset directory to write (default <data_dir>/datasets/import)")
    p.add_argument("--map", dest="mapping", help="mapping file (YAML/JSON: events, items, event_types, weights)")
    for flag, role, what in [
        ("--user-col", "user", "user id"),
        ("--item-col", "item", "item id in the events"),
        ("--type-col", "event_type", "event type ('' = none: every row is --default-event-type)"),
        ("--value-col", "value", "value ('' = none: 1.0)"),
        ("--ts-col", "ts", "timestamp"),
        ("--item-id-col", "item_id", "item id in the items"),
        ("--title-col", "title", "item title ('' = none)"),
        ("--category-col", "category", "item category"),
    ]:
        p.add_argument(flag, dest=role, help=f"the column of the {what}")
    p.add_argument("--attributes-cols", help="comma-separated item columns folded into its attributes")
    p.add_argument("--attributes-json", help="an item column holding its attributes as a JSON object")
    p.add_argument("--ts-unit", choices=["auto", "s", "ms", "iso"], help="timestamps in seconds, ms or ISO-8601")
    p.add_argument("--default-event-type", help="the event type when there is no type column")
    p.add_argument("--event-type", action="append", default=[], metavar="SRC=TYPE", help="map a source type")
    p.add_argument("--weight", action="append", default=[], metavar="TYPE=W", help="the weight of an event type")
    p.add_argument("--strict", action="store_true", help="fail on any invalid row")
    p.add_argument("--max-bad-fraction", type=float, default=0.001, help="invalid rows skipped before failing")


def mapping_of(args):
    from recserve.offline.importer import load_mapping, pairs

    attrs = args.attributes_json or (
        [c.strip() for c in args.attributes_cols.split(",")] if args.attributes_cols else None
    )
    return load_mapping(
        args.mapping,
        **{k: getattr(args, k) for k in ("user", "item", "event_type", "value", "ts", "item_id", "title", "category")},
        attributes=attrs,
        ts_unit=args.ts_unit,
        default_event_type=args.default_event_type,
        event_types=pairs(args.event_type, "--event-type", str) or None,
        weights=pairs(args.weight, "--weight", float) or None,
    )


def main(argv=None, prog: str | None = None):
    p = parser("import_data", __doc__)
    if prog:
        p.prog = prog
    add_import_args(p)
    args = p.parse_args(argv)

    def go():
        from pathlib import Path

        from recserve.offline.importer import import_data
        from recserve.offline.jobs import say
        from recserve.ops.ray_head import ensure_ray

        cfg, _ = setup(args)
        ensure_ray(cfg)
        log = say("import_data")
        out = args.out or str(Path(cfg.data_dir) / "datasets" / "import")
        meta = import_data(
            args.events,
            out,
            items=args.items,
            mapping=mapping_of(args),
            strict=args.strict,
            max_bad_fraction=args.max_bad_fraction,
            progress=log,
        )
        for r in meta["rejected"]:
            log(f"skipped {r['file']} line {r['line']}: {r['cause']}")
        return {"out": out, "n_events": meta["n_events"], "n_items": meta["n_items"], "rejected": meta["n_rejected"]}

    run(go)


if __name__ == "__main__":
    main()

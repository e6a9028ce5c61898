"""`recserve capacity | chaos | backup | restore`: operating a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from recserve.cli.main import ConfigOpt, _cfg, _fail, _progress, app, console


@app.command("capacity")
def capacity_cmd(
    mau: float | None = typer.Option(None, help="monthly active users (default: the design's year 0..3 projection)"),
    peak_qps: float | None = typer.Option(None, "--peak-qps"),
    items: float | None = typer.Option(None),
    events_per_day: float | None = typer.Option(None, "--events-per-day"),
    headroom: float = typer.Option(0.3),
    dim: int = typer.Option(512, help="embedding dimension of the index"),
    ranker_lists_per_gpu: float | None = typer.Option(
        None,
        "--ranker-lists-per-gpu",
        help="measured ranker throughput per GPU (no GPU benchmark "
        "here yet); without it the pool is reported unmeasured",
    ),
    results: Path = typer.Option(Path("benchmarks/results"), help="where the benchmark JSONs are"),
    out: Path = typer.Option(Path("benchmarks/results/capacity.json"), help="JSON (and .png beside)"),
):
    """Node counts per pool and region from the design's rules and this repo's measured throughput."""
    from recserve.ops.capacity import CapacityError, Measured, plan, projection

    try:
        m = Measured.from_results(results)
        kw = {"headroom": headroom, "dim": dim, "ranker_lists_per_gpu": ranker_lists_per_gpu}
        if mau is not None:
            if None in (peak_qps, items, events_per_day):
                raise CapacityError("with --mau give --peak-qps, --items and --events-per-day too")
            rows = [
                {
                    "year": None,
                    "inputs": {"mau": mau, "peak_qps": peak_qps, "items": items, "events_per_day": events_per_day},
                    **plan(mau, peak_qps, items, events_per_day, m, **kw),
                }
            ]
        else:
            rows = projection(m, **kw)
    except CapacityError as e:
        _fail(e)
    t = Table(title="nodes per active region (standby in brackets)")
    for col in (
        "year",
        "MAU",
        "peak QPS",
        "items",
        "api",
        "bandit",
        "state",
        "ranker_gpu",
        "llm_gpu",
        "aggregators",
        "shards",
    ):
        t.add_column(col)
    for r in rows:
        reg, sb = r["per_active_region"], r["standby"]

        def cell(k, reg=reg, sb=sb):
            return "unmeasured" if reg[k] is None else f"{reg[k]} ({sb[k]})"

        t.add_row(
            str(r["year"]),
            f"{r['inputs']['mau']:,.0f}",
            f"{r['inputs']['peak_qps']:,.0f}",
            f"{r['inputs']['items']:,.0f}",
            cell("api"),
            cell("bandit"),
            cell("state"),
            cell("ranker_gpu"),
            cell("llm_gpu"),
            str(r["aggregators_per_region"]),
            str(r["index_shards"]),
        )
    console.print(t)
    res = {"measured_from": m.sources, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        years = [r["year"] if r["year"] is not None else 0 for r in rows]
        for pool in ("api", "bandit", "state"):
            ax.plot(years, [r["per_active_region"][pool] for r in rows], marker="o", label=pool)
        ax.set_xlabel("year")
        ax.set_ylabel("nodes per active region")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
    except ImportError:
        pass
    console.print(f"wrote {out} (figures from: {'; '.join(m.sources.values())})")


@app.command("chaos")
def chaos_cmd(
    duration: float = typer.Option(120.0, help="seconds in all (seven phases)"),
    concurrency: int = typer.Option(4, help="concurrent /v1/recommend clients"),
    appendfsync: str | None = typer.Option(
        None,
        "--appendfsync",
        help="always | everysec | no for this "
        "run (default: the running Redis'): the host-crash phase "
        "shows what each loses",
    ),
    out: Path = typer.Option(Path("benchmarks/results/chaos.json")),
    config: Path | None = ConfigOpt,
):
    """Load plus faults, one per phase: kill a ranker replica, a vector-shard actor, an aggregator,
    Redis (then restart it), crash Redis' host (its AOF cut back to what the disk held), slow the
    explainer; per phase status codes, levels, p95, recovery and acknowledged events lost."""
    if appendfsync not in (None, "always", "everysec", "no"):
        _fail(ValueError(f"--appendfsync must be always, everysec or no, not {appendfsync!r}"))
    from recserve.bench.chaos import run

    cfg = _cfg(config)
    try:
        res = run(cfg, duration, concurrency, out, log=_progress("chaos"), appendfsync=appendfsync)
    except RuntimeError as e:
        _fail(e)
    console.print_json(json.dumps(res))


@app.command("fuzz")
def fuzz_cmd(
    examples: int = typer.Option(
        1000,
        "--examples",
        help="examples in all (at least; over every operation, valid and invalid inputs, with a key and without)",
    ),
    out: Path = typer.Option(Path("benchmarks/results/fuzz.json")),
    seed: int = typer.Option(0, help="Hypothesis' seed (the same seed, the same examples)"),
    config: Path | None = ConfigOpt,
):
    """Fuzz the HTTP API from its OpenAPI schema (Schemathesis): no answer may be >= 500, and no
    4xx may change anything (event log, index, bandit, forgotten users, keys, registry). Brings
    the stack up and fills the registry when needed (as `demo --no-serve`), deploys an application
    of its own at /fuzz on Redis database 3 (what is served stays untouched), deletes it after."""
    from recserve.bench.fuzz import run
    from recserve.cli.stack import prepare

    if examples < 1:
        _fail(ValueError("--examples must be at least 1"))
    cfg = _cfg(config)
    prepare(cfg)
    try:
        res = run(cfg, examples, out, seed, log=_progress("fuzz"))
    except RuntimeError as e:
        _fail(e)
    console.print_json(json.dumps({k: v for k, v in res.items() if k not in ("endpoints", "failures")}))
    for f in res["failures"][:5]:
        console.print(f"failure: {f['why']}: {f['operation']} ({f['way']})", markup=False)
    if res["status_5xx"] or res["state_changed_after_4xx"] or res["non_json_4xx"]:
        raise typer.Exit(1)


@app.command("backup")
def backup_cmd(
    to: str = typer.Option(..., "--to", help="local folder or pyarrow.fs URI (s3://..., gs://...)"),
    keep: int = typer.Option(24, help="backups to keep there (older ones are removed)"),
    list_only: bool = typer.Option(False, "--list", help="list the backups there and exit"),
    config: Path | None = ConfigOpt,
):
    """One consistent, timestamped backup of the running stack: Redis (BGSAVE + AOF: features,
    live contexts, counters, bandit, event log, committed offsets), the live indexes' snapshots and
    WALs, the registry's manifests."""
    from recserve.ops.backup import BackupError, backup, list_backups

    cfg = _cfg(config)
    try:
        if list_only:
            for b in list_backups(to):
                print(f"{b['point_iso']}  {b['name']}  keys={b['redis_keys']}  {b['path']}")
            return
        res = backup(cfg, to, keep=keep, log=_progress("backup"))
    except BackupError as e:
        _fail(e)
    console.print_json(json.dumps({k: v for k, v in res.items() if k != "files"}))


@app.command("restore")
def restore_cmd(
    src: str = typer.Option(..., "--from", help="where `recserve backup --to` wrote"),
    point_in_time: str | None = typer.Option(
        None, "--point-in-time", help="newest backup at or before this (unix seconds or ISO time); default the newest"
    ),
    force: bool = typer.Option(False, "--force", help="restore over existing Redis data (kept aside)"),
    config: Path | None = ConfigOpt,
):
    """Load a backup into the stopped stack (`recserve down` first); `recserve up` then serves it."""
    from recserve.ops.backup import BackupError, restore

    cfg = _cfg(config)
    try:
        res = restore(cfg, src, point_in_time, force=force, log=_progress("restore"))
    except BackupError as e:
        _fail(e)
    console.print_json(json.dumps(res))


drill_app = typer.Typer(
    no_args_is_help=True,
    help="Drills: lose a part of the system on purpose, under load, and measure what clients saw (docs/runbook.md).",
)
app.add_typer(drill_app, name="drill")


@drill_app.command("region-failure")
def drill_region_failure(
    region: str = typer.Option("us-west-2", "--region", help="the active region to lose"),
    duration: float = typer.Option(
        120.0, min=30, help="seconds of load at least: the region is killed at 1/6, recovered from 1/2"
    ),
    concurrency: int = typer.Option(4, min=1, help="concurrent /v1/recommend clients"),
    users: int = typer.Option(2000, min=10, help="users of the trained world the load draws from (uniformly)"),
    out: Path = typer.Option(Path("benchmarks/results/drill.json")),
    config: Path | None = ConfigOpt,
):
    """Kill a whole region (its Redis and Ray cluster, SIGKILL) under load through the regions' load
    balancer, run the runbook's failover and recovery (`recserve region failover / up / return`),
    and measure: 5xx (during detection and after), RTO, events acknowledged and lost, RPO, the
    personalized share of the survivor's answers for users whose events were mirrored, the return.
    Needs both active regions up (`recserve region up us-west-2`, `... us-east-1`)."""
    import os

    from recserve.bench.drill import run
    from recserve.ops.region import RegionError

    if config is not None:  # the runbook commands the drill runs read the same config
        os.environ["RECSERVE_CONFIG"] = str(config.resolve())
    try:
        res = run(_cfg(config), region, duration, concurrency, out, log=_progress("drill"), n_users=users)
    except (RegionError, RuntimeError) as e:
        _fail(e)
    console.print_json(json.dumps({k: v for k, v in res.items() if k not in ("phases", "load_balancer", "runbook")}))

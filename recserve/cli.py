"""`recserve`: the embedded stack, the offline chain, the registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from recserve.config import Config, ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="recserve: real-time personalization served from a Ray cluster.")
registry_app = typer.Typer(no_args_is_help=True, help="Inspect the artifact registry.")
app.add_typer(registry_app, name="registry")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: each writes JSON under benchmarks/results/.")
region_app = typer.Typer(no_args_is_help=True, help="Region operations our side automates (docs/runbook.md).")
app.add_typer(region_app, name="region")
app.add_typer(bench_app, name="bench")
console = Console()
err = Console(stderr=True)


def _fail(e: Exception):
    print(f"error: {e}", file=sys.stderr)  # unwrapped, so the whole cause stays on one line
    raise typer.Exit(2)


def _cfg(config: Optional[Path]) -> Config:
    try:
        return load_config(config)
    except ConfigError as e:
        _fail(e)


def _progress(what: str):
    """A progress printer: `[what] message` (markup off: the brackets are text, not a rich style)."""
    return lambda m: console.print(f"[{what}] {m}", markup=False, highlight=False)


ConfigOpt = typer.Option(None, "--config", "-c", help="recserve.yaml (default ./recserve.yaml or $RECSERVE_CONFIG)")


@app.command()
def serve(config: Optional[Path] = ConfigOpt):
    """Deploy the serving application on the running stack from the registry's latest versions."""
    from recserve.registry import Registry

    cfg = _cfg(config)
    _serve_forever(cfg, Registry(cfg.registry_uri, cfg.registry.keep))


@app.command()
def up(config: Optional[Path] = ConfigOpt,
       no_ray: bool = typer.Option(False, "--no-ray", help="start Redis only")):
    """Start the embedded stack: a real redis-server (AOF everysec) and a local Ray head with the jobs API."""
    from recserve.stack import Stack, StackError

    cfg = _cfg(config)
    try:
        info = Stack(cfg).up(with_ray=not no_ray)
    except StackError as e:
        _fail(e)
    console.print(f"redis  {info.redis_url}" + (" (started)" if info.redis_started else " (external)"))
    if info.ray_address:
        console.print(f"ray    {info.ray_address}  jobs API {info.dashboard_url}")
        console.print(f"submit: ray job submit --address {info.dashboard_url} --working-dir . -- "
                      f"python -m pipelines.train_embeddings --help")


@app.command()
def down(config: Optional[Path] = ConfigOpt):
    """Stop what `recserve up` started (and nothing else)."""
    from recserve.stack import Stack

    stopped = Stack(_cfg(config)).down()
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing (the stack was not up)"))


@app.command()
def status(config: Optional[Path] = ConfigOpt, as_json: bool = typer.Option(False, "--json")):
    """Show whether the stack is up, and what is in the registry."""
    from recserve.registry import Registry
    from recserve.stack import Stack

    cfg = _cfg(config)
    st = Stack(cfg).status()
    st["registry"] = {"uri": cfg.registry_uri, "artifacts": Registry(cfg.registry_uri, cfg.registry.keep).list()}
    if as_json:
        print(json.dumps(st, indent=2, default=str))
    else:
        console.print_json(json.dumps(st, default=str))
    if not st["running"]:
        raise typer.Exit(1)


@registry_app.command("list")
def registry_list(config: Optional[Path] = ConfigOpt, registry: Optional[str] = typer.Option(None, "--registry")):
    """Artifacts, their versions and where `latest` points."""
    from recserve.registry import Registry

    cfg = _cfg(config)
    reg = Registry(registry or cfg.registry_uri, cfg.registry.keep)
    t = Table("artifact", "latest", "versions")
    for name, info in sorted(reg.list().items()):
        t.add_row(name, str(info["latest"]), ", ".join(info["versions"]))
    console.print(t)


def _prepare_dataset(cfg: Config, dataset: str, data_dir: Optional[Path], out: Path, no_ray: bool = False) -> Path:
    from recserve.data import generate_world, import_movielens

    if dataset == "movielens":
        if data_dir is None:
            cand = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"
            data_dir = cand if cand.exists() else None
        if data_dir is None:
            raise ValueError("--data-dir is required for --dataset movielens (a folder with ratings.csv and movies.csv)")
        meta = import_movielens(data_dir, out)
        for r in meta.get("rejected", []):
            err.print(f"[yellow]skipped[/yellow] {r['file']} line {r['line']}: {r['cause']}")
    elif dataset == "generated":
        meta = generate_world(cfg.world, out, use_ray=not no_ray)
    else:
        raise ValueError(f"--dataset must be 'movielens' or 'generated', not {dataset!r}")
    console.print(f"dataset {dataset}: {meta['n_events']} events, {meta['n_users']} users, {meta['n_items']} items")
    return out


@app.command("eval")
def eval_cmd(dataset: str = typer.Option("movielens", help="movielens | generated"),
             data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                                     help="MovieLens folder (ratings.csv + movies.csv, or .dat)"),
             out: Path = typer.Option(Path("benchmarks/results/eval.json"), help="JSON report (.md/.png beside it)"),
             registry: Optional[str] = typer.Option(None, help="registry for this run's artifacts "
                                                              "(default <data_dir>/eval-registry/<dataset>)"),
             config: Optional[Path] = ConfigOpt):
    """Run the whole offline chain on a temporal split and print the comparison table:
    data -> train_embeddings -> build_index -> train_ranker -> evaluate."""
    from recserve import jobs
    from recserve.registry import Registry, RegistryError
    from recserve.schemas import DataError

    cfg = _cfg(config)
    reg = Registry(registry or str(Path(cfg.data_dir) / "eval-registry" / dataset), cfg.registry.keep)
    try:
        for name in ("embeddings", "index", "ranker", "evaluation"):
            reg.check_writable(name)
        ds_dir = _prepare_dataset(cfg, dataset, data_dir, Path(cfg.data_dir) / "datasets" / f"eval-{dataset}")
        h = cfg.eval.holdout
        emb = jobs.train_embeddings(cfg, ds_dir, h, reg)
        idx = jobs.build_index(cfg, emb, reg)
        rk = jobs.train_ranker(cfg, ds_dir, h, reg, emb)
        report = jobs.evaluate(cfg, ds_dir, reg, out, versions={"embeddings": emb, "index": idx, "ranker": rk})
    except (DataError, RegistryError, ValueError, FileNotFoundError) as e:
        _fail(e)
    console.print(jobs.markdown_table(report, cfg.eval.k))
    if "targets" in report:
        console.print(json.dumps(report["targets"]))
    console.print(f"wrote {out} (+ .md, .png)")


@app.command()
def demo(movielens: Optional[Path] = typer.Option(None, "--movielens", help="use this MovieLens folder instead "
                                                                             "of a generated world"),
         no_serve: bool = typer.Option(False, "--no-serve", help="stop after the offline chain"),
         config: Optional[Path] = ConfigOpt):
    """Bring the stack up, build a dataset, run the offline chain (reusing what a previous run
    built), deploy the serving application and serve until Ctrl-C."""
    from recserve import jobs
    from recserve.registry import Registry, RegistryError
    from recserve.schemas import DataError
    from recserve.stack import Stack, StackError

    cfg = _cfg(config)
    try:
        info = Stack(cfg).up()
        console.print(f"stack up: redis {info.redis_url}, ray {info.ray_address}, jobs API {info.dashboard_url}")
        reg = Registry(cfg.registry_uri, cfg.registry.keep)
        name = "movielens" if movielens else "generated"
        ds_dir = Path(cfg.data_dir) / "datasets" / name
        if not (ds_dir / "meta.json").exists():
            _prepare_dataset(cfg, name, movielens, ds_dir)
        else:
            console.print(f"reusing dataset {ds_dir}")
        fp = jobs.dataset_fingerprint(ds_dir)
        emb = reg.latest("embeddings")
        if emb is None or reg.manifest("embeddings", emb)["lineage"].get("dataset_fingerprint") != fp:
            emb = jobs.train_embeddings(cfg, ds_dir, 0.0, reg)
        else:
            console.print(f"reusing embeddings {emb}")
        idx = reg.latest("index")
        if idx is None or reg.manifest("index", idx)["lineage"].get("embeddings") != emb:
            idx = jobs.build_index(cfg, emb, reg)
        else:
            console.print(f"reusing index {idx}")
        rk = reg.latest("ranker")
        if rk is None or reg.manifest("ranker", rk)["lineage"].get("embeddings") != emb:
            rk = jobs.train_ranker(cfg, ds_dir, 0.0, reg, emb)
        else:
            console.print(f"reusing ranker {rk}")
    except (StackError, DataError, RegistryError, ValueError) as e:
        _fail(e)
    console.print(f"ready: embeddings {emb}, index {idx}, ranker {rk} in {cfg.registry_uri}")
    if no_serve:
        return
    _serve_forever(cfg, reg)


def _serve_forever(cfg: Config, reg) -> None:
    import time as _time

    import numpy as np
    import ray
    from ray import serve

    from deployments.app import deploy
    from recserve.jobs import ensure_ray
    from recserve.stack import port_is_free

    if not port_is_free(cfg.serve.http_port, cfg.serve.http_host):
        _fail(RuntimeError(f"port {cfg.serve.http_port} is taken: Serve cannot listen there. Stop what uses it or "
                           f"set RECSERVE_SERVE__HTTP_PORT"))
    ensure_ray(cfg)
    console.print("deploying the serving application (Router, Ranker, Bandit, Explainer, vector-index shard "
                  "actors) and the stream aggregators...")
    url = deploy(cfg, reg.uri)
    from actors.aggregator import AggregatorPool

    pool = AggregatorPool(cfg, name="agg", registry=reg)
    user = int(np.load(reg.fetch("embeddings") / "user_ids.npy")[0])
    item = int(np.load(reg.fetch("embeddings") / "item_ids.npy")[0])
    console.print(f"\nserving at {url}  (OpenAPI: {url}/docs). Try:\n")
    print(f"curl -s -X POST {url}/v1/recommend -H 'content-type: application/json' "
          f"-d '{{\"user_id\": {user}, \"k\": 5, \"explain\": true}}'")
    print(f"curl -s -X POST {url}/v1/events -H 'content-type: application/json' "
          f"-d '{{\"events\": [{{\"user_id\": {user}, \"item_id\": {item}, \"event_type\": \"click\"}}]}}'")
    print(f"curl -s {url}/v1/status")
    console.print(f"\n{len(pool.actors)} stream aggregators over {cfg.stream.partitions} partitions (more when the "
                  f"lag passes {cfg.stream.scale_up_lag} events). Ctrl-C stops serving (the stack stays up: "
                  f"`recserve down` stops it).")
    import signal as _signal

    def _stop(signum, frame):  # SIGTERM (a supervisor, `kill`) stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    _signal.signal(_signal.SIGTERM, _stop)
    try:
        while True:
            before = len(pool.actors)
            if pool.autoscale() != before:
                console.print(f"stream aggregators: {before} -> {len(pool.actors)} (lag {sum(pool.lag().values())})")
            _time.sleep(5)
    except KeyboardInterrupt:
        console.print("stopping the serving application and the aggregators")
        pool.shutdown()
        serve.shutdown()
        ray.shutdown()


@region_app.command("drain")
def region_drain(region: str = typer.Argument(..., help="this region's name, e.g. us-west-2"),
                 reason: str = typer.Option("", help="why, for /readyz and the runbook"),
                 undo: bool = typer.Option(False, "--undo", help="put the region back in rotation"),
                 config: Optional[Path] = ConfigOpt):
    """Take this region's routers out of the load balancer's rotation (/readyz answers 503 draining)."""
    import redis as _redis

    from recserve.region import drain, undrain

    cfg = _cfg(config)
    r = _redis.Redis.from_url(cfg.redis_url)
    if undo:
        console.print("back in rotation" if undrain(r) else "was not draining")
    else:
        console.print_json(json.dumps(drain(r, region, reason)))


@region_app.command("shift")
def region_shift(weights: list[str] = typer.Argument(..., help="REGION=WEIGHT ..., e.g. us-west-2=100 us-east-1=0"),
                 out: Path = typer.Option(Path("traffic.json"), help="weights document for the DNS / LB tooling")):
    """Write the traffic shares per region (summing to 100) for the global load balancer."""
    from recserve.region import RegionError, shift
    from scripts.regions import REGIONS

    try:
        w = {}
        for x in weights:
            name, _, val = x.partition("=")
            if not val:
                raise RegionError(f"{x!r}: write REGION=WEIGHT")
            w[name] = float(val)
        shares = shift(w, REGIONS)
    except (RegionError, ValueError) as e:
        _fail(e)
    out.write_text(json.dumps(shares, indent=2))
    console.print_json(json.dumps(shares))


@region_app.command("lag")
def region_lag(standby: str = typer.Option(..., "--standby", help="the standby's Redis URL"),
               config: Optional[Path] = ConfigOpt):
    """How far the standby's event log is behind this (active) region's."""
    import redis as _redis

    from recserve.region import lag

    cfg = _cfg(config)
    console.print_json(json.dumps(lag(_redis.Redis.from_url(cfg.redis_url), _redis.Redis.from_url(standby),
                                      cfg.stream.partitions)))


@app.command("capacity")
def capacity_cmd(mau: Optional[float] = typer.Option(None, help="monthly active users (default: the design's "
                                                                "year 0..3 projection)"),
                 peak_qps: Optional[float] = typer.Option(None, "--peak-qps"),
                 items: Optional[float] = typer.Option(None),
                 events_per_day: Optional[float] = typer.Option(None, "--events-per-day"),
                 headroom: float = typer.Option(0.3),
                 dim: int = typer.Option(512, help="embedding dimension of the index"),
                 ranker_lists_per_gpu: Optional[float] = typer.Option(
                     None, "--ranker-lists-per-gpu", help="measured ranker throughput per GPU (no GPU benchmark "
                                                          "here yet); without it the pool is reported unmeasured"),
                 results: Path = typer.Option(Path("benchmarks/results"), help="where the benchmark JSONs are"),
                 out: Path = typer.Option(Path("benchmarks/results/capacity.json"), help="JSON (and .png beside)")):
    """Node counts per pool and region from the design's rules and this repo's measured throughput."""
    from recserve.capacity import CapacityError, Measured, plan, projection

    try:
        m = Measured.from_results(results)
        kw = {"headroom": headroom, "dim": dim, "ranker_lists_per_gpu": ranker_lists_per_gpu}
        if mau is not None:
            if None in (peak_qps, items, events_per_day):
                raise CapacityError("with --mau give --peak-qps, --items and --events-per-day too")
            rows = [{"year": None, "inputs": {"mau": mau, "peak_qps": peak_qps, "items": items,
                                              "events_per_day": events_per_day},
                     **plan(mau, peak_qps, items, events_per_day, m, **kw)}]
        else:
            rows = projection(m, **kw)
    except CapacityError as e:
        _fail(e)
    t = Table(title="nodes per active region (standby in brackets)")
    for col in ("year", "MAU", "peak QPS", "items", "api", "bandit", "state", "ranker_gpu", "llm_gpu", "aggregators",
                "shards"):
        t.add_column(col)
    for r in rows:
        reg, sb = r["per_active_region"], r["standby"]
        cell = lambda k: "unmeasured" if reg[k] is None else f"{reg[k]} ({sb[k]})"  # noqa: E731
        t.add_row(str(r["year"]), f"{r['inputs']['mau']:,.0f}", f"{r['inputs']['peak_qps']:,.0f}",
                  f"{r['inputs']['items']:,.0f}", cell("api"), cell("bandit"), cell("state"), cell("ranker_gpu"),
                  cell("llm_gpu"), str(r["aggregators_per_region"]), str(r["index_shards"]))
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
def chaos_cmd(duration: float = typer.Option(120.0, help="seconds in all (six phases)"),
              concurrency: int = typer.Option(4, help="concurrent /v1/recommend clients"),
              out: Path = typer.Option(Path("benchmarks/results/chaos.json")),
              config: Optional[Path] = ConfigOpt):
    """Load plus faults, one per phase: kill a ranker replica, a vector-shard actor, an aggregator,
    Redis (then restart it), slow the explainer; per phase status codes, levels, p95, recovery."""
    from scripts.chaos import run

    cfg = _cfg(config)
    try:
        res = run(cfg, duration, concurrency, out, log=_progress("chaos"))
    except RuntimeError as e:
        _fail(e)
    console.print_json(json.dumps(res))


@app.command("backup")
def backup_cmd(to: str = typer.Option(..., "--to", help="local folder or pyarrow.fs URI (s3://..., gs://...)"),
               keep: int = typer.Option(24, help="backups to keep there (older ones are removed)"),
               list_only: bool = typer.Option(False, "--list", help="list the backups there and exit"),
               config: Optional[Path] = ConfigOpt):
    """One consistent, timestamped backup of the running stack: Redis (BGSAVE + AOF: features,
    live contexts, counters, bandit, event log, committed offsets), the live indexes' snapshots and
    WALs, the registry's manifests."""
    from recserve.backup import BackupError, backup, list_backups

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
def restore_cmd(src: str = typer.Option(..., "--from", help="where `recserve backup --to` wrote"),
                point_in_time: Optional[str] = typer.Option(None, "--point-in-time",
                                                            help="newest backup at or before this (unix seconds or "
                                                                 "ISO time); default the newest"),
                force: bool = typer.Option(False, "--force", help="restore over existing Redis data (kept aside)"),
                config: Optional[Path] = ConfigOpt):
    """Load a backup into the stopped stack (`recserve down` first); `recserve up` then serves it."""
    from recserve.backup import BackupError, restore

    cfg = _cfg(config)
    try:
        res = restore(cfg, src, point_in_time, force=force, log=_progress("restore"))
    except BackupError as e:
        _fail(e)
    console.print_json(json.dumps(res))


@bench_app.command("index")
def bench_index(out: Path = typer.Option(Path("benchmarks/results/index.json")),
                n: int = typer.Option(1_000_000, help="vectors"), dim: int = typer.Option(64),
                shards: int = typer.Option(4), ef_search: int = typer.Option(100),
                ef_construction: int = typer.Option(80), queries: int = typer.Option(1000),
                batch: int = typer.Option(64)):
    """Sharded index on Ray actors vs one plain FAISS index: recall, throughput, latency, storage,
    snapshot/restore, filtered recall."""
    from scripts.bench_index import run

    res = run(n=n, dim=dim, shards=shards, ef_search=ef_search, ef_construction=ef_construction,
              n_queries=queries, batch=batch, out=out, log=_progress("bench index"))
    console.print_json(json.dumps(res))


@bench_app.command("serving")
def bench_serving(out: Path = typer.Option(Path("benchmarks/results/serving.json")),
                  duration: float = typer.Option(8.0, help="seconds per case and concurrency"),
                  config: Optional[Path] = ConfigOpt):
    """No-op deployment vs /v1/recommend (cache off / on, Zipf users) at concurrency 1, 4, 16."""
    from scripts.bench_serving import run

    cfg = _cfg(config)
    try:
        res = run(cfg, duration, out, log=_progress("bench serving"))
    except RuntimeError as e:
        _fail(e)
    console.print_json(json.dumps({k: v for k, v in res.items() if k != "cases"}))


@bench_app.command("stream")
def bench_stream(out: Path = typer.Option(Path("benchmarks/results/stream.json")),
                 duration: float = typer.Option(15.0, help="seconds of posting"),
                 batch: int = typer.Option(1000, help="events per POST /v1/events"),
                 posters: int = typer.Option(3, help="concurrent posting connections"),
                 config: Optional[Path] = ConfigOpt):
    """Events over HTTP -> log -> aggregators -> live context: sustained events/s, freshness
    p50/p95, and raw pipelined XADD to the same Redis as the machine's limit."""
    from scripts.bench_stream import run

    cfg = _cfg(config)
    try:
        res = run(cfg, duration, batch, posters, out, log=_progress("bench stream"))
    except RuntimeError as e:
        _fail(e)
    console.print_json(json.dumps(res))


@bench_app.command("explain")
def bench_explain(out: Path = typer.Option(Path("benchmarks/results/explain.json")),
                  backends: str = typer.Option("templates,transformers,vllm", help="comma-separated; one that is "
                                               "not available here is reported as skipped"),
                  model: Optional[str] = typer.Option(None, help="a local model directory (default: build a "
                                                      "random-weights model, nothing is downloaded)"),
                  size: Optional[str] = typer.Option(None, help="size of the built model: tiny | small | 0.5b "
                                                     "(default: small on CPU, 0.5b on a GPU)"),
                  device: str = typer.Option("auto", help="auto | cpu | cuda"),
                  requests: int = typer.Option(100, min=1, help="requests of 10 items per pass"),
                  concurrency: int = typer.Option(4, min=1, help="requests at a time in the deadline pass"),
                  max_new_tokens: int = typer.Option(32, min=1), deadline_ms: float = typer.Option(300.0, min=1)):
    """The explainer per backend: p50/p95 latency per 10-item request, the share that fell back to
    templates (deadline, full queue, errors), grounding rejections, requests/s and tokens/s."""
    from scripts.bench_explain import run

    names = [b.strip() for b in backends.split(",") if b.strip()]
    try:
        res = run(names, model, size, device, requests, concurrency, max_new_tokens, deadline_ms, out,
                  log=_progress("bench explain"))
    except (ValueError, RuntimeError) as e:
        _fail(e)
    console.print_json(json.dumps(res))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

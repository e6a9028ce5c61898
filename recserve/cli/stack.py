"""`recserve up | down | status | serve | demo`: the embedded stack and serving on it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from recserve.cli.main import ConfigOpt, _cfg, _fail, app, console
from recserve.config import Config, redact
from recserve.redis_client import connect


@app.command()
def serve(config: Path | None = ConfigOpt):
    """Deploy the serving application on the running stack from the registry's latest versions."""
    from recserve.registry import Registry

    cfg = _cfg(config)
    _serve_forever(cfg, Registry(cfg.registry_uri, cfg.registry.keep))


@app.command()
def up(config: Path | None = ConfigOpt, no_ray: bool = typer.Option(False, "--no-ray", help="start Redis only")):
    """Start the embedded stack: a real redis-server (AOF, fsync always) and a local Ray head with the jobs API."""
    from recserve.ops.procs import StackError
    from recserve.ops.stack import Stack

    cfg = _cfg(config)
    try:
        info = Stack(cfg).up(with_ray=not no_ray)
    except StackError as e:
        _fail(e)
    console.print(f"redis  {redact(info.redis_url)}" + (" (started)" if info.redis_started else " (external)"))
    if info.ray_address:
        console.print(f"ray    {info.ray_address}  jobs API {info.dashboard_url}")
        console.print(
            f"submit: ray job submit --address {info.dashboard_url} --working-dir . -- "
            f"python -m pipelines.train_embeddings --help"
        )


@app.command()
def down(config: Path | None = ConfigOpt):
    """Stop what `recserve up` started (and nothing else)."""
    from recserve.ops.stack import Stack

    stopped = Stack(_cfg(config)).down()
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing (the stack was not up)"))


@app.command()
def status(config: Path | None = ConfigOpt, as_json: bool = typer.Option(False, "--json")):
    """Show whether the stack is up, and what is in the registry."""
    from recserve.ops.stack import Stack
    from recserve.registry import Registry

    cfg = _cfg(config)
    st = Stack(cfg).status()
    st["registry"] = {"uri": cfg.registry_uri, "artifacts": Registry(cfg.registry_uri, cfg.registry.keep).list()}
    if as_json:
        print(json.dumps(st, indent=2, default=str))
    else:
        console.print_json(json.dumps(st, default=str))
    if not st["running"]:
        raise typer.Exit(1)


def prepare(cfg: Config, movielens: Path | None = None, out=None):
    """The stack up and the registry filled: a dataset, embeddings, index and ranker (each reused
    when a previous run built it from the same inputs). Returns the registry (demo, fuzz). `out`:
    where the lines go (recserve.cli.quiet; default: all on the console)."""
    import time

    from recserve.cli.quiet import Plain
    from recserve.offline import jobs
    from recserve.offline.data import dataset_meta
    from recserve.ops.procs import StackError
    from recserve.ops.ray_head import ensure_ray
    from recserve.ops.stack import Stack
    from recserve.ranking.features import FEATURE_NAMES
    from recserve.registry import Registry, RegistryError
    from recserve.schemas import DataError

    out = out or Plain(console)
    try:
        info = Stack(cfg).up()
        out.stage(f"stack up: redis {redact(info.redis_url)}, ray {info.ray_address}, jobs API {info.dashboard_url}")
        ensure_ray(cfg)  # the dataset is generated on the stack's Ray too (Ray Data would start one of its own)
        reg = Registry(cfg.registry_uri, cfg.registry.keep)
        name = "movielens" if movielens else "generated"
        ds_dir = Path(cfg.data_dir) / "datasets" / name
        t = time.perf_counter()
        if not (ds_dir / "meta.json").exists():
            from recserve.cli.offline import prepare_dataset

            prepare_dataset(cfg, name, movielens, ds_dir)
            meta = dataset_meta(ds_dir)
            out.summary(
                f"dataset {name}: {meta['n_events']} events, {meta['n_users']} users, {meta['n_items']} items "
                f"({time.perf_counter() - t:.0f} s)"
            )
        else:
            out.stage(f"reusing dataset {ds_dir}")
        fp = jobs.dataset_fingerprint(ds_dir)
        emb = reg.latest("embeddings")
        seq = cfg.sequence.model_dump() if cfg.sequence.enabled else None
        if (
            emb is None
            or reg.manifest("embeddings", emb)["lineage"].get("dataset_fingerprint") != fp
            or reg.manifest("embeddings", emb).get("sequence") != seq
        ):  # trained before the sequence model
            t = time.perf_counter()
            with out.training():
                emb = jobs.train_embeddings(cfg, ds_dir, 0.0, reg)
            out.summary(f"embeddings {emb} published ({time.perf_counter() - t:.0f} s)")
        else:
            out.stage(f"reusing embeddings {emb}")
        idx = reg.latest("index")
        man = reg.manifest("index", idx) if idx is not None else {}
        if (
            idx is None
            or man["lineage"].get("embeddings") != emb
            or man.get("params") != cfg.index.model_dump(mode="json")
        ):  # another config: built again
            t = time.perf_counter()
            idx = jobs.build_index(cfg, emb, reg)
            out.summary(
                f"index {idx} published ({cfg.index.num_shards} {cfg.index.kind} shards, "
                f"{time.perf_counter() - t:.0f} s)"
            )
        else:
            out.stage(f"reusing index {idx}")
        rk = reg.latest("ranker")
        if (
            rk is None
            or reg.manifest("ranker", rk)["lineage"].get("embeddings") != emb
            or reg.manifest("ranker", rk).get("features") != FEATURE_NAMES
        ):  # another code's features
            t = time.perf_counter()
            with out.training():
                rk = jobs.train_ranker(cfg, ds_dir, 0.0, reg, emb)
            out.summary(f"ranker {rk} published ({time.perf_counter() - t:.0f} s)")
        else:
            out.stage(f"reusing ranker {rk}")
    except (StackError, DataError, RegistryError, ValueError) as e:
        out.fail(e)
    out.stage(f"ready: embeddings {emb}, index {idx}, ranker {rk} in {cfg.registry_uri}")
    return reg


@app.command()
def demo(
    movielens: Path | None = typer.Option(
        None, "--movielens", help="use this MovieLens folder instead of a generated world"
    ),
    no_serve: bool = typer.Option(False, "--no-serve", help="stop after the offline chain"),
    config: Path | None = ConfigOpt,
):
    """Bring the stack up, build a dataset, run the offline chain (reusing what a previous run
    built), deploy the serving application and serve until Ctrl-C. One line per stage; what Ray and
    the jobs print goes to <data_dir>/demo.log."""
    import ray

    from recserve.cli.quiet import Quiet

    cfg = _cfg(config)
    log = Path(cfg.data_dir) / "demo.log"
    with Quiet(log) as out:
        out.stage(f"recserve demo: what Ray and the jobs print goes to {log}")
        try:
            reg = prepare(cfg, movielens, out)
            if not no_serve:
                _serve_forever(cfg, reg, out)
        finally:
            if ray.is_initialized():  # inside: its threads print until it is shut down
                ray.shutdown()


def _serve_forever(cfg: Config, reg, out=None) -> None:
    """Deploy the application from `reg`, print how to call it, and wait until Ctrl-C (or SIGTERM)
    deletes it. `out`: where the lines go (recserve.cli.quiet; default: all on the console)."""
    import time as _time

    import ray
    from ray import serve

    from deployments.app import deploy
    from recserve.cli.quiet import Plain
    from recserve.ops.procs import port_is_free
    from recserve.ops.ray_head import ensure_ray

    out = out or Plain(console)
    if not port_is_free(cfg.serve.http_port, cfg.serve.http_host):
        out.fail(
            RuntimeError(
                f"port {cfg.serve.http_port} is taken: Serve cannot listen there. Stop what uses it or "
                f"set RECSERVE_SERVE__HTTP_PORT"
            )
        )
    ensure_ray(cfg)
    from deployments.app import colocated

    apart = [n for n, inproc in zip(("Ranker", "Bandit", "Explainer"), colocated(cfg).values()) if not inproc]
    out.stage(
        f"deploying the serving application (Ingress{''.join(', ' + n for n in apart)}, vector-index "
        f"shard actors, the stream supervisor and its aggregators on {cfg.stream.backend}; "
        f"{cfg.serve.ingress} ingress)..."
    )
    from recserve.streaming.eventlog import EventLogUnavailable

    try:
        url = deploy(cfg, reg.uri)
    except EventLogUnavailable as e:
        out.fail(e)
    from actors.supervisor import get_supervisor

    sup = get_supervisor(cfg)
    if reg.latest("embeddings") is not None:
        from recserve.artifacts import embedding_ids

        users, items = embedding_ids(reg)
        user, item = int(users[0]), int(items[0])
    else:
        user, item = 1, 1
        out.stage(
            "\nthe registry is empty: no generation is trained yet. recserve answers trending and new items "
            "(level 4) until one is: add items (PUT /v1/items) and post events, then `recserve lake train` and "
            "`recserve serve` again"
        )
    if cfg.auth.enabled:
        from recserve.auth import KeyStore

        kid, key = KeyStore(connect(cfg.redis_url, timeout=None)).create("demo", "admin")
        hdr = f" -H 'authorization: Bearer {key}'"
        out.stage(
            f"\nan API key with every scope was made for this session: {kid} (`recserve keys revoke {kid}` "
            f"ends it; `recserve keys create` makes narrower ones)"
        )
    else:
        hdr = ""
    out.stage(
        f"\nserving at {url}  (OpenAPI: {url}/docs; status page: {url}/ui"
        f"{'#key=' + key if cfg.auth.enabled else ''}). Try:\n"
    )
    out.raw(
        f"curl -s -X POST {url}/v1/recommend{hdr} -H 'content-type: application/json' "
        f'-d \'{{"user_id": {user}, "k": 5, "explain": true}}\''
    )
    out.raw(
        f"curl -s -X POST {url}/v1/events{hdr} -H 'content-type: application/json' "
        f'-d \'{{"events": [{{"user_id": {user}, "item_id": {item}, "event_type": "click"}}]}}\''
    )
    out.raw(f"curl -s {url}/v1/status{hdr}")
    if cfg.explainer.backend != "templates":
        out.stage(
            f"\nexplanations come from {cfg.explainer.model} ({cfg.explainer.backend}). Within its "
            f"{cfg.serve.explainer_budget_ms:.0f} ms deadline a model on the CPU explains with templates "
            f"(explanation.fallback says why) and goes on writing in the background: the same request a "
            f"few seconds later has the model's sentences (explanation.model names it)."
        )
    st = ray.get(sup.stats.remote()) if sup is not None else {"aggregators": []}
    out.stage(
        f"\n{len(st['aggregators'])} stream aggregators over {cfg.stream.partitions} partitions, supervised "
        f"inside the cluster (more when the lag passes {cfg.stream.scale_up_lag} events). This process "
        f"only waits: Ctrl-C deletes the application (its stream stops with it; the stack stays up: "
        f"`recserve down` stops it)."
    )
    import signal as _signal

    def _stop(signum, frame):  # SIGTERM (a supervisor, `kill`) stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    _signal.signal(_signal.SIGTERM, _stop)
    try:
        while True:
            _time.sleep(5)
    except KeyboardInterrupt:
        out.stage("deleting the serving application (and its stream)")
        serve.delete("recserve")
        serve.shutdown()
        ray.shutdown()

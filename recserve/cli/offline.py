"""`recserve eval`: the offline chain on a temporal split."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from recserve.cli.main import ConfigOpt, _cfg, _fail, app, console, err
from recserve.config import Config


def prepare_dataset(cfg: Config, dataset: str, data_dir: Path | None, out: Path, no_ray: bool = False) -> Path:
    from recserve.offline.data import generate_world, import_movielens

    if dataset == "movielens":
        if data_dir is None:
            cand = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-latest-small"
            data_dir = cand if cand.exists() else None
        if data_dir is None:
            raise ValueError(
                "--data-dir is required for --dataset movielens (a folder with ratings.csv and movies.csv)"
            )
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
def eval_cmd(
    dataset: str = typer.Option("movielens", help="movielens | generated"),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="MovieLens folder (ratings.csv + movies.csv, or .dat)"
    ),
    out: Path = typer.Option(Path("benchmarks/results/eval.json"), help="JSON report (.md/.png beside it)"),
    registry: str | None = typer.Option(
        None, help="registry for this run's artifacts (default <data_dir>/eval-registry/<dataset>)"
    ),
    config: Path | None = ConfigOpt,
):
    """Run the whole offline chain on a temporal split and print the comparison table:
    data -> train_embeddings -> build_index -> train_ranker -> evaluate."""
    from recserve.offline import jobs
    from recserve.registry import Registry, RegistryError
    from recserve.schemas import DataError

    cfg = _cfg(config)
    reg = Registry(registry or str(Path(cfg.data_dir) / "eval-registry" / dataset), cfg.registry.keep)
    try:
        for name in ("embeddings", "index", "ranker", "evaluation"):
            reg.check_writable(name)
        ds_dir = prepare_dataset(cfg, dataset, data_dir, Path(cfg.data_dir) / "datasets" / f"eval-{dataset}")
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


@app.command("simulate")
def simulate_cmd(
    policy: str = typer.Option(
        "bandit",
        help="the logging policy: bandit (the live Thompson bandit, "
        "learning from the simulated feedback) or uniform (its "
        "exploration places drawn uniformly)",
    ),
    impressions: int = typer.Option(50_000, min=1, help="impressions to log"),
    warmup: int = typer.Option(
        20_000,
        min=0,
        help="impressions the bandit learns from first; its posteriors then are the 'current bandit' judged",
    ),
    ranker_version: list[str] | None = typer.Option(
        None,
        "--ranker-version",
        help="another registry ranker version to judge (repeatable; default: every other loadable one)",
    ),
    dataset: Path | None = typer.Option(
        None, help="the generated world (default: the one the registry's embeddings were trained on)"
    ),
    seed: int = typer.Option(0),
    replications: int = typer.Option(
        0, min=0, help="more runs with seeds seed+1.. (the same pools): how often the intervals cover, the orders agree"
    ),
    out: Path = typer.Option(Path("benchmarks/results/ope.json"), help="JSON report (.md/.png beside it)"),
    config: Path | None = ConfigOpt,
):
    """Prove off-policy evaluation on ground truth: log impressions with propensities on a generated
    world (rewards drawn from its users' true preferences), estimate every candidate policy from the
    logs (IPS, SNIPS, doubly robust, 95 % intervals) and compare each with its true reward. Needs
    the registry of `recserve demo` (or any trained on a generated world)."""
    from recserve.artifacts import trained_on
    from recserve.offline import ope
    from recserve.registry import Registry, RegistryError
    from recserve.schemas import DataError

    cfg = _cfg(config)
    if policy not in ("bandit", "uniform"):
        _fail(ValueError(f"--policy must be bandit or uniform, not {policy!r}"))
    reg = Registry(cfg.registry_uri, cfg.registry.keep)
    try:
        versions = ranker_version or [v for v in reg.versions("ranker") if v != reg.resolve("ranker")]
        report = ope.simulate(
            cfg,
            dataset or trained_on(reg),
            reg,
            impressions,
            uniform=1.0 if policy == "uniform" else None,
            warmup=warmup,
            versions=versions,
            seed=seed,
            replications=replications,
            log=lambda m: console.print(f"[simulate] {m}", markup=False, highlight=False),
        )
        report["logging_policy"]["name"] = policy
        report["version"] = ope.publish(reg, report, {"source": "simulate"})
        ope.write(report, out)
    except (DataError, RegistryError, ValueError, FileNotFoundError) as e:
        _fail(e)
    print(ope.markdown(report))
    agree = ", ".join(f"{e} {'yes' if ok else 'no'}" for e, ok in report["order_agrees"].items())
    console.print(
        f"DR intervals cover every true reward: {'yes' if report['dr_covers_all'] else 'no'}; "
        f"order as the truth's: {agree}; wrote {out} (registry ope {report['version']})"
    )
    rep = report.get("replications")
    if rep:
        console.print(
            f"over {rep['runs']} runs: intervals cover the truth "
            + ", ".join(f"{e} {c:.0%}" for e, c in rep["coverage"].items())
            + "; order agrees "
            + ", ".join(f"{e} {c:.0%}" for e, c in rep["order_agrees"].items())
        )


@app.command(
    "import",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def import_cmd(ctx: typer.Context):
    """Your own events (and items) from parquet, CSV or JSON lines into a dataset directory the
    offline chain trains on: columns mapped by flags or a mapping file, event types mapped and
    weighted, each rejected row named. `recserve import --help` lists the flags (the same as
    `python -m pipelines.import_data`)."""
    from pipelines.import_data import main as import_main

    import_main(list(ctx.args), prog="recserve import")

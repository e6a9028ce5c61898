"""`recserve experiment ...`: start, stop and read an A/B/n experiment defined in recserve.yaml
(`experiments.<name>`; recserve.serving.experiments). The running experiment lives in the
application's Redis, so every ingress replica picks it up within a second, without a redeploy."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from recserve.cli.main import ConfigOpt, _cfg, _fail, _redis, app, console

experiment_app = typer.Typer(
    no_args_is_help=True,
    help="A/B/n experiments on live traffic (experiments.<name> in "
    "recserve.yaml): start, stop, status with per-arm reward, CTR "
    "and 95 % intervals; a guardrail stops an arm significantly "
    "worse than control.",
)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("start")
def start(
    name: str = typer.Argument(..., help="an experiment of the config: experiments.<name>"),
    replace: bool = typer.Option(False, "--replace", help="stop the experiment running now, if another"),
    config: Path | None = ConfigOpt,
):
    """Check the experiment (its ranker versions must be in the registry) and start it: every
    ingress replica assigns users to its arms within a second. Its figures start from zero."""
    from recserve.config import ConfigError
    from recserve.registry import Registry
    from recserve.serving import experiments as ex

    cfg = _cfg(config)
    try:
        state = ex.start(_redis(cfg, "experiments"), cfg, Registry(cfg.registry_uri, cfg.registry.keep), name, replace)
    except (ConfigError, FileNotFoundError) as e:
        _fail(e)
    arms = ", ".join(f"{a} {v['share']:g}" for a, v in state["config"]["arms"].items())
    console.print(f"experiment {name} started: {arms} (control {state['config']['control']})")


@experiment_app.command("stop")
def stop(
    name: str | None = typer.Argument(None, help="the running experiment's name (checked when given)"),
    config: Path | None = ConfigOpt,
):
    """Stop the running experiment: every user gets the serving settings again; its figures stay
    readable (`status NAME`) until it is started again."""
    from recserve.serving import experiments as ex

    cfg = _cfg(config)
    got = ex.stop(_redis(cfg, "experiments"), name)
    if got is None:
        _fail(RuntimeError(f"no experiment{' ' + repr(name) if name else ''} is running"))
    console.print(f"experiment {got['name']} stopped")


@experiment_app.command("status")
def status(
    name: str | None = typer.Argument(None, help="default: the running experiment"),
    as_json: bool = typer.Option(False, "--json"),
    config: Path | None = ConfigOpt,
):
    """Per arm: answers, items shown, feedback, reward per shown item and CTR with 95 % intervals,
    and whether it runs (or why the guardrail stopped it)."""
    from recserve.serving import experiments as ex

    cfg = _cfg(config)
    st = ex.status(_redis(cfg, "experiments"), name)
    if st is None:
        _fail(RuntimeError("no experiment is running; name one to read a stopped one's sums"))
    if as_json:
        print(json.dumps(st, indent=2))
        return
    if not st["running"]:
        console.print(f"experiment {st['name']} is not running; its sums: {st['stats']}")
        return
    t = Table(title=f"experiment {st['name']} (control {st['control']})")
    for col in (
        "arm",
        "share",
        "settings",
        "answers",
        "shown",
        "feedback",
        "reward/item [95 %]",
        "CTR [95 %]",
        "status",
    ):
        t.add_column(col)

    def ci(x):
        return (
            "-"
            if x["estimate"] is None
            else (
                f"{x['estimate']:.4f} [{x['lo']:.4f}, {x['hi']:.4f}]" if x["lo"] is not None else f"{x['estimate']:.4f}"
            )
        )

    for arm, a in st["arms"].items():
        t.add_row(
            arm,
            f"{a['share']:g}",
            json.dumps(a["settings"]) if a["settings"] else "as served",
            str(a["answers"]),
            str(a["shown"]),
            str(a["feedback"]),
            ci(a["reward_per_item"]),
            ci(a["ctr"]),
            a["status"] if a["status"] == "running" else f"stopped: {a['stopped']['reason']}",
        )
    console.print(t)

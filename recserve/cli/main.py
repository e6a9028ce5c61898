"""The typer app every command group registers on, and what the groups share."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import typer
from rich.console import Console

from recserve.config import Config, ConfigError, load_config
from recserve.redis_client import connect

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="recserve: real-time personalization served from a Ray cluster."
)
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


def _cfg(config: Path | None) -> Config:
    try:
        return load_config(config)
    except ConfigError as e:
        _fail(e)


def _redis(cfg: Config, what: str):
    """A client of the application's Redis, or a clear exit naming what lives there."""
    import redis

    r = connect(cfg.redis_url, timeout=None, connect_timeout=2)
    try:
        r.ping()
    except redis.RedisError as e:
        _fail(
            RuntimeError(
                f"Redis at {cfg.redis_shown} cannot be reached ({e}): {what} live there; `recserve up` "
                f"starts the embedded one, or set redis.url"
            )
        )
    return r


def _progress(what: str):
    """A progress printer: `[what] message` (markup off: the brackets are text, not a rich style)."""
    return lambda m: console.print(f"[{what}] {m}", markup=False, highlight=False)


def unwrap_help(t: typer.Typer) -> None:
    """Each command's help (its docstring) with the hard line breaks inside its paragraphs joined, in
    `t` and its groups: typer shows a docstring's line breaks as written, so `--help` broke its
    sentences mid-line. Paragraphs (blank lines) stay. Called once, after every group registered."""
    for c in t.registered_commands:
        doc = c.help if isinstance(c.help, str) else inspect.getdoc(c.callback)
        if doc:
            c.help = "\n\n".join(re.sub(r"\s*\n\s*", " ", p.strip()) for p in inspect.cleandoc(doc).split("\n\n"))
    for g in t.registered_groups:
        unwrap_help(g.typer_instance)


ConfigOpt = typer.Option(None, "--config", "-c", help="recserve.yaml (default ./recserve.yaml or $RECSERVE_CONFIG)")


def main() -> None:  # pragma: no cover
    app()

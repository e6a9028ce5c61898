"""`recserve registry ...`: inspect the artifact registry."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from recserve.cli.main import ConfigOpt, _cfg, console, registry_app


@registry_app.command("list")
def registry_list(config: Path | None = ConfigOpt, registry: str | None = typer.Option(None, "--registry")):
    """Artifacts, their versions and where `latest` points; then the generations (the loop's
    candidates) with their state and the gate's verdict and figures."""
    from recserve import generations
    from recserve.cli.loop import _generations_table
    from recserve.registry import Registry

    cfg = _cfg(config)
    reg = Registry(registry or cfg.registry_uri, cfg.registry.keep)
    t = Table("artifact", "latest", "versions")
    for name, info in sorted(reg.list().items()):
        t.add_row(name, str(info["latest"]), ", ".join(info["versions"]))
    console.print(t)
    rows = generations.table(reg)
    if rows:
        console.print(f"serving generation: {generations.serving_generation(reg) or '(versions published by hand)'}")
        _generations_table(rows)

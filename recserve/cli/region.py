"""`recserve region ...`: region operations (docs/runbook.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from recserve.cli.main import ConfigOpt, _cfg, _fail, console, region_app


@region_app.command("drain")
def region_drain(region: str = typer.Argument(..., help="this region's name, e.g. us-west-2"),
                 reason: str = typer.Option("", help="why, for /readyz and the runbook"),
                 undo: bool = typer.Option(False, "--undo", help="put the region back in rotation"),
                 config: Optional[Path] = ConfigOpt):
    """Take this region's routers out of the load balancer's rotation (/readyz answers 503 draining)."""
    import redis as _redis

    from recserve.ops.region import drain, undrain

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
    from recserve.ops.region import RegionError, shift
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

    from recserve.ops.region import lag

    cfg = _cfg(config)
    console.print_json(json.dumps(lag(_redis.Redis.from_url(cfg.redis_url), _redis.Redis.from_url(standby),
                                      cfg.stream.partitions)))

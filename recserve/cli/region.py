"""`recserve region ...`: region operations (docs/runbook.md). Each command parses its options and
calls one function of recserve.ops.region, region_stack (a region's stack on this machine) or
region_lb (the regions' load balancer)."""

from __future__ import annotations

import json
from pathlib import Path

import redis
import typer

from recserve.cli.main import ConfigOpt, _cfg, _fail, console, region_app
from recserve.ops.procs import StackError
from recserve.ops.region import RegionError

ERRORS = (RegionError, StackError, redis.RedisError)  # shown as `error: ...`, exit 2


def _pairs(values: list[str] | None, what: str, flag: str = "") -> list[tuple[str, str]]:
    """REGION=VALUE options as (region, value) pairs; `what` names the VALUE, `flag` the option, in the error."""
    out = []
    for x in values or []:
        name, _, val = x.partition("=")
        if not val:
            raise RegionError(f"{flag}{x!r}: write REGION={what}")
        out.append((name, val))
    return out


@region_app.command("drain")
def region_drain(
    region: str = typer.Argument(..., help="this region's name, e.g. us-west-2"),
    reason: str = typer.Option("", help="why, for /readyz and the runbook"),
    undo: bool = typer.Option(False, "--undo", help="put the region back in rotation"),
    config: Path | None = ConfigOpt,
):
    """Take this region's ingress replicas out of the load balancer's rotation (/readyz answers 503 draining)."""
    from recserve.ops.region import drain, undrain
    from recserve.redis_client import connect

    r = connect(_cfg(config).redis_url, timeout=None)
    if undo:
        console.print("back in rotation" if undrain(r) else "was not draining")
    else:
        console.print_json(json.dumps(drain(r, region, reason)))


@region_app.command("shift")
def region_shift(
    weights: list[str] = typer.Argument(..., help="REGION=WEIGHT ..., e.g. us-west-2=100 us-east-1=0"),
    out: Path = typer.Option(Path("traffic.json"), help="weights document for the DNS / LB tooling"),
    apply: bool = typer.Option(
        False,
        "--apply",
        help="also set them as the weights of the regions' load balancer running here (`region lb-up`)",
    ),
    config: Path | None = ConfigOpt,
):
    """Write the traffic shares per region (summing to 100) for the global load balancer; with --apply,
    set them on the load balancer running here too (the standby, its backup, still takes traffic only
    while no active region is up)."""
    from recserve.ops.region_lb import shift_traffic

    try:
        w = {name: float(val) for name, val in _pairs(weights, "WEIGHT")}
        res = shift_traffic(_cfg(config), w, out, apply)
    except (*ERRORS, ValueError) as e:
        _fail(e)
    console.print_json(json.dumps(res if apply else res["traffic"]))


@region_app.command("lag")
def region_lag(
    standby: str | None = typer.Option(
        None, "--standby", help="the standby's Redis URL, or the standby region run on this machine (eu-west-1)"
    ),
    mirror: list[str] | None = typer.Option(
        None, "--mirror", help="REGION=REDIS_URL of the two active regions (give it twice): the mirror's lag each way"
    ),
    config: Path | None = ConfigOpt,
):
    """How far the standby's event log is behind this (active) region's (--standby), or how far each
    active region's mirror of the other's events is behind, in events and seconds (--mirror twice)."""
    from recserve.ops.region import mirror_lag, standby_lag

    cfg = _cfg(config)
    try:
        if bool(standby) == bool(mirror):
            raise RegionError("give --standby URL, or --mirror REGION=URL twice")
        if standby:
            res = standby_lag(cfg, standby)
        else:
            pairs = [m.partition("=")[::2] for m in mirror]
            if len(pairs) != 2 or not all(url for _, url in pairs):
                raise RegionError("--mirror takes REGION=REDIS_URL, twice (the two active regions)")
            res = mirror_lag(cfg, pairs)
    except (*ERRORS, ValueError) as e:
        _fail(e)
    console.print_json(json.dumps(res))


@region_app.command("lb-config")
def region_lb_config(
    backend: list[str] | None = typer.Option(
        None,
        "--backend",
        help="REGION=HOST:PORT of a "
        "region's ingress (repeatable; default: each "
        "region of the files on this machine, "
        "us-west-2 127.0.0.1:8100, us-east-1 :8200, "
        "eu-west-1 :8300)",
    ),
    regions_dir: Path = typer.Option(None, "--regions", help="the region files (default: the repository's regions/)"),
    bind: str = typer.Option("127.0.0.1:8080", help="where the load balancer listens"),
    slowstart: int = typer.Option(
        60, min=1, help="seconds over which a region back in rotation ramps to its full weight"
    ),
    out: Path = typer.Option(Path("haproxy-regions.cfg"), help="the HAProxy configuration"),
):
    """An HAProxy configuration in front of the regions, from the region files: active regions
    weighted by their share, the standby a backup, health checks on /readyz (3 failures out, 5 passes
    back, then a slow start), a user's requests on one region (x-session-id hashed consistently)."""
    from recserve.ops.region_lb import config_for

    try:
        given = dict(_pairs(backend, "HOST:PORT", "--backend "))
        text, regions = config_for(given, bind, slowstart, regions_dir)
    except RegionError as e:
        _fail(e)
    out.write_text(text)
    console.print(f"wrote {out}: " + ", ".join(f"{r} {v['role']} {v['share']}%" for r, v in regions.items()))


@region_app.command("up")
def region_up(
    region: str = typer.Argument(..., help="a region of the region files: us-west-2, us-east-1, eu-west-1"),
    config: Path | None = ConfigOpt,
):
    """Start one region's stack on this machine — its own Redis, its own Ray head (own ports and
    temp dir under <data_dir>/<region>) — and deploy the application on it (HTTP on
    8100 / 8200 / 8300), from the shared registry. A region already running: an error, nothing started."""
    from actors.replicator import Replicator
    from deployments.app import deploy
    from recserve.ops.region_stack import up

    try:
        up(_cfg(config), region, deploy, Replicator, log=console.print)
    except ERRORS as e:
        _fail(e)


@region_app.command("promote")
def region_promote(
    region: str = typer.Argument(..., help="the standby, e.g. eu-west-1"), config: Path | None = ConfigOpt
):
    """Runbook, both active regions lost (or one lost and the survivor short of headroom): the warm
    standby stops following (its Redis keeps what it replicated), the application is deployed on it
    from the shared registry, and it mirrors events with any active region still running. The load
    balancer sends it traffic as its backup when no active region is up (`region shift` to give it a
    share otherwise)."""
    from actors.replicator import Replicator
    from deployments.app import deploy
    from recserve.ops.region_stack import promote_standby

    try:
        promote_standby(_cfg(config), region, deploy, Replicator, log=console.print)
    except ERRORS as e:
        _fail(e)


@region_app.command("down")
def region_down(region: str = typer.Argument(...), config: Path | None = ConfigOpt):
    """Stop one region's stack on this machine (its Ray head with the application, its Redis)."""
    from recserve.ops.region_stack import down

    try:
        stopped = down(_cfg(config), region)
    except ERRORS as e:
        _fail(e)
    console.print(f"region {region} stopped: " + (", ".join(stopped) if stopped else "nothing (it was not up)"))


# ------------------------------------------------------------------ the load balancer on this machine
@region_app.command("lb-up")
def region_lb_up(
    bind: str = typer.Option("127.0.0.1:8080", help="where the load balancer listens"),
    slowstart: int = typer.Option(
        60, min=1, help="seconds over which a region back in rotation ramps to its full weight"
    ),
    config: Path | None = ConfigOpt,
):
    """Start the regions' load balancer on this machine (HAProxy, `lb-config`'s configuration in front
    of the regions' ingresses 8100 / 8200 / 8300, its runtime API on a socket in <data_dir>/lb)."""
    from recserve.ops.region_lb import start_local

    try:
        lb = start_local(_cfg(config), bind, slowstart)
    except RegionError as e:
        _fail(e)
    console.print(f"regions' load balancer on {lb['url']} (pid {lb['pid']}; config {lb['config']})")


@region_app.command("lb-down")
def region_lb_down(config: Path | None = ConfigOpt):
    """Stop the regions' load balancer on this machine."""
    from recserve.ops.region_lb import local_lb

    console.print("load balancer stopped" if local_lb(_cfg(config)).stop() else "no load balancer was running")


@region_app.command("lb-status")
def region_lb_status(config: Path | None = ConfigOpt):
    """Each region as the load balancer sees it: UP, DOWN (failing /readyz), MAINT (taken out), its weight."""
    from recserve.ops.region_lb import status

    try:
        res = status(_cfg(config))
    except RegionError as e:
        _fail(e)
    console.print_json(json.dumps(res))


@region_app.command("failover")
def region_failover(
    region: str = typer.Argument(..., help="the region lost, e.g. us-west-2"),
    out: Path = typer.Option(Path("traffic.json"), help="the traffic shares after the failover"),
    config: Path | None = ConfigOpt,
):
    """Runbook, a region is lost (docs/runbook.md): take it out of the load balancer now and keep it
    out (its failing health checks take it out within 3 s anyway; this keeps it out when it flaps or
    comes back unready) until `recserve region return`, move its share of traffic to the other active
    regions (traffic.json), and show the survivors' readiness. Refused when no other active region is up."""
    from recserve.ops.region_lb import failover

    try:
        res = failover(_cfg(config), region, out)
    except RegionError as e:
        _fail(e)
    console.print_json(json.dumps(res))


@region_app.command("return")
def region_return(
    region: str = typer.Argument(..., help="the region coming back, e.g. us-west-2"),
    max_lag_s: float = typer.Option(
        1.0, help="the mirrors' lag, each way, under which it goes back (seconds of the oldest event not yet mirrored)"
    ),
    timeout: float = typer.Option(300.0, help="seconds to wait for readiness and the mirrors"),
    config: Path | None = ConfigOpt,
):
    """Runbook, recovery (after `recserve region up REGION`): wait until the region answers /readyz
    and the mirrors between it and every other running active region are caught up (what it
    acknowledged before it was lost reaches them, theirs reaches it), then put it back in the load
    balancer: 5 passing health checks bring it in and slow start ramps its weight up."""
    from recserve.ops.region_lb import return_region

    try:
        res = return_region(_cfg(config), region, max_lag_s, timeout)
    except RegionError as e:
        _fail(e)
    console.print_json(json.dumps(res))

"""`recserve region ...`: region operations (docs/runbook.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from recserve.cli.main import ConfigOpt, _cfg, _fail, console, region_app
from recserve.ops.region import REGION_DIR as REGION_FILES  # the region files (`python -m scripts.regions`)
from recserve.redis_client import connect

MIRROR_NAMESPACE = "recserve-mirror"  # the Replicator actors `region up` starts (named mirror-<source region>)


@region_app.command("drain")
def region_drain(
    region: str = typer.Argument(..., help="this region's name, e.g. us-west-2"),
    reason: str = typer.Option("", help="why, for /readyz and the runbook"),
    undo: bool = typer.Option(False, "--undo", help="put the region back in rotation"),
    config: Path | None = ConfigOpt,
):
    """Take this region's ingress replicas out of the load balancer's rotation (/readyz answers 503 draining)."""

    from recserve.ops.region import drain, undrain

    cfg = _cfg(config)
    r = connect(cfg.redis_url, timeout=None)
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
    from recserve.ops.region import RegionError, read_regions, shift

    try:
        w = {}
        for x in weights:
            name, _, val = x.partition("=")
            if not val:
                raise RegionError(f"{x!r}: write REGION=WEIGHT")
            w[name] = float(val)
        shares = shift(w, read_regions(REGION_FILES))
    except (RegionError, ValueError) as e:
        _fail(e)
    out.write_text(json.dumps(shares, indent=2))
    if apply:
        try:
            applied = _running_lb(config).set_weights(shares)
        except RegionError as e:
            _fail(e)
        console.print_json(json.dumps({"traffic": shares, "load_balancer_weights": applied}))
        return
    console.print_json(json.dumps(shares))


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
    import redis as _redis

    from recserve.ops.region import RegionError, lag

    cfg = _cfg(config)
    if bool(standby) == bool(mirror):
        _fail(RegionError("give --standby URL, or --mirror REGION=URL twice"))
    if standby:
        active_url, standby_url = cfg.redis_url, standby
        if "://" not in standby:  # a standby region on this machine: against the active region it follows
            try:
                active_url, standby_url = _followed(standby, config)
            except (RegionError, _redis.RedisError) as e:
                _fail(e)
        console.print_json(
            json.dumps(
                lag(connect(active_url, timeout=None), connect(standby_url, timeout=None), cfg.stream.partitions)
            )
        )
        return
    from recserve.ops.region import read_regions
    from recserve.ops.replication import EventMirror

    try:
        pairs = [m.partition("=")[::2] for m in mirror]
        if len(pairs) != 2 or not all(url for _, url in pairs):
            raise RegionError("--mirror takes REGION=REDIS_URL, twice (the two active regions)")
        known = read_regions(REGION_FILES)
        unknown = sorted({name for name, _ in pairs} - set(known))
        if unknown:
            raise RegionError(f"unknown regions {unknown}; the region files name {sorted(known)}")
        a, b = (
            {"region": name, "redis_url": url, "partitions": cfg.stream.partitions, "prefix": cfg.stream.topic}
            for name, url in pairs
        )
        out = {f"{s['region']} -> {d['region']}": EventMirror.between(s, d).lag_summary() for s, d in ((a, b), (b, a))}
    except (RegionError, ValueError, _redis.RedisError) as e:
        _fail(e)
    console.print_json(json.dumps(out))


def _followed(standby: str, config) -> tuple[str, str]:
    """(active's Redis URL, standby's) for a standby region on this machine and the region it follows."""
    from recserve.ops.region import RegionError, followed, read_regions, region_config

    cfg, regions = _cfg(config), read_regions(REGION_FILES)
    state, name = followed(cfg, standby, regions)
    if state["role"] != "slave":
        raise RegionError(f"{standby}'s Redis follows no region (it is a {state['role']}): not a running standby")
    if name is None:
        raise RegionError(f"{standby} follows {state['master']}, which is no region of this machine")
    return region_config(cfg, name, regions).redis_url, region_config(cfg, standby, regions).redis_url


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
    from recserve.ops.region import RegionError, lb_config, local_backends, read_regions

    try:
        regions = read_regions(regions_dir or REGION_FILES)
        given = {}
        for x in backend or []:
            name, _, addr = x.partition("=")
            if not addr:
                raise RegionError(f"--backend {x!r}: write REGION=HOST:PORT")
            given[name] = addr
        backends = given or local_backends(regions)
        text = lb_config(regions, backends, bind, slowstart)
    except RegionError as e:
        _fail(e)
    out.write_text(text)
    console.print(f"wrote {out}: " + ", ".join(f"{r} {v['role']} {v['share']}%" for r, v in regions.items()))


def _region_cfg(region: str, config):
    from recserve.ops.region import RegionError, read_regions, region_config

    try:
        return region_config(_cfg(config), region, read_regions(REGION_FILES))
    except RegionError as e:
        _fail(e)


@region_app.command("up")
def region_up(
    region: str = typer.Argument(..., help="a region of the region files: us-west-2, us-east-1, eu-west-1"),
    config: Path | None = ConfigOpt,
):
    """Start one region's stack on this machine — its own Redis, its own Ray head (own ports and
    temp dir under <data_dir>/<region>) — and deploy the application on it (HTTP on
    8100 / 8200 / 8300), from the shared registry. A region already running: an error, nothing started."""
    from recserve.ops.procs import StackError, port_is_free
    from recserve.ops.region import running
    from recserve.ops.stack import Stack

    rc = _region_cfg(region, config)
    stack = Stack(rc)
    prev = running(rc)
    if prev is not None:
        _fail(
            StackError(
                f"region {region} is already running (its Redis on port {rc.redis.port}, Ray at "
                f"{prev.ray_address}); `recserve region down {region}` stops it"
            )
        )
    busy = [
        p for p in (rc.redis.port, rc.ray.gcs_port, rc.ray.dashboard_port, rc.serve.http_port) if not port_is_free(p)
    ]
    if busy:
        _fail(StackError(f"region {region}'s ports {busy} are taken by something else: nothing was started"))
    try:
        info = stack.up()
    except StackError as e:
        _fail(e)
    from recserve.ops.region import read_regions

    if read_regions(REGION_FILES)[region]["role"] == "standby":
        _follow(region, rc, config)
        console.print(
            f"standby {region}: redis on {rc.redis.port}, ray at {info.ray_address}; nothing served until "
            f"`recserve region promote {region}`"
        )
        return
    console.print(f"region {region}: redis on {rc.redis.port}, ray at {info.ray_address}; deploying...")
    _deploy(rc, info.ray_address)
    _start_mirrors(region, rc, config)


def _deploy(rc, address: str) -> None:
    import ray

    from deployments.app import deploy

    ray.init(address=address, logging_level="ERROR")
    try:
        url = deploy(rc, rc.registry_uri)
    finally:
        ray.shutdown()
    console.print(f"serving on {url} (readiness: {url}/readyz)")


def _running_actives(region: str, config) -> list[tuple[str, object, object]]:
    """(name, config, stack state) of each active region other than `region` running on this machine."""
    from recserve.ops.region import read_regions, running_actives

    return running_actives(_cfg(config), region, read_regions(REGION_FILES))


def _follow(region: str, rc, config) -> None:
    """The standby's Redis replicates the first active region running here."""

    from recserve.ops.region import follow

    actives = _running_actives(region, config)
    if not actives:
        console.print(
            f"standby {region}: no active region runs here to follow; it follows one when started "
            f"again after one (`recserve region up us-east-1`)"
        )
        return
    name, oc, _ = actives[0]
    follow(connect(rc.redis_url, timeout=None), oc.redis.host, oc.redis.port, oc.redis.password)
    console.print(
        f"standby {region} follows {name}'s Redis (replication; `recserve region lag --standby "
        f"{region}` says how far behind)"
    )


def _start_mirrors(region: str, rc, config, promoted: bool = False) -> None:
    """The active regions already running and this one mirror each other's events: in each region's
    cluster a detached Replicator pulls the other's events in (cursors in its own Redis)."""
    import ray

    from actors.replicator import Replicator
    from recserve.ops.region import mirror_spec, read_regions
    from recserve.ops.stack import Stack

    if read_regions(REGION_FILES)[region]["role"] != "active" and not promoted:
        return
    for other, oc, prev in _running_actives(region, config):
        for src, dst, address in ((oc, rc, Stack(rc).read_state().ray_address), (rc, oc, prev.ray_address)):
            s_name, d_name = (other, region) if src is oc else (region, other)
            ray.init(address=address, namespace=MIRROR_NAMESPACE, logging_level="ERROR")
            try:
                Replicator.options(name=f"mirror-{s_name}", lifetime="detached", get_if_exists=True).remote(
                    mirror_spec(src, s_name), mirror_spec(dst, d_name)
                )
            finally:
                ray.shutdown()
        console.print(f"mirroring events both ways between {region} and {other}")


@region_app.command("promote")
def region_promote(
    region: str = typer.Argument(..., help="the standby, e.g. eu-west-1"), config: Path | None = ConfigOpt
):
    """Runbook, both active regions lost (or one lost and the survivor short of headroom): the warm
    standby stops following (its Redis keeps what it replicated), the application is deployed on it
    from the shared registry, and it mirrors events with any active region still running. The load
    balancer sends it traffic as its backup when no active region is up (`region shift` to give it a
    share otherwise)."""
    import redis as _redis

    from recserve.ops.region import RegionError, promote, read_regions, running

    if read_regions(REGION_FILES).get(region, {}).get("role") != "standby":
        _fail(RegionError(f"{region} is not the standby in the region files: only the standby is promoted"))
    rc = _region_cfg(region, config)
    info = running(rc)
    if info is None:
        _fail(RegionError(f"standby {region} is not running: `recserve region up {region}` first"))
    try:
        state = promote(connect(rc.redis_url, timeout=None))
    except _redis.RedisError as e:
        _fail(e)
    console.print(f"{region}'s Redis stopped following: {state}; deploying...")
    _deploy(rc, info.ray_address)
    _start_mirrors(region, rc, config, promoted=True)


@region_app.command("down")
def region_down(region: str = typer.Argument(...), config: Path | None = ConfigOpt):
    """Stop one region's stack on this machine (its Ray head with the application, its Redis)."""
    from recserve.ops.stack import Stack

    rc = _region_cfg(region, config)
    stopped = Stack(rc).down()
    stopped += _stop_mirrors_of(region, config)
    console.print(f"region {region} stopped: " + (", ".join(stopped) if stopped else "nothing (it was not up)"))


# ------------------------------------------------------------------ the load balancer on this machine
def _lb(config):
    from recserve.ops.region import LoadBalancer

    return LoadBalancer(Path(_cfg(config).data_dir) / "lb")


def _running_lb(config):
    lb = _lb(config)
    if not lb.pid():
        _fail(RuntimeError(f"no regions' load balancer runs here ({lb.dir}): start it with `recserve region lb-up`"))
    return lb


def _readyz(region: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a region's /readyz on this machine; 0 when it does not answer."""
    import urllib.error
    import urllib.request

    from recserve.ops.region import local_port

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{local_port(region)}/readyz", timeout=timeout) as resp:
            return resp.status, resp.read().decode()[:300]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:300]
    except (OSError, ValueError) as e:
        return 0, f"{type(e).__name__}: {e}"


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
    from recserve.ops.region import RegionError, local_backends, read_regions

    lb = _lb(config)
    try:
        regions = read_regions(REGION_FILES)
        url = lb.start(regions, local_backends(regions), bind, slowstart)
    except RegionError as e:
        _fail(e)
    console.print(f"regions' load balancer on {url} (pid {lb.pid()}; config {lb.cfg_path})")


@region_app.command("lb-down")
def region_lb_down(config: Path | None = ConfigOpt):
    """Stop the regions' load balancer on this machine."""
    console.print("load balancer stopped" if _lb(config).stop() else "no load balancer was running")


@region_app.command("lb-status")
def region_lb_status(config: Path | None = ConfigOpt):
    """Each region as the load balancer sees it: UP, DOWN (failing /readyz), MAINT (taken out), its weight."""
    lb = _running_lb(config)
    console.print_json(json.dumps({"url": lb.url(), "regions": lb.servers()}))


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
    from recserve.ops.region import RegionError, read_regions, shift

    lb = _running_lb(config)
    try:
        regions = read_regions(REGION_FILES)
        if region not in regions:
            raise RegionError(f"no region {region!r} in the region files (they name {sorted(regions)})")
        servers = lb.servers()
        survivors = [
            r
            for r, s in servers.items()
            if r != region and regions.get(r, {}).get("role") == "active" and s["status"].startswith("UP")
        ]
        if not survivors:
            states = {r: s["status"] for r, s in servers.items()}
            raise RegionError(
                f"no other active region is up in the load balancer ({states}): bring one up "
                f"(`recserve region up REGION`) before failing {region} over"
            )
        lb.set_state(region, "maint")
        shares = shift({r: regions[r]["share"] for r in survivors}, regions)
    except RegionError as e:
        _fail(e)
    out.write_text(json.dumps(shares, indent=2))
    console.print_json(
        json.dumps(
            {
                "out": region,
                "traffic": shares,
                "survivors": {r: _readyz(r)[0] for r in survivors},
                "load_balancer": {r: s["status"] for r, s in lb.servers().items()},
            }
        )
    )


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
    import time

    from recserve.ops.region import RegionError, mirror_spec, read_regions
    from recserve.ops.replication import EventMirror

    lb = _running_lb(config)
    rc = _region_cfg(region, config)
    regions = read_regions(REGION_FILES)
    t0 = time.time()
    while _readyz(region)[0] != 200:
        if time.time() - t0 > timeout:
            _fail(
                RegionError(
                    f"{region} is not ready after {timeout:.0f} s ({_readyz(region)}): is it up "
                    f"(`recserve region up {region}`)? it stays out of the load balancer"
                )
            )
        time.sleep(0.5)
    ready_s = time.time() - t0
    lags: dict = {}
    if regions[region]["role"] == "active":
        pairs = []
        for other, oc, _ in _running_actives(region, config):
            here, there = mirror_spec(rc, region), mirror_spec(oc, other)
            pairs += [
                EventMirror.between(here, there, socket_timeout=5),
                EventMirror.between(there, here, socket_timeout=5),
            ]
        while True:
            lags = {f"{m.src_region} -> {m.dst_region}": m.lag_summary()["seconds"] for m in pairs}
            if all(v <= max_lag_s for v in lags.values()):
                break
            if time.time() - t0 > timeout:
                _fail(
                    RegionError(
                        f"the mirrors have not caught up after {timeout:.0f} s (lag {lags}): "
                        f"{region} stays out of the load balancer; see `recserve region lag`"
                    )
                )
            time.sleep(0.5)
    try:
        lb.set_state(region, "ready")
    except RegionError as e:
        _fail(e)
    console.print_json(
        json.dumps(
            {
                "back": region,
                "ready_after_s": round(ready_s, 2),
                "caught_up_after_s": round(time.time() - t0, 2),
                "mirror_lag_s": lags,
                "load_balancer": {r: s["status"] for r, s in lb.servers().items()},
            }
        )
    )


def _stop_mirrors_of(region: str, config) -> list[str]:
    """The Replicators in the other running regions that pull this region's events in: stopped with
    it (a region brought down on purpose; one that is lost keeps its mirrors, which catch up when
    it returns)."""
    import ray

    stopped = []
    for other, _, prev in _running_actives(region, config):
        ray.init(address=prev.ray_address, namespace=MIRROR_NAMESPACE, logging_level="ERROR")
        try:
            actor = ray.get_actor(f"mirror-{region}")
            ray.get(actor.shutdown.remote(), timeout=15)
            ray.kill(actor, no_restart=True)
            stopped.append(f"the mirror of its events in {other}")
        except ValueError:  # no such actor
            pass
        finally:
            ray.shutdown()
    return stopped

"""A region's stack on this machine: brought up (its own Redis and Ray head, under
<data_dir>/<region>) with the application deployed on it, or, for the standby, following an active
region's Redis; the standby promoted; the event mirrors between active regions started and stopped;
the region brought down.

The entry points are handed in (this library never imports them): `deploy` is
deployments.app.deploy (config, registry URI -> the URL served), `replicator` the Replicator actor
class (actors/replicator.py). `log` receives a line per step (recserve.offline.jobs.Progress).
"""

from __future__ import annotations

from collections.abc import Callable

from recserve.ops.procs import StackError, port_is_free
from recserve.ops.region import (
    RegionError,
    follow,
    mirror_spec,
    promote,
    read_regions,
    region_config,
    running,
    running_actives,
)
from recserve.ops.stack import Stack
from recserve.redis_client import connect

MIRROR_NAMESPACE = "recserve-mirror"  # the Replicator actors `up` starts (named mirror-<source region>)

Deploy = Callable[..., str]  # deployments.app.deploy(config, registry_uri) -> URL


def up(cfg, region: str, deploy: Deploy, replicator, log: Callable[[str], None] = print) -> str | None:
    """Start `region`'s stack on this machine — its own Redis, its own Ray head (own ports and temp
    dir) — and deploy the application on it from the shared registry, then mirror events with
    every other active region running here; returns the URL it serves. The standby instead follows
    the first active region running here and serves nothing (None) until `promote_standby`. A
    region already running, or one whose ports something else holds: StackError, nothing started."""
    regions = read_regions()
    rc = region_config(cfg, region, regions)
    prev = running(rc)
    if prev is not None:
        raise StackError(
            f"region {region} is already running (its Redis on port {rc.redis.port}, Ray at "
            f"{prev.ray_address}); `recserve region down {region}` stops it"
        )
    busy = [
        p for p in (rc.redis.port, rc.ray.gcs_port, rc.ray.dashboard_port, rc.serve.http_port) if not port_is_free(p)
    ]
    if busy:
        raise StackError(f"region {region}'s ports {busy} are taken by something else: nothing was started")
    info = Stack(rc).up()
    if regions[region]["role"] == "standby":
        follow_an_active(cfg, region, log)
        log(
            f"standby {region}: redis on {rc.redis.port}, ray at {info.ray_address}; nothing served until "
            f"`recserve region promote {region}`"
        )
        return None
    log(f"region {region}: redis on {rc.redis.port}, ray at {info.ray_address}; deploying...")
    url = _deploy(rc, info.ray_address, deploy, log)
    start_mirrors(cfg, region, replicator, log)
    return url


def promote_standby(cfg, region: str, deploy: Deploy, replicator, log: Callable[[str], None] = print) -> str:
    """Runbook, both active regions lost (or one lost and the survivor short of headroom): the warm
    standby stops following (its Redis keeps what it replicated), the application is deployed on it
    from the shared registry, and it mirrors events with any active region still running. Returns
    the URL it serves."""
    regions = read_regions()
    if regions.get(region, {}).get("role") != "standby":
        raise RegionError(f"{region} is not the standby in the region files: only the standby is promoted")
    rc = region_config(cfg, region, regions)
    info = running(rc)
    if info is None:
        raise RegionError(f"standby {region} is not running: `recserve region up {region}` first")
    state = promote(connect(rc.redis_url, timeout=None))
    log(f"{region}'s Redis stopped following: {state}; deploying...")
    url = _deploy(rc, info.ray_address, deploy, log)
    start_mirrors(cfg, region, replicator, log, promoted=True)
    return url


def down(cfg, region: str) -> list[str]:
    """Stop `region`'s stack on this machine (its Ray head with the application, its Redis) and the
    mirrors of its events in the other running regions; returns what was stopped."""
    regions = read_regions()
    stopped = Stack(region_config(cfg, region, regions)).down()
    return stopped + stop_mirrors_of(cfg, region)


def _deploy(rc, address: str, deploy: Deploy, log: Callable[[str], None]) -> str:
    import ray

    ray.init(address=address, logging_level="ERROR")
    try:
        url = deploy(rc, rc.registry_uri)
    finally:
        ray.shutdown()
    log(f"serving on {url} (readiness: {url}/readyz)")
    return url


def follow_an_active(cfg, region: str, log: Callable[[str], None] = print) -> str | None:
    """The standby's Redis replicates the first active region running here; returns its name (None
    when none runs)."""
    regions = read_regions()
    actives = running_actives(cfg, region, regions)
    if not actives:
        log(
            f"standby {region}: no active region runs here to follow; it follows one when started "
            f"again after one (`recserve region up us-east-1`)"
        )
        return None
    name, oc, _ = actives[0]
    rc = region_config(cfg, region, regions)
    follow(connect(rc.redis_url, timeout=None), oc.redis.host, oc.redis.port, oc.redis.password)
    log(
        f"standby {region} follows {name}'s Redis (replication; `recserve region lag --standby "
        f"{region}` says how far behind)"
    )
    return name


def start_mirrors(cfg, region: str, replicator, log: Callable[[str], None] = print, promoted: bool = False) -> None:
    """The active regions already running and this one mirror each other's events: in each region's
    cluster a detached `replicator` actor pulls the other's events in (cursors in its own Redis)."""
    import ray

    regions = read_regions()
    if regions[region]["role"] != "active" and not promoted:
        return
    rc = region_config(cfg, region, regions)
    for other, oc, prev in running_actives(cfg, region, regions):
        for src, dst, address in ((oc, rc, Stack(rc).read_state().ray_address), (rc, oc, prev.ray_address)):
            s_name, d_name = (other, region) if src is oc else (region, other)
            ray.init(address=address, namespace=MIRROR_NAMESPACE, logging_level="ERROR")
            try:
                replicator.options(name=f"mirror-{s_name}", lifetime="detached", get_if_exists=True).remote(
                    mirror_spec(src, s_name), mirror_spec(dst, d_name)
                )
            finally:
                ray.shutdown()
        log(f"mirroring events both ways between {region} and {other}")


def stop_mirrors_of(cfg, region: str) -> list[str]:
    """The Replicators in the other running regions that pull this region's events in: stopped with
    it (a region brought down on purpose; one that is lost keeps its mirrors, which catch up when
    it returns)."""
    import ray

    stopped = []
    for other, _, prev in running_actives(cfg, region, read_regions()):
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

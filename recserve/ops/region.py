"""The regions, and what can be automated on our side of a region change (the traffic split itself
lives in the global load balancer / GeoDNS; see docs/runbook.md). Here: the regions as the region
files and the table describe them, each region's config on one machine, and the operations on a
region's Redis:

  drain    the region's ingress replicas answer /readyz with 503 {"draining": true}, so the load balancer's
           health checks take it out of rotation while requests in flight finish; `undrain` reverses it
  shift    the shares per region (summing to 100) for the load balancer, checked against the known regions
  lag      how far a standby's Redis is behind an active one's: events per partition and the age
           of the newest event it lacks (`standby_lag`, `mirror_lag`: the two views `region lag` shows)
  follow / promote  the warm standby's Redis replicating an active region's, and stopping

Beside it: region_stack (a region's stack on this machine up and down, the standby promoted, the
event mirrors between regions) and region_lb (the regions' load balancer: its HAProxy, failover and
return).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import yaml

from recserve import keys
from recserve.redis_client import connect

DRAIN_KEY = keys.REGION_DRAIN


class RegionError(ValueError):
    pass


def drain(client, region: str, reason: str = "") -> dict:
    state = {"draining": True, "region": region, "since": time.time(), "reason": reason}
    client.set(DRAIN_KEY, json.dumps(state))
    return state


def undrain(client) -> bool:
    return bool(client.delete(DRAIN_KEY))


def draining(client) -> dict | None:
    raw = client.get(DRAIN_KEY)
    return json.loads(raw) if raw else None


async def adraining(aclient) -> dict | None:
    """`draining` through an asyncio client (the ingress's /readyz)."""
    raw = await aclient.get(DRAIN_KEY)
    return json.loads(raw) if raw else None


def shift(weights: dict[str, float], regions: dict[str, dict]) -> dict[str, int]:
    """Integer shares per region (summing to 100) for the load balancer; a standby may receive a
    share only when it is named explicitly."""
    unknown = sorted(set(weights) - set(regions))
    if unknown:
        raise RegionError(f"unknown regions {unknown}; known: {sorted(regions)}")
    if any(w < 0 for w in weights.values()):
        raise RegionError("weights must be >= 0")
    total = sum(weights.values())
    if total <= 0:
        raise RegionError("at least one region must receive traffic")
    shares = {r: int(round(100 * weights.get(r, 0) / total)) for r in regions}
    top = max(shares, key=lambda r: shares[r])
    shares[top] += 100 - sum(shares.values())  # rounding: the largest share absorbs it
    return shares


def lag(active, standby, partitions: int, prefix: str = "events") -> dict:
    """Replication lag of a standby's event log behind the active region's."""
    out, worst_s = {}, 0.0
    for p in range(partitions):
        key = keys.event_stream(p, prefix)
        trimmed = keys.event_trimmed(p, prefix)  # entries the supervisor trimmed still count as appended
        n_a = int(active.xlen(key)) + int(active.get(trimmed) or 0)
        n_s = int(standby.xlen(key)) + int(standby.get(trimmed) or 0)
        behind = max(0, n_a - n_s)
        age = 0.0
        if behind:
            last_s = standby.xrevrange(key, count=1)
            after = f"({last_s[0][0].decode()}" if last_s else "-"
            first_missing = active.xrange(key, min=after, max="+", count=1)
            if first_missing:
                age = max(0.0, time.time() - int(first_missing[0][0].decode().split("-")[0]) / 1000)
        worst_s = max(worst_s, age)
        out[str(p)] = {"active": n_a, "standby": n_s, "behind": behind, "oldest_missing_age_s": round(age, 3)}
    return {"partitions": out, "events_behind": sum(v["behind"] for v in out.values()), "lag_s": round(worst_s, 3)}


def standby_lag(cfg, standby: str) -> dict:
    """`lag` of a standby: `standby` is its Redis URL (against this config's Redis), or the name of a
    standby region run on this machine (against the active region of this machine it follows)."""
    active_url, standby_url = cfg.redis_url, standby
    if "://" not in standby:
        active_url, standby_url = followed_urls(cfg, standby)
    return lag(connect(active_url, timeout=None), connect(standby_url, timeout=None), cfg.stream.partitions)


def mirror_lag(cfg, pairs: list[tuple[str, str]]) -> dict:
    """How far each of two active regions' mirror of the other's events is behind, in events and
    seconds: {"A -> B": lag summary, "B -> A": ...}; `pairs`: (region, its Redis URL) of the two."""
    from recserve.ops.replication import EventMirror

    known = read_regions()
    unknown = sorted({name for name, _ in pairs} - set(known))
    if unknown:
        raise RegionError(f"unknown regions {unknown}; the region files name {sorted(known)}")
    a, b = (
        {"region": name, "redis_url": url, "partitions": cfg.stream.partitions, "prefix": cfg.stream.topic}
        for name, url in pairs
    )
    return {f"{s['region']} -> {d['region']}": EventMirror.between(s, d).lag_summary() for s, d in ((a, b), (b, a))}


# ------------------------------------------------------------------ the region files
REGION_DIR = Path(__file__).resolve().parents[2] / "regions"  # written by `python -m scripts.regions`
REGION_HEADER = re.compile(
    r"^# (?P<name>[a-z0-9-]+): (?P<role>active|standby) region, (?P<share>\d+)% of traffic\.$", re.M
)


REGION_TABLE = REGION_DIR / "table.yaml"  # the regions' roles, shares, zones and images


def region_table(path: str | Path = REGION_TABLE) -> tuple[dict[str, dict], float]:
    """({region: {role, share, zones, image}}, standby floor) from the region table (regions/table.yaml),
    checked: every region active or standby, the active regions' shares summing to 1."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RegionError(f"cannot read the region table {path}: {e}") from e
    regions = raw.get("regions") or {}
    for name, o in regions.items():
        missing = sorted({"role", "share", "zones", "image"} - set(o))
        if missing or o["role"] not in ("active", "standby"):
            raise RegionError(f"{path}: region {name!r} needs role (active|standby), share, zones, image; has {o}")
    active = sum(float(o["share"]) for o in regions.values() if o["role"] == "active")
    if not regions or abs(active - 1.0) > 1e-9:
        raise RegionError(f"{path}: the active regions' shares must sum to 1 (they sum to {active})")
    return regions, float(raw.get("standby_floor", 0.25))


def region_files(directory=REGION_DIR) -> list[Path]:
    """The region files (regions/<region>.yaml, the `ray up` file of each region), without the table."""
    return sorted(f for f in Path(directory).glob("*.yaml") if f.name != REGION_TABLE.name)


def read_regions(directory=REGION_DIR) -> dict[str, dict]:
    """{region: {role, share}} from the region files (regions/<region>.yaml, written by
    `python -m scripts.regions`, whose header says each region's role and share of traffic)."""
    out = {}
    for f in region_files(directory):
        m = REGION_HEADER.search(f.read_text())
        if m is None:
            raise RegionError(
                f"{f} has no '# <region>: <role> region, <share>% of traffic.' header: regenerate "
                f"the region files with `python -m scripts.regions`"
            )
        if m["name"] != f.stem:
            raise RegionError(f"{f} describes region {m['name']!r}, not {f.stem!r}")
        out[m["name"]] = {"role": m["role"], "share": int(m["share"])}
    if not out:
        raise RegionError(f"no region files (*.yaml) in {directory}")
    return out


# ------------------------------------------------------------------ regions on one machine
LOCAL_SLOT = {"us-west-2": 1, "us-east-1": 2, "eu-west-1": 3}  # each region's ports on one machine


def local_port(region: str) -> int:
    """The HTTP port of a region run on this machine (`recserve region up`)."""
    return 8000 + 100 * LOCAL_SLOT[region]


def local_backends(regions: dict[str, dict]) -> dict[str, str]:
    """REGION -> HOST:PORT of each region of the files run on this machine (the load balancer's servers)."""
    return {r: f"127.0.0.1:{local_port(r)}" for r in regions if r in LOCAL_SLOT}


def running(rc):
    """The stack state of a region on this machine when it runs (its Redis answers, its Ray is there), else None."""
    from recserve.ops.stack import Stack

    st = Stack(rc)
    info = st.read_state()
    return info if info is not None and st._alive(info) else None


def running_actives(cfg, region: str, regions: dict[str, dict]) -> list[tuple[str, object, object]]:
    """(name, config, stack state) of each active region other than `region` running on this machine."""
    out = []
    for other, o in regions.items():
        if other == region or o["role"] != "active":
            continue
        oc = region_config(cfg, other, regions)
        info = running(oc)
        if info is not None:
            out.append((other, oc, info))
    return out


def followed(cfg, standby: str, regions: dict[str, dict]) -> tuple[dict, str | None]:
    """(the standby's replication state, the region of this machine whose Redis it follows, or None)."""

    sc = region_config(cfg, standby, regions)
    state = replication(connect(sc.redis_url, timeout=5))
    if state["role"] != "slave":
        return state, None
    for name in regions:
        if name in LOCAL_SLOT:
            oc = region_config(cfg, name, regions)
            if state["master"] == f"{oc.redis.host}:{oc.redis.port}":
                return state, name
    return state, None


def followed_urls(cfg, standby: str) -> tuple[str, str]:
    """(active's Redis URL, standby's) for a standby region on this machine and the region it follows."""
    regions = read_regions()
    state, name = followed(cfg, standby, regions)
    if state["role"] != "slave":
        raise RegionError(f"{standby}'s Redis follows no region (it is a {state['role']}): not a running standby")
    if name is None:
        raise RegionError(f"{standby} follows {state['master']}, which is no region of this machine")
    return region_config(cfg, name, regions).redis_url, region_config(cfg, standby, regions).redis_url


def region_config(cfg, region: str, regions: dict[str, dict]):
    """The config of one region's stack on this machine: its own data dir (Redis AOF, Ray temp dir)
    under <data_dir>/<region>, its own Redis, Ray and HTTP ports, the shared registry."""
    if region not in regions:
        raise RegionError(f"no region {region!r} in the region files (they name {sorted(regions)})")
    if region not in LOCAL_SLOT:
        raise RegionError(f"region {region!r} has no ports on this machine (known: {sorted(LOCAL_SLOT)})")
    from recserve.config import redis_password

    i = LOCAL_SLOT[region]
    reg = cfg.registry_uri if "://" in cfg.registry_uri else str(Path(cfg.registry_uri).resolve())
    rc = cfg.model_copy(
        update={
            "data_dir": Path(cfg.data_dir).resolve() / region,  # short: Ray caps socket paths at 107 bytes
            "redis": cfg.redis.model_copy(update={"port": cfg.redis.port + 10 * i, "password": None, "url": None}),
            "ray": cfg.ray.model_copy(
                update={
                    "address": None,
                    "gcs_port": cfg.ray.gcs_port + 10 * i,
                    "dashboard_port": cfg.ray.dashboard_port + i,
                }
            ),
            "registry": cfg.registry.model_copy(update={"uri": reg}),
            "serve": cfg.serve.model_copy(update={"http_port": local_port(region)}),
        }
    )
    rc.redis.password = redis_password(rc, {})  # the region's own (its data dir's), once it has run
    return rc


def mirror_spec(rc, region: str) -> dict:
    """What a Replicator needs of one region's event log (actors/replicator.py)."""
    return {"region": region, "redis_url": rc.redis_url, "partitions": rc.stream.partitions, "prefix": rc.stream.topic}


def kill_region(rc) -> list[int]:
    """A region's stack killed hard (SIGKILL), as losing its machines would: its Redis, every process of
    its Ray cluster (the application, its ingress, the mirrors running there). Returns the pids."""
    import os
    import signal

    from recserve.ops.ray_head import ray_processes
    from recserve.ops.stack import Stack

    info = Stack(rc).read_state()
    if info is None:
        raise RegionError(f"no stack state for this region in {rc.data_dir}: is it up?")
    pids = [info.redis_pid] if info.redis_pid else []  # Redis first: from then on nothing more is acknowledged
    pids += [p.pid for p in ray_processes(info.ray_temp_dir)] if info.ray_temp_dir else []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


# ------------------------------------------------------------------ the warm standby
def follow(standby, active_host: str, active_port: int, active_password: str | None = None) -> None:
    """Make the standby's Redis a replica of an active region's (Redis replication: the event log,
    features, contexts, bandit and keys follow it; the registry is shared and the index is built from
    it when the standby is promoted). The standby's own data is replaced by the active's."""
    if active_password:
        standby.config_set("masterauth", active_password)
    standby.execute_command("REPLICAOF", active_host, str(active_port))


def replication(client) -> dict:
    """A Redis' replication state: {role, master, link (up/down), offset}."""
    info = client.info("replication")
    out = {"role": info.get("role")}
    if info.get("role") == "slave":
        out.update(
            master=f"{info.get('master_host')}:{info.get('master_port')}",
            link=info.get("master_link_status"),
            offset=info.get("slave_repl_offset"),
        )
    else:
        out.update(replicas=info.get("connected_slaves", 0), offset=info.get("master_repl_offset"))
    return out


def promote(standby) -> dict:
    """The standby's Redis stops following and takes writes (what it holds is kept)."""
    standby.execute_command("REPLICAOF", "NO", "ONE")
    return replication(standby)

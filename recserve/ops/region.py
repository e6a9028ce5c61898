"""What can be automated on our side of a region change (the traffic split itself lives in the
global load balancer / GeoDNS; see docs/runbook.md):

  drain    the region's routers answer /readyz with 503 {"draining": true}, so the load balancer's
           health checks take it out of rotation while requests in flight finish; `undrain` reverses it
  shift    the weights document for the load balancer (shares per region, summing to 100), checked
           against the known regions, written as JSON for the DNS / LB tooling to apply
  lag      how far a standby's Redis is behind an active one's: events per partition and the age
           of the newest event it lacks
"""

from __future__ import annotations

import json
import time

from recserve import keys

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
    """`draining` through an asyncio client (the router's /readyz)."""
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
    shares[top] += 100 - sum(shares.values())   # rounding: the largest share absorbs it
    return shares


def lag(active, standby, partitions: int, prefix: str = "events") -> dict:
    """Replication lag of a standby's event log behind the active region's."""
    out, worst_s = {}, 0.0
    for p in range(partitions):
        key = keys.event_stream(p, prefix)
        trimmed = keys.event_trimmed(p, prefix)   # entries the supervisor trimmed still count as appended
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
    return {"partitions": out, "events_behind": sum(v["behind"] for v in out.values()),
            "lag_s": round(worst_s, 3)}

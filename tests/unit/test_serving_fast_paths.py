"""The serving path's fast implementations give what the plain ones give: the fused numpy ranker
against the torch ensemble it was built from, the co-visitation gather against scipy's slicing;
and serving loads no offline code."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recserve.ranking.features import FEATURE_NAMES, ItemStats
from recserve.ranking.ranker import FusedEnsemble, RankerNet, ServingRanker, save_model


def _model(members: int = 3, seed: int = 0) -> RankerNet:
    torch.manual_seed(seed)
    m = RankerNet(len(FEATURE_NAMES), 16, members)
    with torch.no_grad():
        m.mean.copy_(torch.randn(len(FEATURE_NAMES)))
        m.std.copy_(torch.rand(len(FEATURE_NAMES)) + 0.5)
        m.members[0][2].weight[0, :4] = 1e-40  # subnormal weights, as weight decay leaves them
    return m.eval()


def test_fused_ensemble_scores_like_the_torch_module():
    m = _model()
    X = np.random.default_rng(1).normal(size=(257, len(FEATURE_NAMES))).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(X)).numpy()
    got = FusedEnsemble(m)(X)
    assert got.shape == (257,) and np.allclose(got, want, atol=1e-5)


def test_serving_ranker_on_cpu_scores_several_lists_in_one_pass(tmp_path):
    m = _model(members=2, seed=3)
    save_model(m, tmp_path / "ranker.pt", {})
    r = ServingRanker({"model_path": str(tmp_path / "ranker.pt"), "version": "v7"}, device="cpu")
    assert r.fused is not None
    rng = np.random.default_rng(2)
    lists = [rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32) for n in (5, 200, 1)]
    out = r.score_lists(lists)
    with torch.no_grad():
        for x, (s, v) in zip(lists, out):
            assert v == "v7" and np.allclose(s, m(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_covisit_gather_equals_sparse_slicing():
    rng = np.random.default_rng(0)
    n = 400
    m = sp.random(n, n, density=0.05, format="csr", random_state=1, dtype=np.float32)
    stats = ItemStats.from_events(
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros(n, np.float32),
        np.zeros(n, np.int64),
        np.zeros((n, 4), np.float32),
        m,
    )
    for _ in range(30):
        rows = rng.integers(0, n, size=rng.integers(0, 40))  # rows may repeat
        cols = rng.choice(n, size=rng.integers(1, 150), replace=False)
        want = np.asarray(m[rows][:, cols].sum(axis=0)).ravel()
        assert np.allclose(stats.covisit_sums(rows, cols), want, atol=1e-5)
    assert (stats._colmap == -1).all()  # the scratch map is left clean


def test_serving_imports_no_offline_code():
    code = (
        "import sys; import deployments.app, deployments.ingress, recserve.serving.wiring, "
        "recserve.serving.service, recserve.serving.recommender, recserve.explain.core; "
        "bad = sorted(m for m in sys.modules if m.startswith('recserve.offline')); print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]

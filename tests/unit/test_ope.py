"""Off-policy evaluation on a small synthetic world whose truth is known: the live bandit logs,
the estimators judge other policies from those logs."""

import numpy as np

from recserve.offline import ope


def _pool(U=150, C=20, seed=0) -> ope.Pool:
    rng = np.random.default_rng(seed)
    truth = np.sort(rng.uniform(0.05, 0.6, size=(U, C)), axis=1)[:, ::-1]  # the ranker's order is right
    noisy = truth + rng.normal(0, 0.1, size=truth.shape)  # a reward model's input
    pop = rng.uniform(0, 100, size=(U, C))
    feats = np.stack([noisy, np.log1p(pop), np.broadcast_to(np.arange(C), (U, C))], axis=2)
    items = np.stack([rng.permutation(500)[:C] for _ in range(U)])
    return ope.Pool(np.arange(U), items, feats, {"v1": -np.arange(C) + np.zeros((U, 1)), "v0": noisy}, pop, "v1", truth)


def test_the_estimators_recover_each_policys_true_reward_from_the_bandits_logs():
    pool = _pool()
    sim = ope.Simulator(pool, k=4, share=0.5, uniform=0.2, seed=3)
    sim.run(2000, log=lambda m: None)
    a, b = sim.posteriors()
    logs = sim.run(8000, log=lambda m: None)
    # kept 2 (propensity 1), explored 2: 1 / G, G the redraws until picked again (1 when at once)
    assert (logs.propensity[:, :2] == 1).all() and (logs.propensity[:, 2:] < 1).mean() > 0.5
    q = ope.reward_models(pool, logs)
    out = {}
    for name, M in ope.policies(pool, a, b, 4, 0.5, 0.2).items():
        assert np.allclose(M.sum(1), 4)  # every policy shows k items
        est = ope.estimate(M, logs, q)
        truth = ope.true_reward(M, pool.truth, 4)
        out[name] = truth
        for e in ("ips", "snips", "dr"):
            assert abs(est[e]["estimate"] - truth) < 4 * est[e]["se"] + 0.005, (name, e, est[e], truth)
        assert est["dr"]["se"] <= est["ips"]["se"] * 1.05  # the reward model helps (or at worst does not hurt)
    assert out["greedy_ranker"] > out["random"] > out["popularity"] - 0.05
    # running a policy measures what its true reward says
    m = ope.measured_reward(ope.top_k_marginals(pool.scores["v1"], 4), pool.truth, 4, 20_000)
    assert abs(m["estimate"] - out["greedy_ranker"]) < 4 * m["se"]


def test_shown_items_outside_the_pool_weigh_nothing():
    logs = ope.Logs(
        np.array([0, 1]),
        np.array([[0, 1], [-1, 2]]),
        np.array([[1.0, 1.0], [0.5, 0.5]]),
        np.array([[1.0, 0.0], [1.0, 1.0]]),
        2,
    )
    M = np.zeros((3, 20))
    M[:, :2] = 1.0
    est = ope.estimate(M, logs, np.zeros((2, 20)))
    # impression 0: item 0 (w 1, reward 1); impression 1: the unknown item counts nothing, item 2 is not M's
    assert np.isclose(est["ips"]["estimate"], (1.0 / 2 + 0.0) / 2)


def test_the_report_renders_with_and_without_truth(tmp_path):
    p = {
        "ips": {"estimate": 0.5, "lo": 0.4, "hi": 0.6},
        "snips": {"estimate": 0.5, "lo": 0.4, "hi": 0.6},
        "dr": {"estimate": 0.5, "lo": 0.45, "hi": 0.55},
    }
    sim = {
        "impressions": 10,
        "true_order": ["a"],
        "policies": {"a": {**p, "true_reward": 0.52, "covered": {"dr": True}}},
    }
    live = {"impressions": 10, "order": {"dr": ["a"]}, "policies": {"a": p}}
    assert "0.5200" in ope.markdown(sim) and "| yes |" in ope.markdown(sim)
    assert "true reward" not in ope.markdown(live)
    ope.write(live, tmp_path / "ope.json")
    assert (tmp_path / "ope.png").stat().st_size > 1000 and (tmp_path / "ope.md").exists()

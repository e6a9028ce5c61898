"""The bandit's propensities without Redis: the Beta draws they are made of have the policy's
distribution, and 1 / propensity (the fresh draws until the policy picks the item again) is
unbiased for 1 / the probability that the policy shows the item."""

from __future__ import annotations

import numpy as np

from recserve.ranking.bandit import ThompsonBandit, beta_draws


def test_beta_draws_have_the_beta_distribution_on_both_paths():
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0.5, 3.0, 1.0, 40.0])
    b = np.array([1.0, 0.7, 2.0, 9.0, 300.0])  # (1, 1) uniform, (0.5, 0.7) by the Gamma ratio, the others by rng.beta
    x = beta_draws(rng, a, b, 200_000)
    assert x.shape == (200_000, 5) and ((x >= 0) & (x <= 1)).all()
    mean = a / (a + b)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    assert np.allclose(x.mean(axis=0), mean, atol=4 * np.sqrt(var / 200_000) + 1e-4)
    assert np.allclose(x.var(axis=0), var, rtol=0.03)


def test_one_over_the_propensity_is_unbiased_for_one_over_the_policys_probability():
    bandit = ThompsonBandit(client=None, share=0.2, seed=1, uniform=0.1, top_n=12)
    ranked = list(range(12))
    a = np.array([1.0] * 6 + [5.0, 2.0, 1.0, 0.8, 30.0, 1.0])
    b = np.array([1.0] * 6 + [60.0, 3.0, 9.0, 0.9, 40.0, 1.0])
    n_keep = 4  # one exploration slot (k = 5) among the 8 candidates after the 4 kept
    rest = np.arange(n_keep, 12)
    # the policy's probability of picking each candidate for the slot, by brute force with numpy's beta
    rng = np.random.default_rng(2)
    n = 400_000
    th = rng.beta(a[rest], b[rest], size=(n, len(rest)))
    flat = rng.random(n) < bandit.uniform
    th[flat] = rng.random((int(flat.sum()), len(rest)))
    p = np.bincount(th.argmax(axis=1), minlength=len(rest)) / n
    for j in (2, 5, 0):  # a learnt item (5, 60), one with a and b under 1 (0.8, 0.9), one at the prior (1, 1)
        item = ranked[int(rest[j])]
        chosen, explored = ranked[:n_keep] + [item], [False] * n_keep + [True]
        inv = [
            1.0 / bandit.propensities(ranked, chosen, explored, a, b, rng=np.random.default_rng(100 + i))[-1]
            for i in range(3000)
        ]
        # G is geometric with mean 1 / p: its mean over 3000 runs within 4 standard errors
        se = np.sqrt((1 - p[j]) / p[j] ** 2 / 3000)
        assert abs(np.mean(inv) - 1 / p[j]) < 4 * se, (j, np.mean(inv), 1 / p[j])

"""Off-policy evaluation of slate policies from the bandit's logged impressions.

What is estimated: a policy's reward per shown item (the experiments' figure): the expected reward
of a slate of k, divided by k. The logs hold, per impression, the context (the user), the shown
items with their propensities (the probability that the logging policy shows the item in this
context: 1 for the ranker's kept places, 1 / G for an explored one, recserve.ranking.bandit) and
each shown item's reward (feedback; none counts 0).

Every candidate policy picks k items from the same candidate pool per context — the serving
ranker's top-N that the bandit explores in (N = the bandit's top_n) — and is described by its
marginals M[x, c]: the probability that it shows candidate c in context x. With rewards that
depend on the item and the user, not on the slate around it (the item-position model), an item's
expected reward is the same wherever it is shown, so the slate's value is sum_c M[x, c] r(x, c)
and the estimators are, per impression n with shown items j (w = M / propensity):

  IPS    Y_n = sum_j w_nj r_nj / k
  SNIPS  sum_n Y_n / sum_n W_n, W_n = sum_j w_nj / k (E[W] = 1 when the logging policy can show
         everything the target shows)
  DR     sum_c M[x_n, c] q(x_n, c) / k + sum_j w_nj (r_nj - q(x_n, j)) / k, q a reward model
         (a logistic regression on the candidate's features, fitted on the other half of the
         logs: cross-fitting keeps its errors independent of the half it corrects)

each with a 95 % interval from the per-impression terms (the delta method for SNIPS).

`simulate` proves them on a generated world, whose truth (recserve.offline.data.Truth) gives every
user-item click probability: the logging bandit runs over the world's users, its rewards drawn
from the truth and fed back to it as live feedback would be, and each candidate policy's true
reward is computed exactly from the truth (and measured by running it, as a check)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Z95 = 1.959963984540054


# ---------------------------------------------------------------------------------- the pool
@dataclass
class Pool:
    """The candidate pool of U contexts: C candidates each, in the serving ranker's order."""

    users: np.ndarray  # [U] user ids
    items: np.ndarray  # [U, C] item ids, the serving ranker's order (best first)
    features: np.ndarray  # [U, C, F] the reward model's inputs
    scores: dict[str, np.ndarray]  # ranker version -> [U, C] its scores
    popularity: np.ndarray  # [U, C] training events of each candidate
    serving_version: str
    truth: np.ndarray | None = None  # [U, C] the true click probability (a generated world)
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.items.shape


def build_pool(
    cfg,
    dataset_dir,
    reg,
    n_users: int | None = None,
    versions: list[str] | None = None,
    seed: int = 0,
    log=print,
    user_ids: np.ndarray | None = None,
) -> Pool:
    """The candidate pools of up to `n_users` of the dataset's users (all by default; or those of
    `user_ids` the dataset knows): the serving
    query's exact top `ranker.candidates`, their ranker features, the serving ranker's top
    `top_n` of them (what the bandit explores in), and every other named ranker version's scores
    of those. With the dataset's truth when it has one."""
    from recserve.artifacts import event_weights, load_embeddings, ranker_path
    from recserve.offline.data import Truth
    from recserve.offline.jobs import aligned_items, serving_queries, train_part
    from recserve.ranking.bandit import ThompsonBandit
    from recserve.ranking.interactions import build_interactions
    from recserve.ranking.ranker import feature_tensor, load_model, ranking_inputs, retrieve_exact, score
    from recserve.ranking.sequence import SequenceScorer
    from recserve.schemas import DataError

    serving = reg.resolve("ranker")
    emb = load_embeddings(reg)
    train, test, items = train_part(cfg, dataset_dir, 0.0, gone={})
    data = build_interactions(train, test, items, event_weights(dataset_dir))
    item_pos, ivec = aligned_items(emb, data)
    inp = ranking_inputs(data, items, ivec, cfg.ranker)
    rng = np.random.default_rng(seed)
    users = np.arange(data.n_users)
    if user_ids is not None:
        users = np.flatnonzero(np.isin(data.user_ids, user_ids))
    if n_users is not None and n_users < len(users):
        users = np.sort(rng.choice(users, n_users, replace=False))
    t = time.perf_counter()
    queries = serving_queries(cfg, data, inp, emb, ivec, users)
    full = np.zeros((data.n_users, queries.shape[1]), dtype=np.float32)
    full[users] = queries
    cand, sc = retrieve_exact(full, ivec, data.matrix, users, cfg.ranker.candidates)
    scorer = SequenceScorer.load(reg.fetch("embeddings", emb["version"]), device="cpu")
    X = feature_tensor(inp, users, cand, sc, cfg.ranker, scorer.remap(item_pos) if scorer is not None else None)
    model, _ = load_model(ranker_path(reg, serving))
    s0 = np.where(cand >= 0, score(model, X), -np.inf)
    top_n = ThompsonBandit(None).top_n
    order = np.argsort(-s0, axis=1, kind="stable")[:, :top_n]
    pick = np.take_along_axis
    pool_dense = pick(cand, order, axis=1)
    notes = []
    full_pool = (pool_dense >= 0).all(1)
    if not full_pool.all():  # a user who has seen nearly everything: fewer unseen candidates than the bandit's top_n
        notes.append(f"{int((~full_pool).sum())} users left out: fewer than {top_n} unseen candidates")
        users, cand, sc, X, s0, order, pool_dense = (a[full_pool] for a in (users, cand, sc, X, s0, order, pool_dense))
    if not len(users):
        raise DataError(f"no user has {top_n} unseen candidates: nothing to build pools of")
    Xp = np.take_along_axis(X, order[:, :, None], axis=1)
    scores = {serving: pick(s0, order, axis=1)}
    for v in versions or []:
        if v == serving or v in scores:
            continue
        try:
            m, _ = load_model(ranker_path(reg, v))
        except (ValueError, FileNotFoundError) as e:
            notes.append(f"ranker {v} left out: {e}")
            continue
        scores[v] = score(m, Xp)
    counts = np.bincount(data.train["iidx"].to_numpy(), minlength=data.n_items).astype(np.float64)
    popularity = counts[pool_dense]
    item_ids = data.item_ids[pool_dense]
    user_ids = data.user_ids[users]
    truth = None
    try:
        tr = Truth(dataset_dir)
        truth = np.stack([tr.click_probability(int(u), row) for u, row in zip(user_ids, item_ids)])
    except DataError as e:
        notes.append(str(e))
    # the reward model's inputs: the serving ranker's score, the retrieval score, log popularity, place
    feats = np.stack(
        [
            scores[serving],
            pick(sc, order, axis=1),
            np.log1p(popularity),
            np.broadcast_to(np.log1p(np.arange(top_n)), scores[serving].shape),
        ],
        axis=2,
    )
    log(
        f"pool: {len(users)} users x {top_n} candidates (of {cfg.ranker.candidates}), rankers "
        f"{', '.join(scores)} ({time.perf_counter() - t:.1f}s)"
    )
    return Pool(user_ids, item_ids, feats.astype(np.float64), scores, popularity, serving, truth, notes)


# ------------------------------------------------------------------------------- policies
def top_k_marginals(scores: np.ndarray, k: int) -> np.ndarray:
    """A deterministic policy: the k best by `scores` get 1, the rest 0."""
    M = np.zeros(scores.shape)
    np.put_along_axis(M, np.argsort(-scores, axis=1, kind="stable")[:, :k], 1.0, axis=1)
    return M


def bandit_marginals(
    pool: Pool, a: np.ndarray, b: np.ndarray, k: int, share: float, uniform: float, draws: int = 2000, seed: int = 0
) -> np.ndarray:
    """The bandit with frozen posteriors (a, b: [U, C] of each candidate): the ranker's first
    k - n_explore kept, the n_explore best Thompson draws among the rest (uniform ones in a share
    `uniform` of the slates); each one's inclusion probability, exact for the uniform part and over
    `draws` fresh Thompson draws per context for the rest."""
    rng = np.random.default_rng(seed)
    U, C = pool.shape
    n_explore = int(round(share * k)) if k < C else 0
    keep = k - n_explore
    M = np.zeros((U, C))
    M[:, :keep] = 1.0
    if n_explore:
        for x in range(U):
            th = rng.beta(a[x, keep:], b[x, keep:], size=(draws, C - keep))
            top = np.argpartition(-th, n_explore - 1, axis=1)[:, :n_explore]
            ts = np.bincount(top.ravel(), minlength=C - keep) / draws
            M[x, keep:] = uniform * n_explore / (C - keep) + (1 - uniform) * ts
    return M


# ------------------------------------------------------------------------------ logging
@dataclass
class Logs:
    """Logged impressions over a pool: context row, the shown candidates' places in it, their
    propensities and rewards ([N, k] each)."""

    context: np.ndarray
    shown: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    k: int

    def __len__(self) -> int:
        return len(self.context)


class Simulator:
    """The live bandit (recserve.ranking.bandit.ThompsonBandit, as serving runs it) over a pool of
    contexts drawn uniformly, each shown item's reward drawn from the truth and fed back to its
    posterior as live feedback would be. Posteriors per item, shared by every context (as Redis
    holds them live)."""

    def __init__(self, pool: Pool, k: int, share: float, uniform: float, seed: int = 0):
        from recserve.ranking.bandit import ThompsonBandit

        if pool.truth is None:
            raise ValueError("a simulation needs the world's truth (a generated dataset)")
        self.pool, self.k = pool, k
        self.rng = np.random.default_rng(seed)
        self.bandit = ThompsonBandit(None, share=share, seed=seed + 1, top_n=pool.shape[1], uniform=uniform)
        ids, inv = np.unique(pool.items, return_inverse=True)
        self.rows = inv.reshape(pool.shape)
        self.a, self.b = np.ones(len(ids)), np.ones(len(ids))

    def posteriors(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) of every pool candidate now: [U, C] each."""
        return self.a[self.rows].copy(), self.b[self.rows].copy()

    def run(self, n: int, learn: bool = True, log=print, what: str = "logged") -> Logs:
        k, truth = self.k, self.pool.truth
        ctx = self.rng.integers(0, self.pool.shape[0], size=n)
        shown = np.zeros((n, k), dtype=np.int64)
        prop, rew = np.zeros((n, k)), np.zeros((n, k))
        t = time.perf_counter()
        places = list(range(self.pool.shape[1]))
        for i, x in enumerate(ctx.tolist()):
            rows = self.rows[x]
            slate = self.bandit.select(places, k, params=(self.a[rows], self.b[rows]))
            pos = np.array(slate.items)
            r = (self.rng.random(k) < truth[x, pos]).astype(np.float64)
            shown[i], prop[i], rew[i] = pos, slate.propensities, r
            if learn:
                np.add.at(self.a, rows[pos], r)
                np.add.at(self.b, rows[pos], 1.0 - r)
            if (i + 1) % 10_000 == 0:
                log(f"{what} {i + 1}/{n} impressions ({time.perf_counter() - t:.0f}s)")
        return Logs(ctx, shown, prop, rew, k)


# ----------------------------------------------------------------------------- estimators
def _interval(terms: np.ndarray) -> dict:
    m = float(terms.mean())
    se = float(terms.std(ddof=1) / math.sqrt(len(terms)))
    return {"estimate": m, "lo": m - Z95 * se, "hi": m + Z95 * se, "se": se}


def fit_reward_model(features: np.ndarray, rewards: np.ndarray, iterations: int = 25, l2: float = 1e-3) -> np.ndarray:
    """Logistic regression (Newton's method) of reward on standardized features; returns
    [mean, std, weights] packed for `predict_reward`."""
    mu, sd = features.mean(0), features.std(0) + 1e-9
    Z = np.hstack([(features - mu) / sd, np.ones((len(features), 1))])
    w = np.zeros(Z.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-Z @ w))
        g = Z.T @ (p - rewards) + l2 * w
        H = (Z * (p * (1 - p))[:, None]).T @ Z + l2 * np.eye(len(w))
        w -= np.linalg.solve(H, g)
    return np.concatenate([mu, sd, w])


def predict_reward(model: np.ndarray, features: np.ndarray) -> np.ndarray:
    f = features.shape[-1]
    mu, sd, w = model[:f], model[f : 2 * f], model[2 * f :]
    z = ((features - mu) / sd) @ w[:-1] + w[-1]
    return 1 / (1 + np.exp(-np.clip(z, -30, 30)))


def reward_models(pool: Pool, logs: Logs, folds: int = 2, seed: int = 0) -> np.ndarray:
    """q(x, c) for every impression's context, cross-fitted: impression n's q comes from the model
    fitted on the other folds. Returns [N, C]."""
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, folds, size=len(logs))
    q = np.zeros((len(logs), pool.shape[1]))
    for f in range(folds):
        fit = fold != f
        known = (logs.shown[fit] >= 0).ravel()
        X = pool.features[logs.context[fit][:, None], np.maximum(logs.shown[fit], 0)].reshape(
            -1, pool.features.shape[2]
        )[known]
        model = fit_reward_model(X, logs.reward[fit].ravel()[known])
        q[~fit] = predict_reward(model, pool.features[logs.context[~fit]])
    return q


def estimate(M: np.ndarray, logs: Logs, q: np.ndarray) -> dict:
    """IPS, SNIPS and DR of the policy with marginals M [U, C] (reward per shown item, 95 %)."""
    k = logs.k
    known = logs.shown >= 0  # live logs: a shown item outside the pool is -1
    place = np.maximum(logs.shown, 0)
    Mx = np.where(known, M[logs.context[:, None], place], 0.0)  # [N, k] target's probability of each shown item
    w = Mx / logs.propensity
    Y = (w * logs.reward).sum(1) / k
    W = w.sum(1) / k
    ips = _interval(Y)
    sn = float(Y.sum() / W.sum())
    e = (Y - sn * W) / W.mean()
    se = float(e.std(ddof=1) / math.sqrt(len(e)))
    snips = {"estimate": sn, "lo": sn - Z95 * se, "hi": sn + Z95 * se, "se": se}
    q_shown = np.take_along_axis(q, place, axis=1)
    dm = (M[logs.context] * q).sum(1) / k
    dr = _interval(dm + (w * (logs.reward - q_shown)).sum(1) / k)
    return {"ips": ips, "snips": snips, "dr": dr, "dm": _interval(dm), "mean_weight": float(W.mean())}


def true_reward(M: np.ndarray, truth: np.ndarray, k: int) -> float:
    """A policy's exact expected reward per shown item over the pool's (uniform) contexts."""
    return float((M * truth).sum(1).mean() / k)


def measured_reward(M: np.ndarray, truth: np.ndarray, k: int, n: int, seed: int = 0) -> dict:
    """The policy run for `n` impressions: slates drawn from its marginals (systematic sampling
    keeps exactly k per slate and each item's probability), rewards from the truth."""
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, M.shape[0], size=n)
    cum = np.cumsum(M[ctx], axis=1)
    u = rng.random(n)[:, None] + np.arange(k)[None, :]
    picks = np.minimum((cum[:, :, None] <= u[:, None, :]).sum(1), M.shape[1] - 1)  # [n, k] places
    r = (rng.random((n, k)) < truth[ctx[:, None], picks]).mean(1)
    return _interval(r)


# --------------------------------------------------------------------------------- a run
def policies(
    pool: Pool, a: np.ndarray, b: np.ndarray, k: int, share: float, uniform: float, seed: int = 0
) -> dict[str, np.ndarray]:
    """The candidate policies' marginals: the current bandit (posteriors a, b: [U, C]), the serving
    ranker greedy, random, popularity, and each other ranker version greedy."""
    U, C = pool.shape
    out = {
        "bandit": bandit_marginals(pool, a, b, k, share, uniform, seed=seed),
        "greedy_ranker": top_k_marginals(pool.scores[pool.serving_version], k),
        "random": np.full((U, C), k / C),
        "popularity": top_k_marginals(pool.popularity + 1e-9 * -np.arange(C), k),
    }
    for v, s in pool.scores.items():
        if v != pool.serving_version:
            out[f"ranker_{v}"] = top_k_marginals(s, k)
    return out


def ranks_agree(policies_out: dict, est: str) -> bool:
    """Whether estimator `est` orders the policies as their true rewards do."""
    names = list(policies_out)
    true = sorted(names, key=lambda p: -policies_out[p]["true_reward"])
    got = sorted(names, key=lambda p: -policies_out[p][est]["estimate"])
    return true == got


def _judge(
    pool: Pool,
    sim: Simulator,
    warmup: int,
    impressions: int,
    k: int,
    share: float,
    uniform: float,
    seed: int,
    log,
    measure: bool = False,
) -> tuple[dict, Logs]:
    """One simulated run: warm-up, logs, every policy's estimates against its true reward (and,
    `measure`, the policy run for as many impressions)."""
    if warmup:
        sim.run(warmup, log=log, what="warm-up")
    a, b = sim.posteriors()
    logs = sim.run(impressions, log=log)
    q = reward_models(pool, logs, seed=seed)
    out = {}
    for name, M in policies(pool, a, b, k, share, uniform, seed).items():
        est = estimate(M, logs, q)
        truth = true_reward(M, pool.truth, k)
        out[name] = {
            "true_reward": truth,
            **est,
            "covered": {e: est[e]["lo"] <= truth <= est[e]["hi"] for e in ("ips", "snips", "dr")},
        }
        if measure:
            out[name]["measured"] = measured_reward(M, pool.truth, k, impressions, seed + 7)
    return out, logs


def simulate(
    cfg,
    dataset_dir,
    reg,
    impressions: int = 50_000,
    k: int = 10,
    share: float | None = None,
    uniform: float | None = None,
    warmup: int = 20_000,
    n_users: int | None = None,
    versions: list[str] | None = None,
    seed: int = 0,
    replications: int = 0,
    log=print,
) -> dict:
    """The live bandit learns for `warmup` impressions (its posteriors then are "the current
    bandit", a candidate policy fitted on nothing it is judged on), then logs `impressions` while it
    goes on learning; every candidate policy is estimated from those logs and compared with its
    true reward (and measured by running it). `replications` more runs with other seeds say how
    often the intervals cover and the orders agree."""
    t0 = time.perf_counter()
    share = cfg.serve.bandit_share if share is None else share
    uniform = cfg.serve.bandit_uniform if uniform is None else uniform
    pool = build_pool(cfg, dataset_dir, reg, n_users, versions, seed, log)
    if pool.truth is None:
        raise ValueError(f"{dataset_dir} has no truth: the simulation needs a generated world")
    out, logs = _judge(
        pool, Simulator(pool, k, share, uniform, seed), warmup, impressions, k, share, uniform, seed, log, measure=True
    )
    for name, p in out.items():
        log(
            f"{name:22s} true {p['true_reward']:.4f}  IPS {p['ips']['estimate']:.4f}  "
            f"SNIPS {p['snips']['estimate']:.4f}  DR {p['dr']['estimate']:.4f} [{p['dr']['lo']:.4f}, "
            f"{p['dr']['hi']:.4f}]"
        )
    report = {
        "impressions": impressions,
        "k": k,
        "contexts": int(pool.shape[0]),
        "candidates": int(pool.shape[1]),
        "logging_policy": {
            "name": "bandit",
            "share": share,
            "uniform": uniform,
            "learning": True,
            "warmup": warmup,
            "reward": float(logs.reward.mean()),
        },
        "serving_ranker": pool.serving_version,
        "seed": seed,
        "policies": out,
        "dr_covers_all": all(p["covered"]["dr"] for p in out.values()),
        "order_agrees": {e: ranks_agree(out, e) for e in ("ips", "snips", "dr")},
        "true_order": sorted(out, key=lambda p: -out[p]["true_reward"]),
        "notes": pool.notes,
    }
    if replications:
        runs = []
        for r in range(1, replications + 1):
            got, _ = _judge(
                pool,
                Simulator(pool, k, share, uniform, seed + r),
                warmup,
                impressions,
                k,
                share,
                uniform,
                seed + r,
                lambda m: None,
            )
            runs.append(got)
            log(
                f"replication {r}/{replications}: DR covers {sum(p['covered']['dr'] for p in got.values())}/"
                f"{len(got)}, order {'agrees' if ranks_agree(got, 'dr') else 'differs'}"
            )
        allruns = [out, *runs]
        report["replications"] = {
            "runs": len(allruns),
            "seeds": [seed + r for r in range(replications + 1)],
            "coverage": {
                e: sum(p["covered"][e] for g in allruns for p in g.values()) / sum(len(g) for g in allruns)
                for e in ("ips", "snips", "dr")
            },
            "all_covered_by_dr": sum(all(p["covered"]["dr"] for p in g.values()) for g in allruns) / len(allruns),
            "order_agrees": {e: sum(ranks_agree(g, e) for g in allruns) / len(allruns) for e in ("ips", "snips", "dr")},
            "z": {
                name: [
                    round((g[name]["dr"]["estimate"] - g[name]["true_reward"]) / g[name]["dr"]["se"], 2)
                    for g in allruns
                ]
                for name in out
            },
        }
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


# ------------------------------------------------------------------------ live logs
def read_live(r, max_impressions: int = 1_000_000) -> tuple[list[dict], dict[tuple[str, int], float]]:
    """The newest impressions of the bandit's log and every logged reward by (request id, item)."""
    from recserve import keys

    imps = []
    for _, f in r.xrevrange(keys.bandit_impressions(), count=max_impressions):
        f = {k.decode(): v.decode() for k, v in f.items()}
        if f.get("propensities") in (None, "null"):
            continue
        imps.append(
            {
                "request_id": f["request_id"],
                "user_id": int(f["user_id"]),
                "items": json.loads(f["items"]),
                "propensities": json.loads(f["propensities"]),
                "arm": f.get("arm"),
            }
        )
    rewards: dict[tuple[str, int], float] = {}
    last = "-"
    while True:  # the rewards stream in pages, oldest first (a later reward for the same item wins)
        page = r.xrange(keys.bandit_rewards(), min=last, count=10_000)
        page = [p for p in page if p[0].decode() != last]
        if not page:
            break
        for _, f in page:
            rewards[(f[b"request_id"].decode(), int(f[b"item_id"]))] = float(f[b"reward"])
        last = page[-1][0].decode()
    return imps, rewards


def live_logs(pool: Pool, imps: list[dict], rewards: dict, k: int) -> tuple[Logs, dict]:
    """Logged impressions of the pool's users with k items, as places in their pools (-1: an item
    the offline pool lacks: the live context or the index differed), with their rewards (none: 0)."""
    row = {int(u): x for x, u in enumerate(pool.users)}
    place = [{int(i): c for c, i in enumerate(items)} for items in pool.items]
    ctx, shown, prop, rew = [], [], [], []
    seen = found = 0
    for imp in imps:
        x = row.get(imp["user_id"])
        if x is None or len(imp["items"]) != k:
            continue
        ctx.append(x)
        shown.append([place[x].get(int(i), -1) for i in imp["items"]])
        prop.append(imp["propensities"])
        rew.append([rewards.get((imp["request_id"], int(i)), 0.0) for i in imp["items"]])
        seen += k
        found += sum(c >= 0 for c in shown[-1])
    if not ctx:
        raise ValueError(
            f"no logged impression of {k} items belongs to a user the registry's embeddings know: "
            f"nothing to evaluate (serve some traffic, with feedback, first)"
        )
    logs = Logs(
        np.array(ctx),
        np.array(shown, dtype=np.int64),
        np.array(prop, dtype=np.float64),
        np.array(rew, dtype=np.float64),
        k,
    )
    return logs, {"impressions": len(ctx), "shown_in_pool": found / seen}


def evaluate_live(
    cfg, reg, r, k: int = 10, max_impressions: int = 1_000_000, versions: list[str] | None = None, log=print
) -> dict:
    """OPE of the candidate policies from the live system's logged impressions and rewards; the
    pools are rebuilt offline from the registry (the dataset the embeddings were trained on)."""
    from recserve.artifacts import trained_on

    t0 = time.perf_counter()
    imps, rewards = read_live(r, max_impressions)
    log(f"read {len(imps)} impressions, {len(rewards)} rewards")
    notes = (
        [] if rewards else ["no feedback was logged (POST /v1/feedback): every reward is 0, and so is every estimate"]
    )
    for n in notes:
        log(f"warning: {n}")
    users = np.unique([i["user_id"] for i in imps if i["user_id"] >= 0])
    pool = build_pool(cfg, trained_on(reg), reg, versions=versions, log=log, user_ids=users)
    logs, cover = live_logs(pool, imps, rewards, k)
    log(
        f"{cover['impressions']} impressions of {len(pool.users)} users; {cover['shown_in_pool']:.1%} of their "
        f"shown items are in the offline pools"
    )
    a, b = bandit_posteriors(r, pool)
    q = reward_models(pool, logs)
    share, uniform = cfg.serve.bandit_share, cfg.serve.bandit_uniform
    out = {}
    for name, M in policies(pool, a, b, k, share, uniform).items():
        out[name] = estimate(M, logs, q)
        log(
            f"{name:22s} IPS {out[name]['ips']['estimate']:.4f}  SNIPS {out[name]['snips']['estimate']:.4f}  "
            f"DR {out[name]['dr']['estimate']:.4f} [{out[name]['dr']['lo']:.4f}, {out[name]['dr']['hi']:.4f}]"
        )
    return {
        "source": "live",
        "impressions": cover["impressions"],
        "k": k,
        "contexts": int(len(pool.users)),
        "shown_in_pool": cover["shown_in_pool"],
        "rewards": len(rewards),
        "logged_reward": float(logs.reward.mean()),
        "serving_ranker": pool.serving_version,
        "policies": out,
        "order": {e: sorted(out, key=lambda p: -out[p][e]["estimate"]) for e in ("ips", "snips", "dr")},
        "notes": notes + pool.notes,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def bandit_posteriors(r, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
    """The live bandit's (a, b) of every pool candidate ([U, C] each; the prior where none)."""
    from recserve import keys

    ids = np.unique(pool.items)
    raw = r.hmget(keys.bandit_params(), [f for i in ids.tolist() for f in (f"a:{i}", f"b:{i}")])
    ab = np.array([float(v) if v is not None else 1.0 for v in raw]).reshape(-1, 2)
    rows = np.searchsorted(ids, pool.items)
    return ab[rows, 0], ab[rows, 1]


def publish(reg, report: dict, lineage: dict | None = None) -> str:
    """The report (JSON, markdown, plot) as a registry version of `ope`."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write(report, Path(tmp) / "ope.json")
        metrics = {
            name: {e: p[e]["estimate"] for e in ("ips", "snips", "dr")} for name, p in report["policies"].items()
        }
        return reg.publish(
            "ope", tmp, metrics=metrics, lineage={"ranker": report.get("serving_ranker"), **(lineage or {})}
        )


def markdown(report: dict) -> str:
    def ci(e):
        return f"{e['estimate']:.4f} [{e['lo']:.4f}, {e['hi']:.4f}]"

    if "true_order" not in report:  # live logs: no truth
        rows = ["| policy | IPS [95 %] | SNIPS [95 %] | DR [95 %] |", "|---|---|---|---|"]
        for name in report["order"]["dr"]:
            p = report["policies"][name]
            rows.append(f"| {name} | {ci(p['ips'])} | {ci(p['snips'])} | {ci(p['dr'])} |")
        return "\n".join(rows) + "\n"
    rows = ["| policy | true reward | IPS [95 %] | SNIPS [95 %] | DR [95 %] | DR covers |", "|---|---|---|---|---|---|"]
    for name in report["true_order"]:
        p = report["policies"][name]
        rows.append(
            f"| {name} | {p['true_reward']:.4f} | {ci(p['ips'])} | {ci(p['snips'])} | {ci(p['dr'])} | "
            f"{'yes' if p['covered']['dr'] else 'NO'} |"
        )
    return "\n".join(rows) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report.get("true_order") or report["order"]["dr"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for j, (est, color) in enumerate((("ips", "tab:blue"), ("snips", "tab:orange"), ("dr", "tab:green"))):
        y = np.arange(len(names)) + (j - 1) * 0.2
        e = [report["policies"][n][est] for n in names]
        ax.errorbar(
            [x["estimate"] for x in e],
            y,
            xerr=[[x["estimate"] - x["lo"] for x in e], [x["hi"] - x["estimate"] for x in e]],
            fmt="o",
            color=color,
            label=est.upper(),
            capsize=3,
        )
    if "true_order" in report:
        ax.scatter(
            [report["policies"][n]["true_reward"] for n in names],
            np.arange(len(names)),
            marker="|",
            s=400,
            color="black",
            label="truth",
            zorder=3,
        )
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("reward per shown item")
    ax.set_title(
        f"off-policy estimates from {report['impressions']:,} logged impressions"
        + (" vs truth" if "true_order" in report else "")
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    plot(report, out.with_suffix(".png"))


# ------------------------------------------------------------------ the retrain's gate
def compare_generations(
    cfg, reg, candidate: dict, serving: dict, r, k: int = 10, max_impressions: int = 200_000, log=print
) -> dict:
    """Doubly-robust estimates of reward per shown item, from the live log, of the serving
    generation's ranker greedy and of a candidate generation's greedy over the same pools (the
    serving ranker's top `top_n`, what the logging bandit explored in): the candidate scores each
    pool item with its own embeddings, sequence model and ranker, from the user's history in the
    candidate's training set. Raises ValueError when the log has nothing to judge on."""
    from recserve.artifacts import event_weights, ranker_path, trained_on
    from recserve.offline.jobs.common import train_part
    from recserve.offline.jobs.evaluate import GenerationView
    from recserve.ranking.interactions import build_interactions
    from recserve.ranking.ranker import feature_tensor, load_model
    from recserve.ranking.ranker import score as ranker_score

    imps, rewards = read_live(r, max_impressions)
    if not imps or not rewards:
        raise ValueError("no logged impressions with feedback yet: judged offline only")
    users = np.unique([i["user_id"] for i in imps if i["user_id"] >= 0])
    pool = build_pool(cfg, trained_on(reg, serving["embeddings"]), reg, log=log, user_ids=users)
    logs, cover = live_logs(pool, imps, rewards, k)
    q = reward_models(pool, logs)
    m_serving = top_k_marginals(pool.scores[pool.serving_version], k)
    ds = trained_on(reg, candidate["embeddings"])
    train, _, items = train_part(cfg, ds, 0.0, gone={})
    data = build_interactions(train, train.iloc[:0], items, event_weights(ds))
    view = GenerationView(cfg, reg, candidate, data, items)
    row = {int(u): i for i, u in enumerate(data.user_ids)}
    known = np.array([int(u) in row for u in pool.users])
    m_cand = m_serving.copy()  # a user the candidate never saw: it would serve them as the serving one
    if known.any():
        dense_users = np.array([row[int(u)] for u in pool.users[known]], dtype=np.int64)
        cand = np.vectorize(lambda x: view.id_to_dense.get(int(x), -1), otypes=[np.int64])(pool.items[known])
        queries = view.queries(dense_users)
        sc = np.einsum("ud,ucd->uc", queries, view.ivec[np.maximum(cand, 0)])
        X = feature_tensor(view.inp, dense_users, cand, sc, cfg.ranker, view.scorer)
        s = np.where(cand >= 0, ranker_score(load_model(ranker_path(reg, candidate["ranker"]))[0], X), -np.inf)
        m_cand[known] = top_k_marginals(s, k)
    out = {
        "serving": estimate(m_serving, logs, q)["dr"],
        "candidate": estimate(m_cand, logs, q)["dr"],
        "impressions": cover["impressions"],
        "shown_in_pool": cover["shown_in_pool"],
        "contexts_known_to_candidate": int(known.sum()),
        "estimator": "doubly robust, 95 % interval",
    }
    log(
        f"off-policy (DR) reward per shown item: candidate {out['candidate']['estimate']:.4f} "
        f"[{out['candidate']['lo']:.4f}, {out['candidate']['hi']:.4f}], serving {out['serving']['estimate']:.4f} "
        f"[{out['serving']['lo']:.4f}, {out['serving']['hi']:.4f}] over {cover['impressions']} impressions"
    )
    return out

"""Thompson-sampling exploration over the ranked top-N, with parameters in Redis so that every
replica shares them.

Each item has a Beta(alpha, beta) posterior of its reward (a click / engagement in 0..1), kept in
the Redis hash `<prefix>:params` (`a:<item>`, `b:<item>`, starting at the prior). For a list of k:
the first `k - n_explore` places keep the ranker's order; the `n_explore = round(share * k)`
exploration places go to the remaining candidates of the ranker's top-N with the highest Thompson
draws. Every shown item gets a propensity (the probability that this policy shows it), and the
impression is logged with them, so off-policy evaluation can weight by 1 / propensity.

An explored item's propensity is 1 / G, G the number of fresh draws until the policy picks it
again: G is geometric, so 1 / propensity is an *unbiased* estimate of the inverse probability
(what IPS divides by). The share of a fixed number of draws would be an unbiased propensity whose
inverse is biased upward (at p = 0.05 over 100 draws, by about a quarter): every IPS estimate
from such logs would be too high.

A share `uniform` of the slates (0.1 by default) fills its exploration places uniformly from the
candidates instead of by Thompson draws. Thompson sampling alone concentrates as posteriors
sharpen: candidates it has written off get inclusion probabilities near 0, and logs in which
they never appear cannot judge a policy that would show them (off-policy evaluation needs every
candidate to keep a chance). With the mixture each explored candidate keeps at least
uniform * n_explore / (candidates - kept); the propensities are those of the mixture.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from recserve import keys
from recserve.redis_client import connect


@dataclass
class Slate:
    items: list[int]
    explored: list[bool]
    propensities: list[float] | None


IMPRESSIONS_MAXLEN = 1_000_000
WARMUP_PREFIX = "warmup-"  # a deploy's warm-up request: its slate is drawn, its impression not logged


def beta_draws(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """n rows of Beta(a, b) draws (a column per item). Where both a and b are at most 1 — a prior
    of (1, 1) is every item's until it is shown — numpy's beta takes Johnk's rejection sampler,
    several times slower than Ga / (Ga + Gb) of two Gamma draws, the same distribution: those
    columns are drawn that way, the others by `rng.beta` (its own Gamma ratio, in C). Beta(1, 1) itself
    is the uniform distribution: those columns are uniform draws, a fraction of two Gamma draws' cost."""
    flat = (a == 1.0) & (b == 1.0)
    johnk = (a <= 1.0) & (b <= 1.0) & ~flat
    if not johnk.any() and not flat.any():
        return rng.beta(a, b, size=(n, len(a)))
    out = np.empty((n, len(a)))
    if flat.any():
        out[:, flat] = rng.random((n, int(flat.sum())))
    other = ~johnk & ~flat
    if other.any():
        out[:, other] = rng.beta(a[other], b[other], size=(n, int(other.sum())))
    if not johnk.any():
        return out
    ga = rng.standard_gamma(a[johnk], size=(n, int(johnk.sum())))
    gb = rng.standard_gamma(b[johnk], size=ga.shape)
    tot = ga + gb
    out[:, johnk] = np.divide(ga, tot, out=np.full_like(ga, 0.5), where=tot > 0)  # both underflowed: a coin
    return out


class ThompsonBandit:
    def __init__(
        self,
        client,
        prefix: str = "bandit",
        share: float = 0.2,
        prior: tuple[float, float] = (1.0, 1.0),
        propensity_draws: int = 10_000,
        seed: int | None = None,
        top_n: int = 50,
        uniform: float = 0.1,
    ):
        import redis

        if not 0.0 <= share <= 1.0:
            raise ValueError("bandit exploration share must be in 0..1")
        if not 0.0 <= uniform <= 1.0:
            raise ValueError("bandit uniform share must be in 0..1")
        self.uniform = uniform
        self.r: redis.Redis = client if not isinstance(client, str) else connect(client, timeout=None)
        self.prefix = prefix
        self.share = share
        self.prior = prior
        self.draws = propensity_draws  # the most fresh draws a propensity takes (it is then 1 / this)
        if top_n < 1:
            raise ValueError("bandit top_n must be >= 1")
        self.top_n = top_n  # exploration draws from the ranker's top-N only
        self.rng = np.random.default_rng(seed)

    @property
    def params_key(self) -> str:
        return keys.bandit_params(self.prefix)

    def params(self, items: list[int]) -> tuple[np.ndarray, np.ndarray]:
        if not items:
            return np.zeros(0), np.zeros(0)
        fields = [f for i in items for f in (f"a:{i}", f"b:{i}")]
        raw = self.r.hmget(self.params_key, fields)
        vals = np.array([float(v) if v is not None else np.nan for v in raw]).reshape(-1, 2)
        a = np.where(np.isnan(vals[:, 0]), self.prior[0], vals[:, 0])
        b = np.where(np.isnan(vals[:, 1]), self.prior[1], vals[:, 1])
        return a, b

    def _choose(self, ranked: list[int], k: int, theta: np.ndarray, share: float) -> list[int]:
        n_explore = int(round(share * k)) if len(ranked) > k else 0
        keep = ranked[: k - n_explore]
        rest = np.arange(k - n_explore, len(ranked))
        picked = rest[np.argsort(-theta[rest])[:n_explore]] if n_explore else np.array([], dtype=int)
        return keep + [ranked[int(j)] for j in picked]

    def select(
        self,
        ranked: list[int],
        k: int,
        params: tuple[np.ndarray, np.ndarray] | None = None,
        with_propensities: bool = True,
        share: float | None = None,
    ) -> Slate:
        """Re-order / fill exploration slots of the ranker's list (best first) into k items;
        `params`: the (alpha, beta) of the list's first max(top_n, k) items when the caller has
        them (else they are read from Redis). Without propensities the slate's are None: the
        caller computes them later (`propensities`), off the request path. `share`: another
        exploration share than the configured one (an experiment's arm)."""
        if k <= 0:
            raise ValueError("k must be positive")
        share = self.share if share is None else share
        ranked = list(ranked[: max(self.top_n, k)])
        a, b = self.params(ranked) if params is None else params
        theta = self.rng.beta(a, b) if self.rng.random() >= self.uniform else self.rng.random(len(a))
        chosen = self._choose(ranked, k, theta, share)
        n_keep = k - int(round(share * k)) if len(ranked) > k else len(chosen)
        explored = [j >= n_keep for j in range(len(chosen))]
        props = self.propensities(ranked, chosen, explored, a, b) if with_propensities else None
        return Slate(chosen, explored, props)

    def propensities(
        self,
        ranked: list[int],
        chosen: list[int],
        explored: list[bool],
        a: np.ndarray,
        b: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> list[float]:
        """1 for kept items; for each explored one 1 / G, G the fresh draws of the policy (the top
        n_explore Thompson samples among the non-kept candidates, or in a share `uniform` of the
        draws uniform ones) until it picks the item again, so that 1 / propensity is unbiased
        (module docstring). Draws go in growing batches, all at once."""
        n_keep = len(chosen) - sum(explored)
        if not any(explored):
            return [1.0] * len(chosen)
        rng = rng or self.rng
        rest = np.arange(n_keep, len(ranked))
        n_explore = len(chosen) - n_keep
        where = {ranked[int(r)]: j for j, r in enumerate(rest)}
        want = np.array([where[it] for it, ex in zip(chosen, explored) if ex])
        first = np.zeros(len(want), dtype=np.int64)  # draws until picked; 0: not yet
        ar, br, m = a[rest], b[rest], len(rest)
        done, batch = 0, 64
        while done < self.draws and not first.all():
            n = min(batch, self.draws - done)
            flat = rng.random(n) < self.uniform  # the mixture's uniform draws
            th = np.empty((n, m))
            th[flat] = rng.random((int(flat.sum()), m))
            th[~flat] = beta_draws(rng, ar, br, int(n - flat.sum()))
            if n_explore < m:
                # picked: among the draw's top n_explore, i.e. at least its n_explore-th largest value
                # (continuous draws: no ties)
                kth = np.partition(th, m - n_explore, axis=1)[:, m - n_explore]
                hit = th[:, want] >= kth[:, None]  # [n, wanted]
            else:
                hit = np.ones((n, len(want)), dtype=bool)
            new = (first == 0) & hit.any(axis=0)
            first[new] = done + 1 + hit[:, new].argmax(axis=0)
            done, batch = done + n, batch * 2
        first[first == 0] = self.draws
        inv = iter(first.tolist())
        return [1.0 / next(inv) if ex else 1.0 for ex in explored]

    def choose(
        self,
        ranked: list[int],
        k: int,
        user_id: int,
        request_id: str,
        share: float | None = None,
        arm: str | None = None,
    ) -> Slate:
        """The slate shown to the user, its impression logged with the propensities (and the arm)."""
        slate = self.select(ranked, k, share=share)
        if not request_id.startswith(WARMUP_PREFIX):
            self.log_impression(request_id, int(user_id), slate, arm=arm)
        return slate

    @property
    def impressions_key(self) -> str:
        return keys.bandit_impressions(self.prefix)

    @staticmethod
    def impression(request_id: str, user_id: int, slate: Slate, arm: str | None = None) -> dict:
        """The logged impression; `arm`: the experiment's `<experiment>.<arm>` that served it."""
        return {
            "request_id": request_id,
            "user_id": user_id,
            "ts": time.time(),
            "items": json.dumps(slate.items),
            "explored": json.dumps(slate.explored),
            "propensities": json.dumps(slate.propensities),
            **({"arm": arm} if arm else {}),
        }

    def log_impression(
        self, request_id: str, user_id: int, slate: Slate, maxlen: int = IMPRESSIONS_MAXLEN, arm: str | None = None
    ) -> None:
        self.r.xadd(
            self.impressions_key, self.impression(request_id, user_id, slate, arm), maxlen=maxlen, approximate=True
        )

    def update(self, item_id: int, reward: float) -> tuple[float, float]:
        """Fold one reward (0..1) into the item's posterior, atomically for all replicas."""
        pipe = self.r.pipeline()
        self.queue_update(pipe, item_id, reward)
        res = pipe.execute()
        return float(res[2]), float(res[3])

    def queue_update(self, pipe, item_id: int, reward: float) -> None:
        """The commands of `update` on a transaction pipeline (sync or asyncio): the prior set if
        the item has none yet, then the reward folded in; results 2 and 3 are the new alpha and beta."""
        if not 0.0 <= reward <= 1.0:
            raise ValueError("reward must be in 0..1")
        a0, b0 = self.prior
        pipe.hsetnx(self.params_key, f"a:{item_id}", a0)
        pipe.hsetnx(self.params_key, f"b:{item_id}", b0)
        pipe.hincrbyfloat(self.params_key, f"a:{item_id}", reward)
        pipe.hincrbyfloat(self.params_key, f"b:{item_id}", 1.0 - reward)


class LiveBandit:
    """A `ThompsonBandit` for an asyncio process on the request path (the ingress's in-process
    select port): no Redis round trip per request. The posteriors are read from a snapshot that a
    background task refreshes every `refresh_s` (HMGET of the items asked for, so a posterior is at
    most that old: feedback reaches the draws within a second); impressions are logged in batches
    (one pipelined XADD per `flush_s`). A Redis outage leaves the last snapshot in use and keeps
    up to `max_pending` impressions to log when it is back."""

    def __init__(
        self,
        bandit: ThompsonBandit,
        aredis,
        refresh_s: float = 1.0,
        flush_s: float = 0.2,
        max_items: int = 200_000,
        max_pending: int = 100_000,
    ):
        self.bandit = bandit
        self.r = aredis
        self.refresh_s, self.flush_s = refresh_s, flush_s
        self.max_items, self.max_pending = max_items, max_pending
        self.snapshot: dict[int, tuple[float, float]] = {}
        self.wanted: set[int] = set()
        self.pending: list[dict] = []
        self.dropped = 0
        self.rng = np.random.default_rng()  # the propensities' own draws (a worker thread's)

    def params(self, items: list[int]) -> tuple[np.ndarray, np.ndarray]:
        a0, b0 = self.bandit.prior
        ab = [self.snapshot.get(i) for i in items]
        missing = [i for i, x in zip(items, ab) if x is None]
        if missing and len(self.wanted) < self.max_items:
            self.wanted.update(missing)
        return (
            np.array([x[0] if x else a0 for x in ab], dtype=np.float64),
            np.array([x[1] if x else b0 for x in ab], dtype=np.float64),
        )

    async def achoose(
        self,
        ranked: list[int],
        k: int,
        user_id: int,
        request_id: str,
        share: float | None = None,
        arm: str | None = None,
    ) -> Slate:
        """The slate; its propensities are computed when its impression is logged (`flush`)."""
        top = list(ranked[: max(self.bandit.top_n, k)])
        a, b = self.params(top)
        slate = self.bandit.select(top, k, params=(a, b), with_propensities=False, share=share)
        if request_id.startswith(WARMUP_PREFIX):
            return slate
        if len(self.pending) < self.max_pending:
            self.pending.append((request_id, int(user_id), slate, top, a, b, arm))
        else:
            self.dropped += 1
        return slate

    async def aupdate(self, item_id: int, reward: float) -> tuple[float, float]:
        """Fold one reward into the shared posterior (atomically, for every replica) and into the snapshot."""
        async with self.r.pipeline(transaction=True) as pipe:
            self.bandit.queue_update(pipe, item_id, reward)
            res = await pipe.execute()
        self.snapshot[int(item_id)] = (float(res[2]), float(res[3]))
        return float(res[2]), float(res[3])

    async def refresh(self) -> None:
        items = list(set(self.snapshot) | self.wanted)
        if not items:
            return
        fields = [f for i in items for f in (f"a:{i}", f"b:{i}")]
        raw = await self.r.hmget(self.bandit.params_key, fields)
        a0, b0 = self.bandit.prior
        snap = {}
        for j, i in enumerate(items):
            a, b = raw[2 * j], raw[2 * j + 1]
            snap[i] = (float(a) if a is not None else a0, float(b) if b is not None else b0)
        self.snapshot, self.wanted = snap, set()

    async def flush(self) -> int:
        batch, self.pending = self.pending, []
        if not batch:
            return 0
        if any(not isinstance(x, dict) for x in batch):
            # the propensities' draws run in a worker thread: numpy samples without the GIL, so
            # they take the other core, not the event loop's
            import asyncio

            batch = await asyncio.get_running_loop().run_in_executor(self._pool(), self._impressions, batch)
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for imp in batch:
                    pipe.xadd(self.bandit.impressions_key, imp, maxlen=IMPRESSIONS_MAXLEN, approximate=True)
                await pipe.execute()
        except Exception:
            self.pending = (batch + self.pending)[: self.max_pending]  # Redis away: log them when it is back
            raise
        return len(batch)

    def _pool(self):
        if getattr(self, "_executor", None) is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="propensities")
        return self._executor

    def _impressions(self, batch: list) -> list[dict]:
        out = []
        for x in batch:
            if not isinstance(x, dict):  # (request_id, user, slate, ranked, a, b, arm): propensities now
                rid, user, slate, top, a, b, arm = x
                slate.propensities = self.bandit.propensities(top, slate.items, slate.explored, a, b, self.rng)
                x = self.bandit.impression(rid, user, slate, arm)
            out.append(x)
        return out

    async def run(self) -> None:
        """The background task: flush impressions every flush_s, refresh the posteriors every refresh_s."""
        import asyncio

        last = 0.0
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
                if time.monotonic() - last >= self.refresh_s:
                    last = time.monotonic()
                    await self.refresh()
            except Exception:  # noqa: BLE001 - Redis restarting: the snapshot stays, impressions wait
                await asyncio.sleep(self.refresh_s)

"""The gate a retrained candidate passes before it is rolled out (recserve.generations).

Both generations are judged on the same split of the lake's window: the newest `holdout` share of
its events (by time) is held out, the candidate is trained on the rest, and each generation ranks
for every user with held-out events, from the same history (the events before the cutoff). Per
user Recall@10 and NDCG@10 are compared pairwise: the mean difference with a 95 % interval (the
normal approximation of the paired differences) and its share of the serving generation's mean.

The verdict: `first` when nothing serves yet (nothing to compare with). Otherwise, which figures
decide depends on what the system has logged:

- **offline** (no logged impressions, or fewer than `ope_min_impressions`): `fail` when the
  candidate's mean on either metric is below the serving generation's by more than `margin` of it.
- **off-policy** (enough impressions): the held-out slice is then mostly clicks on what the serving
  generation itself showed, a replay that favours the policy that logged it (exposure bias: an
  item it never showed cannot be clicked). The doubly-robust estimate of each generation's reward
  per shown item (recserve.offline.ope) corrects for that with the logged propensities, so it
  decides: `fail` when the candidate's estimate is below the serving one's by more than the
  margin and the intervals do not overlap. The offline figures are kept beside it and fail the
  candidate only below `offline_floor` of the serving generation's (a candidate that learnt
  nothing, as one trained on shuffled labels, is far below it)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

Z95 = 1.959963984540054
METRICS = ("ndcg_at_10", "recall_at_10")


def newest_split(events: pd.DataFrame, holdout: float) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(before, after, cutoff ts): the newest `holdout` share of the events (by ts) held out. Ties
    at the cutoff stay on one side (an event is never in both)."""
    if events.empty:
        return events, events, 0
    cutoff = int(np.quantile(events["ts"].to_numpy(), 1.0 - holdout, method="higher"))
    after = events["ts"].to_numpy() >= cutoff
    if after.all():  # every event at one instant: hold out none rather than all
        return events, events.iloc[:0], cutoff
    return events[~after].reset_index(drop=True), events[after].reset_index(drop=True), cutoff


def per_user(recs: np.ndarray, truth: list[np.ndarray], k: int = 10) -> dict[str, np.ndarray]:
    """Recall@k (hits / min(k, |relevant|)) and NDCG@k of each user's top-k list."""
    recs = np.asarray(recs)[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall = np.zeros(len(truth))
    ndcg = np.zeros(len(truth))
    for r, (row, rel) in enumerate(zip(recs, truth)):
        if len(rel) == 0:
            continue
        hit = np.isin(row, rel)
        recall[r] = hit.sum() / min(k, len(rel))
        ndcg[r] = float((hit * discounts[: len(row)]).sum() / discounts[: min(k, len(rel))].sum())
    return {f"recall_at_{k}": recall, f"ndcg_at_{k}": ndcg}


def paired(candidate: np.ndarray, serving: np.ndarray) -> dict:
    """The candidate's and the serving generation's means, their difference with its 95 % interval
    and the difference as a share of the serving mean."""
    d = np.asarray(candidate, dtype=np.float64) - np.asarray(serving, dtype=np.float64)
    n = len(d)
    mean = float(d.mean()) if n else 0.0
    half = Z95 * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    base = float(np.mean(serving)) if n else 0.0
    return {
        "candidate": float(np.mean(candidate)) if n else 0.0,
        "serving": base,
        "diff": mean,
        "lo": mean - half,
        "hi": mean + half,
        "relative": mean / base if base > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean)),
        "users": n,
    }


def verdict(
    figures: dict[str, dict],
    margin: float,
    ope: dict | None = None,
    ope_min_impressions: int = 500,
    offline_floor: float = 0.25,
) -> tuple[str, list[str], str]:
    """('pass' | 'fail', the reasons, what decided: 'offline' | 'off-policy')."""
    by_ope = bool(
        ope and "candidate" in ope and "serving" in ope and int(ope.get("impressions", 0)) >= ope_min_impressions
    )
    bound = offline_floor if by_ope else margin
    reasons = []
    for m, f in figures.items():
        if f["users"] == 0:
            reasons.append(f"{m}: no held-out user to judge on")
        elif f["candidate"] < f["serving"] * (1.0 - bound):
            reasons.append(
                f"{m} {f['candidate']:.4f} is {-f['relative']:.1%} below the serving generation's "
                f"{f['serving']:.4f} ({'the offline floor' if by_ope else 'margin'} {bound:.1%})"
            )
    if ope and "candidate" in ope and "serving" in ope:
        c, s = ope["candidate"], ope["serving"]
        if c["estimate"] < s["estimate"] * (1.0 - margin) and c["hi"] < s["lo"]:
            reasons.append(
                f"off-policy reward per shown item {c['estimate']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}] is below "
                f"the serving generation's {s['estimate']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]"
            )
    return ("fail" if reasons else "pass"), reasons, ("off-policy" if by_ope else "offline")

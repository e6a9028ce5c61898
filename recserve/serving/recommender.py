"""The online recommendation path as a plain class (the Serve `Router` deployment will hold one):
user context -> candidates from the sharded index (filters and seen items inside the search) ->
ranker over the shared features -> bandit exploration -> template reasons.

It loads one registry generation (embeddings, index, ranker) and the dataset they were trained
on (for popularity, trending, co-visitation and each user's history). An unknown user gets
popular items (cold start); when the index cannot answer, popular items too, at a lower level.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from recserve.config import Config
from recserve.ranking.features import FEATURE_NAMES, candidate_features, update_session
from recserve.ranking.interactions import build_interactions
from recserve.registry import Registry

LEVEL_FULL, LEVEL_TEMPLATES, LEVEL_BATCH, LEVEL_CACHED, LEVEL_POPULAR = 0, 1, 2, 3, 4


@dataclass
class Recommendation:
    request_id: str
    items: list[dict]
    degradation_level: int
    model_versions: dict[str, str]
    took_ms: float
    signals: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"request_id": self.request_id, "items": self.items, "degradation_level": self.degradation_level,
                "model_versions": self.model_versions, "took_ms": round(self.took_ms, 2)}


def ranking_facts(signal: dict) -> list[str]:
    """Which of the signals that ranked an item explain it, by name: "session_category" or
    "history_category", "covisit", "trending", "explored". One set of thresholds for the template
    reasons and the LLM's grounded prompts (recserve.explain)."""
    f = signal["features"]
    out = []
    if f.get("session_cat_share", 0) >= 0.2:
        out.append("session_category")
    elif f.get("history_cat_share", 0) >= 0.2:
        out.append("history_category")
    if f.get("covisit", 0) > 0.5:
        out.append("covisit")
    if f.get("log_trending", 0) >= 2.0:
        out.append("trending")
    if signal.get("explored"):
        out.append("explored")
    return out


TEMPLATE_REASONS = {"session_category": "you have been looking at {category}",
                    "history_category": "you often choose {category}",
                    "covisit": "often viewed with items you just saw", "trending": "trending now",
                    "explored": "something new for you"}


def template_reasons_from(signal: dict) -> list[str]:
    """Reasons from the signals that ranked the item (the Explainer's template tier): signal is
    one entry of `Recommender.signals` — features by name, category, explored."""
    out = [TEMPLATE_REASONS[k].format(category=signal["category"]) for k in ranking_facts(signal)]
    return out or ["matches your taste"]


class Recommender:
    def __init__(self, cfg: Config, registry: Registry, index_router, bandit=None):
        from recserve.offline.data import read_events, read_items
        from recserve.offline.jobs import load_embeddings
        from recserve.ranking.ranker import ranking_inputs

        self.cfg = cfg
        self.index = index_router
        self.bandit = bandit
        emb = load_embeddings(registry)
        self.versions = {"embeddings": emb["version"], "index": registry.resolve("index"),
                         "ranker": registry.resolve("ranker")}
        self._ranker_path = registry.fetch("ranker") / "ranker.pt"
        self._model = None
        dataset = registry.manifest("embeddings", emb["version"])["lineage"]["dataset"]
        events, items = read_events(dataset), read_items(dataset)
        self.data = build_interactions(events, events.iloc[:0], items)
        if not (np.array_equal(self.data.item_ids, emb["item_ids"]) and
                np.array_equal(self.data.user_ids, emb["user_ids"])):
            raise ValueError(f"embeddings {emb['version']} were not trained on all of {dataset} (holdout?): "
                             f"serve a version trained with --holdout 0")
        self.user_vectors = emb["user_vectors"]
        self.inputs = ranking_inputs(self.data, items, emb["item_vectors"], cfg.ranker)
        self.user_index = self.data.user_index()
        by_id = items.set_index("item_id")
        self.item_category = by_id["category"].reindex(self.data.item_ids).fillna("").to_numpy()
        self.item_title = by_id["title"].reindex(self.data.item_ids).fillna("").astype(str).to_numpy()
        self.t_data = int(events["ts"].max())
        self.popular = np.argsort(-self.inputs.stats.popularity)[:1000]
        self.new_items: dict[int, str] = {}
        self.asearch = None  # an async search to use instead of the index router's (the serving batcher)
        # the stream's live context: user_id -> recserve.stream.LiveContext | None (set by the router)
        self.live = None
        self.live_weight = 0.7   # share of the real-time vector in the retrieval query
        self.dim = self.user_vectors.shape[1] - 1   # [u, 1] . [v, b]

    # ------------------------------------------------------------------ helpers
    def _seen(self, u: int) -> np.ndarray:
        m = self.data.matrix
        return self.data.item_ids[m.indices[m.indptr[u]:m.indptr[u + 1]]]

    def _popular(self, k: int, filters: dict | None, exclude: set[int]) -> list[dict]:
        cats = set((filters or {}).get("categories") or [])
        out = []
        for d in self.popular:
            iid = int(self.data.item_ids[d])
            if iid in exclude or (cats and self.item_category[d] not in cats):
                continue
            out.append({"item_id": iid, "score": float(np.log1p(self.inputs.stats.popularity[d])),
                        "reasons": ["popular right now"]})
            if len(out) == k:
                break
        return out

    # --------------------------------------------------------------- recommend
    def _prepare(self, user_id: int, k: int, filters: dict | None) -> dict:
        t0 = time.perf_counter()
        filters = dict(filters or {})
        exclude = set(int(i) for i in filters.get("exclude_ids") or [])
        u = self.user_index.get(int(user_id))
        if u is None:  # cold start
            return {"done": (self._popular(k, filters, exclude), LEVEL_FULL), "t0": t0}
        seen = self._seen(u)
        ctx, query, seen_live = self.inputs.contexts[u], self.user_vectors[u], []
        live = self.live(int(user_id)) if self.live is not None else None
        if live is not None and live.events:
            ctx, query, seen_live = self._with_live(u, live)
        search_filter = {key: v for key, v in filters.items() if key in ("categories", "attributes") and v}
        search_filter["exclude_ids"] = sorted(exclude | set(seen.tolist()) | set(seen_live))
        return {"u": u, "ctx": ctx, "query": query[None, :], "n": max(k, self.cfg.ranker.candidates),
                "filter": search_filter, "fallback": (filters, exclude | set(seen.tolist())), "t0": t0,
                "live": live is not None and bool(live.events)}

    def _with_live(self, u: int, live) -> tuple:
        """The offline context with the stream's newer events folded in by the same function the
        offline job uses (update_session), and the retrieval query moved toward the real-time
        vector (a decayed mean of the items just interacted with)."""
        import copy

        ctx = copy.deepcopy(self.inputs.contexts[u])
        ids = np.array([e[0] for e in live.events], dtype=np.int64)
        dense = np.minimum(np.searchsorted(self.data.item_ids, ids), self.data.n_items - 1)
        for e, d in zip(live.events, dense.tolist()):
            if self.data.item_ids[d] == e[0] and e[1] >= ctx.last_ts:
                update_session(ctx, d, int(self.inputs.stats.item_cat[d]), int(e[1]), self.cfg.ranker.session_len)
        query = self.user_vectors[u].copy()
        vec = live.vector()
        if vec is not None and len(vec) >= self.dim:
            m = vec[: self.dim]
            scale = np.linalg.norm(query[: self.dim]) / max(float(np.linalg.norm(m)), 1e-9)
            query[: self.dim] = (1 - self.live_weight) * query[: self.dim] + self.live_weight * scale * m
        return ctx, query, [int(e[0]) for e in live.events]

    def _unavailable(self, prep: dict, k: int) -> dict:
        """The index could not answer: popular items, at the popular level."""
        filters, exclude = prep["fallback"]
        return {"done": (self._popular(k, filters, exclude), LEVEL_POPULAR), "t0": prep["t0"]}

    def _features(self, prep: dict, ids: np.ndarray, scores: np.ndarray) -> dict:
        ids, scores = ids[0], scores[0]
        keep = ids >= 0
        ids, scores = ids[keep], scores[keep]
        dense = np.minimum(np.searchsorted(self.data.item_ids, ids), self.data.n_items - 1)
        known = self.data.item_ids[dense] == ids   # items added since training have no statistics yet
        ctx = prep["ctx"]
        t_ref = max(int(ctx.last_ts), self.t_data)
        X = np.zeros((len(ids), len(FEATURE_NAMES)), dtype=np.float32)
        X[known] = candidate_features(ctx, dense[known], scores[known], self.inputs.stats, t_ref,
                                      self.cfg.ranker.trending_window_s)
        X[~known, 0] = scores[~known]
        X[:, FEATURE_NAMES.index("retrieval_rank")] = np.arange(len(ids)) / max(len(ids) - 1, 1)
        dense = np.where(known, dense, -1)
        return {"ids": ids, "dense": dense, "X": X, "t0": prep["t0"], "live": prep.get("live", False), "ctx": ctx}

    def candidates(self, user_id: int, k: int, filters: dict | None) -> dict:
        """Stage 1 (before ranking): candidates and their features, or a finished fallback answer."""
        prep = self._prepare(user_id, k, filters)
        if "done" in prep:
            return prep
        try:
            ids, scores = self.index.search(prep["query"], prep["n"], prep["filter"])
        except Exception:  # noqa: BLE001 - any index failure degrades, never errors
            return self._unavailable(prep, k)
        return self._features(prep, ids, scores)

    async def acandidates(self, user_id: int, k: int, filters: dict | None) -> dict:
        """`candidates` for a Serve replica's event loop (the index search is awaited). An index
        failure is raised, not degraded here: the caller (recserve.ladder) decides the fallback."""
        prep = self._prepare(user_id, k, filters)
        if "done" in prep:
            return prep
        ids, scores = await (self.asearch or self.index.asearch)(prep["query"], prep["n"], prep["filter"])
        return self._features(prep, ids, scores)

    def category_of(self, dense: int, item_id: int) -> str:
        return str(self.item_category[dense]) if dense >= 0 else self.new_items.get(item_id, "")

    def add_items(self, items: dict[int, str]) -> None:
        """Categories of catalogue items added while serving (for reasons; statistics come with
        the next offline run)."""
        self.new_items.update(items)

    @staticmethod
    def ranked(stage: dict, scores: np.ndarray | None) -> tuple[list[int], np.ndarray]:
        """Candidate ids in the ranker's order (retrieval order without scores), and the scores."""
        s = scores if scores is not None else np.zeros(len(stage["ids"]))
        order = np.argsort(-s, kind="stable")
        return [int(stage["ids"][j]) for j in order], s

    SIMILAR_SEEN = 0.5   # cosine from which a just-seen item is named as similar

    def signals(self, stage: dict, chosen: list[int], explored: list[bool]) -> list[dict]:
        """What ranked each shown item — the Explainer's input: features by name, title, category,
        whether the bandit explored it, and the item the user just saw that it is most similar to
        (when the cosine passes SIMILAR_SEEN)."""
        pos = {int(i): j for j, i in enumerate(stage["ids"])}
        ctx = stage.get("ctx")
        recent = np.asarray(ctx.last_items if ctx is not None else [], dtype=np.int64)
        unit = self.inputs.stats.unit_vectors
        out = []
        for iid, ex in zip(chosen, explored):
            j = pos[iid]
            d = int(stage["dense"][j])
            similar = []
            if d >= 0 and len(recent):
                sims = unit[recent] @ unit[d]
                b = int(np.argmax(sims))
                if sims[b] >= self.SIMILAR_SEEN and recent[b] != d:
                    similar.append({"item_id": int(self.data.item_ids[recent[b]]),
                                    "title": str(self.item_title[recent[b]])})
            out.append({"item_id": iid, "features": dict(zip(FEATURE_NAMES, stage["X"][j].tolist())),
                        "title": str(self.item_title[d]) if d >= 0 else "",
                        "category": self.category_of(d, iid), "explored": bool(ex), "similar_seen": similar})
        return out

    def finish(self, stage: dict, scores: np.ndarray | None, user_id: int, k: int, explain: bool,
               slate=None, reasons: list[list[str]] | None = None, request_id: str | None = None,
               llm: bool = False) -> Recommendation:
        """Stage 2: order by the ranker's scores, explore (the given slate, or this process's
        bandit), explain (the given reasons, or templates), answer. `llm`: the reasons came from
        the LLM explainer (full level); templates are level 1."""
        rid = request_id or uuid.uuid4().hex
        if "done" in stage:
            items, level = stage["done"]
            return Recommendation(rid, items, level, self.versions, (time.perf_counter() - stage["t0"]) * 1000)
        ranked, s = self.ranked(stage, scores)
        if slate is None and self.bandit is not None and ranked:
            slate = self.bandit.choose(ranked, k, user_id, rid)
        if slate is not None:
            chosen, explored = list(slate.items), list(slate.explored)
        else:
            chosen, explored = ranked[:k], [False] * min(k, len(ranked))
        if explain and reasons is None:
            reasons = [template_reasons_from(sg) for sg in self.signals(stage, chosen, explored)]
        pos = {int(i): j for j, i in enumerate(stage["ids"])}
        items = [{"item_id": iid, "score": float(s[pos[iid]]), "reasons": reasons[n] if explain else []}
                 for n, iid in enumerate(chosen)]
        level = LEVEL_TEMPLATES if explain and not llm else LEVEL_FULL
        return Recommendation(rid, items, level, self.versions, (time.perf_counter() - stage["t0"]) * 1000)

    def recommend(self, user_id: int, k: int = 10, filters: dict | None = None, explain: bool = False) -> Recommendation:
        """Both stages in this process, ranking with the local model."""
        from recserve.ranking.ranker import score as rank_score

        stage = self.candidates(user_id, k, filters)
        if self._model is None:   # loaded on first use: the serving router ranks elsewhere
            from recserve.ranking.ranker import load_model

            self._model, _ = load_model(self._ranker_path)
        scores = rank_score(self._model, stage["X"][None])[0] if "X" in stage and len(stage["X"]) else None
        return self.finish(stage, scores, user_id, k, explain)

"""The online path's stage: everything a recommendation computes in this process, with no I/O.
The ladder (recserve.serving.ladder) calls it between the hops of its ports:

  prepare   user context (the training history, with the stream's newer events folded in) and the
            retrieval query: a vector, how many candidates, the filter (the request's filters and
            the user's seen items, applied inside the search)
  features  the ranker's features of the candidates the index returned (the functions the offline
            job trained on, recserve.ranking.features)
  ranked / signals / items   the ranker's order, what ranked each shown item (the explainer's
            input), the answer's items
  popular   the popular items (cold start and the emergency level)

It loads one registry generation's item side (the embeddings' item vectors and their compact
serving arrays: popularity, trending, co-visitation, categories, titles; recserve.featurestore):
nothing it holds is sized by the users or the events but a bounded LRU of recent users' states,
which the ladder fetches from the feature store (Redis) with the live context."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recserve import keys
from recserve.artifacts import embedding_array
from recserve.config import Config
from recserve.explain.templates import POPULAR_REASON
from recserve.featurestore import UserLRU, UserState, load_serving, serving_files
from recserve.ranking.content import ContentEncoder, fold_in, session_blend
from recserve.ranking.features import (
    FEATURE_NAMES,
    SessionContext,
    candidate_features,
    session_context,
    update_session,
)
from recserve.ranking.sequence import SequenceScorer, top_unseen

RANK_COL = FEATURE_NAMES.index("retrieval_rank")


@dataclass
class Query:
    """A known user's retrieval query (what `prepare` gives the search port)."""

    user_id: int
    state: UserState | None  # the user's state in the feature store (None: an anonymous session)
    ctx: SessionContext  # the training history's context, the stream's events folded in
    vector: np.ndarray  # [1, d + 1] retrieval query
    n: int  # candidates wanted
    filter: dict  # the search's filter: request filters, seen items excluded
    filters: dict  # the request's filters
    exclude: set[int]  # what no answer may show: the request's exclusions and seen items
    live: bool  # the stream's context was folded in
    sequence: tuple | None = None  # (state, normaliser) of the sequence model, computed by `features`


@dataclass
class Candidates:
    """The index's answer with the ranker's features (what `features` gives the score port)."""

    query: Query
    ids: np.ndarray  # item ids, retrieval order
    dense: np.ndarray  # dense item indexes (-1: added since training)
    X: np.ndarray  # [len(ids), len(FEATURE_NAMES)] float32


class Recommender:
    def __init__(self, cfg: Config, registry, versions: dict[str, str] | None = None):
        """`versions`: the generation's {embeddings, index, ranker} (default: what serves,
        recserve.generations.serving_versions)."""
        from recserve.generations import serving_versions

        self.cfg = cfg
        versions = versions or serving_versions(registry) or {}
        version = registry.resolve("embeddings", versions.get("embeddings"))
        self.versions = {
            "embeddings": version,
            "index": registry.resolve("index", versions.get("index")),
            "ranker": registry.resolve("ranker", versions.get("ranker")),
        }
        emb_dir = registry.fetch("embeddings", version)
        self.files = serving_files(cfg, registry, version)  # the version's users/ and serving/ arrays
        si = load_serving(self.files)
        self.fid, self.n_users = si.fid, si.n_users
        self.item_ids = embedding_array(emb_dir, "item_ids")
        self.n_items = len(self.item_ids)
        self.stats = si.stats
        self.t_data = si.t_data
        self._target = si.target_score
        self._some_user = si.some_user
        self.content = ContentEncoder.load(emb_dir)  # None: trained before it
        # the sequence model trained with these embeddings (None: without one; its feature is then 0)
        self.sequence = SequenceScorer.load(emb_dir)
        self.item_vectors = embedding_array(emb_dir, "item_vectors").astype(np.float32)  # [n_items, d + 1] = [v, b]
        self._item_norms = np.linalg.norm(self.item_vectors[:, :-1], axis=1)
        self._median_norm = float(np.median(self._item_norms))  # an item added since training, in similar_items
        self.item_category = si.category
        self.item_title = si.title
        pop = self.stats.popularity
        self._popular = np.argsort(-pop)[:1000]
        self._popular_ids = self.item_ids[self._popular].astype(np.int64)
        self._popular_scores = np.log1p(pop[self._popular]).astype(np.float64)
        self.new_items: dict[int, str] = {}
        self.new_titles: dict[int, str] = {}
        self.new_units: dict[int, np.ndarray] = {}  # unit vectors of items added since training
        self.new_near: dict[int, np.ndarray] = {}  # ...and their nearest trained items (dense indexes)
        self._cat_codes = {str(c): int(k) for c, k in zip(self.item_category, self.stats.item_cat)}
        self.dim = self.item_vectors.shape[1] - 1  # [u, 1] . [v, b]
        self.users = UserLRU(cfg.serve.user_states)  # recent users' states (the feature store's, decoded)
        self.forgotten: set[int] = set()  # forgotten since load: not admitted again from a read in flight

    # ------------------------------------------------------------------- users
    def state_key(self, user_id: int) -> str:
        """The user's key in this generation's feature store (recserve.keys.user_state)."""
        return keys.user_state(self.fid, user_id)

    def admit(self, user_id: int, raw: bytes | None) -> UserState | None:
        """The user's state as the feature store answered it (None: a user this generation never saw),
        kept in the LRU."""
        if raw is None or int(user_id) in self.forgotten:
            return None
        st = UserState.decode(raw)
        if st.user_id != int(user_id):
            raise ValueError(f"the feature store's state under {self.state_key(user_id)} is user {st.user_id}'s")
        self.users.put(st)
        return st

    def forget(self, users) -> None:
        """Forgotten users (recserve.privacy) are strangers from now on: their states leave the LRU
        (recserve.privacy deletes them from the feature store), until the next model leaves them out."""
        for u in users:
            self.users.drop(int(u))
            self.forgotten.add(int(u))

    def some_user(self) -> int:
        """A known user id (warm-up)."""
        return self._some_user

    # ------------------------------------------------------------------ popular
    def popular(self, k: int, filters: dict | None, exclude: set[int] | None = None) -> list[dict]:
        """The k most popular items passing the request's categories, none of `exclude`."""
        cats = set((filters or {}).get("categories") or [])
        exclude = exclude or set()
        out = []
        for j, iid in enumerate(self._popular_ids.tolist()):
            if iid in exclude or (cats and self.item_category[self._popular[j]] not in cats):
                continue
            out.append({"item_id": iid, "score": float(self._popular_scores[j]), "reasons": [POPULAR_REASON]})
            if len(out) == k:
                break
        return out

    # ------------------------------------------------------------------ prepare
    def prepare(self, state: UserState, k: int, filters: dict | None, live=None) -> Query:
        """The query of a known user (their state in the feature store), with the stream's live
        context when given."""
        filters = dict(filters or {})
        request_excl = {int(i) for i in filters.get("exclude_ids") or []}
        seen = self.item_ids[state.seen]
        ctx, seen_live, folded = state.context(self.stats.item_cat), [], False
        if live is not None and live.events:
            ctx, seen_live = self._with_live(ctx, live)
            folded = True
        query = self.query_of(state, ctx) if folded else self._trained_query(state, ctx)
        exclude = request_excl | set(seen.tolist())
        search_filter = {key: v for key, v in filters.items() if key in ("categories", "attributes") and v}
        search_filter["exclude_ids"] = sorted(exclude | set(seen_live))
        return Query(
            int(state.user_id),
            state,
            ctx,
            query[None, :],
            max(k, self.cfg.ranker.candidates),
            search_filter,
            filters,
            exclude,
            folded,
        )

    def _with_live(self, ctx: SessionContext, live) -> tuple:
        """The offline context (a fresh copy) with the stream's newer events folded in by the same
        function the offline job uses (update_session), and the ids the stream saw."""
        ids = np.array([e[0] for e in live.events], dtype=np.int64)
        dense = np.minimum(np.searchsorted(self.item_ids, ids), self.n_items - 1)
        for e, d in zip(live.events, dense.tolist()):
            if self.item_ids[d] == e[0] and e[1] >= ctx.last_ts:
                update_session(ctx, d, int(self.stats.item_cat[d]), int(e[1]), self.cfg.ranker.session_len)
        return ctx, [int(e[0]) for e in live.events]

    def query_of(self, state: UserState, ctx: SessionContext) -> np.ndarray:
        """A known user's retrieval query: the trained vector moved toward the fold-in of the
        context's last items (the stream's newest included), as training and `recserve eval` form it
        (recserve.ranking.content.session_blend): a click changes the next answer's candidates."""
        rc = self.cfg.ranker
        recent = np.asarray(ctx.last_items[-rc.session_items :], dtype=np.int64)
        return session_blend(
            state.vector,
            self.item_vectors[recent],
            self.cfg.stream.vector_decay,
            self.target_score,
            rc.session_weight,
        )

    def _trained_query(self, state: UserState, ctx: SessionContext) -> np.ndarray:
        """`query_of` the training context, computed once per user state (the LRU bounds them)."""
        if state.query is None:
            state.query = self.query_of(state, ctx)
        return state.query

    def sequence_state(self, q: Query) -> tuple | None:
        """(state, normaliser) of the sequence model after the query's context history (the stream's
        newest events included: a click changes it); a known user's training context once, kept
        like `_trained_query`'s."""
        if self.sequence is None:
            return None
        if q.sequence is None and not self._reuse_live(q):
            if q.live or q.state is None:
                q.sequence = self._state_of(q.ctx.history)
                self._keep_live(q)
            else:
                if q.state.sequence is None:
                    q.state.sequence = self._state_of(q.ctx.history)
                q.sequence = q.state.sequence
        return q.sequence

    def sequence_pending(self, q: Query) -> bool:
        """Whether `features` would run the sequence model for this query: its state is neither
        computed yet nor kept with the user's state (a live context always needs a new one)."""
        if self.sequence is None or q.sequence is not None or self._reuse_live(q):
            return False
        return q.live or q.state is None or q.state.sequence is None

    def _live_key(self, q: Query) -> tuple:
        """What the sequence model's state after a live context depends on: the history it reads."""
        return tuple(q.ctx.history[-self._sequence.settings.max_len :])

    def _reuse_live(self, q: Query) -> bool:
        """A known user's live state computed for the same history by an earlier request (kept with their
        state in the LRU until their next event): a user who asks again between events runs no forward."""
        if not q.live or q.state is None or q.state.live_sequence is None:
            return False
        key, val = q.state.live_sequence
        if key != self._live_key(q):
            return False
        q.sequence = val
        return True

    def _keep_live(self, q: Query) -> None:
        if q.live and q.state is not None and q.sequence is not None:
            q.state.live_sequence = (self._live_key(q), q.sequence)

    def sequence_states(self, queries: list[Query]) -> None:
        """`sequence_state` of several queries in one forward pass (the ladder's batch of the answers
        in the stage together). Each row is the computation it would be alone: every history is
        left-padded to the model's max_len, so a batch changes no state."""
        need = [q for q in queries if self.sequence_pending(q)]
        if not need:
            return
        seq = self._sequence
        for q, state in zip(need, seq.states([q.ctx.history for q in need])):
            q.sequence = (state, seq.normaliser(state))
            if not q.live and q.state is not None:
                q.state.sequence = q.sequence
            self._keep_live(q)

    @property
    def _sequence(self) -> SequenceScorer:
        """The sequence model, where the caller has checked that this generation has one."""
        assert self.sequence is not None
        return self.sequence

    def _state_of(self, history: list[int]) -> tuple:
        state = self._sequence.states([history])[0]
        return state, self._sequence.normaliser(state)

    @property
    def target_score(self) -> float:
        """The mean score of the training pairs (the fold-in's target), computed offline."""
        return self._target

    # ------------------------------------------------------------ known items
    def dense_of(self, ids) -> np.ndarray:
        """Dense indexes of item ids, -1 for items the embeddings were not trained on."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return np.zeros(0, dtype=np.int64)
        dense = np.minimum(np.searchsorted(self.item_ids, ids), self.n_items - 1)
        return np.where(self.item_ids[dense] == ids, dense, -1)

    # ------------------------------------------------------ anonymous sessions
    def session_query(self, items: list[int], k: int, filters: dict | None) -> Query | None:
        """An anonymous visitor's query from the items of their session (oldest first), or None
        when none of them is in the trained catalogue: the user vector folded in from the trained
        item vectors (recserve.ranking.content.fold_in), the session as the ranker's context, as a
        live one would be."""
        filters = dict(filters or {})
        dense = self.dense_of(items)
        d = dense[dense >= 0]
        if not len(d):
            return None
        query = fold_in(self.item_vectors[d], self.cfg.stream.vector_decay, self.target_score)[None, :]
        ctx = session_context(d, self.stats.item_cat, np.full(len(d), self.t_data), self.cfg.ranker.session_len)
        exclude = {int(i) for i in filters.get("exclude_ids") or []} | {int(i) for i in items}
        search_filter = {key: val for key, val in filters.items() if key in ("categories", "attributes") and val}
        search_filter["exclude_ids"] = sorted(exclude)
        return Query(-1, None, ctx, query, max(k, self.cfg.ranker.candidates), search_filter, filters, exclude, True)

    # ------------------------------------------------------------ similar items
    def similar_query(self, item_id: int, vector: np.ndarray, k: int, filters: dict | None) -> tuple:
        """(query [1, d + 1], candidates to fetch, the search filter) for the items like `item_id`,
        whose index vector is `vector` ([v, b]): the query [v, 0] scores v . v' (the bias, an item's
        popularity, left out); four times k are fetched and re-scored by cosine (`similar_items`)."""
        filters = dict(filters or {})
        q = np.zeros((1, len(vector)), dtype=np.float32)
        q[0, :-1] = np.asarray(vector, dtype=np.float32)[:-1]
        flt = {key: val for key, val in filters.items() if key in ("categories", "attributes") and val}
        flt["exclude_ids"] = sorted({int(i) for i in filters.get("exclude_ids") or []} | {int(item_id)})
        return q, max(4 * k, 40), flt

    def similar_items(self, vector: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int) -> list[dict]:
        """The index's answer ([1, n], -1 padded) re-scored by cosine with `vector`, the best k."""
        ids, scores = ids[0], scores[0]
        keep = ids >= 0
        ids, scores = ids[keep], scores[keep].astype(np.float64)
        if not len(ids):
            return []
        norm = max(float(np.linalg.norm(np.asarray(vector)[:-1])), 1e-9)
        dense = self.dense_of(ids)
        other = np.where(dense >= 0, self._item_norms[np.maximum(dense, 0)], self._median_norm)
        cos = scores / (norm * np.maximum(other, 1e-9))
        order = np.argsort(-cos, kind="stable")[:k]
        return [{"item_id": int(ids[j]), "score": round(float(cos[j]), 6), "reasons": []} for j in order]

    def covisited(self, item_id: int, k: int, filters: dict | None) -> list[dict]:
        """The items most often viewed together with `item_id` in training (when the index cannot
        answer), within the request's categories and exclusions."""
        d = int(self.dense_of([item_id])[0])
        if d < 0:
            return []
        m = self.stats.covisit
        cols, w = m.indices[m.indptr[d] : m.indptr[d + 1]], m.data[m.indptr[d] : m.indptr[d + 1]]
        cats = set((filters or {}).get("categories") or [])
        excl = {int(i) for i in (filters or {}).get("exclude_ids") or []} | {int(item_id)}
        out = []
        for j in np.argsort(-w, kind="stable").tolist():
            iid = int(self.item_ids[cols[j]])
            if iid in excl or (cats and self.item_category[cols[j]] not in cats):
                continue
            out.append({"item_id": iid, "score": round(float(w[j]), 6), "reasons": ["often viewed together"]})
            if len(out) == k:
                break
        return out

    # ----------------------------------------------------------------- features
    def features(self, q: Query, ids: np.ndarray, scores: np.ndarray) -> Candidates:
        """The ranker's features of the index's answer ([1, n] ids and scores, -1 padded)."""
        ids, scores = ids[0], scores[0]
        keep = ids >= 0
        ids, scores = ids[keep], scores[keep]
        seq = self.sequence_state(q)
        if seq is not None and self.cfg.sequence.candidates > 0:
            ids, scores = self._with_sequence_source(q, seq[0], ids, scores)
        dense = self.dense_of(ids)
        known = dense >= 0  # items added since training have no statistics yet
        t_ref = max(int(q.ctx.last_ts), self.t_data)
        X = np.zeros((len(ids), len(FEATURE_NAMES)), dtype=np.float32)
        logp = (lambda d: self._sequence.item_log_probs(seq[0], seq[1], d)) if seq is not None else (lambda d: None)
        if known.all():
            X[:] = candidate_features(
                q.ctx, dense, scores, self.stats, t_ref, self.cfg.ranker.trending_window_s, logp(dense)
            )
        else:
            X[known] = candidate_features(
                q.ctx,
                dense[known],
                scores[known],
                self.stats,
                t_ref,
                self.cfg.ranker.trending_window_s,
                logp(dense[known]),
            )
            X[~known] = self._new_item_features(q.ctx, ids[~known], scores[~known], t_ref, logp)
        X[:, RANK_COL] = np.arange(len(ids)) / max(len(ids) - 1, 1)
        return Candidates(q, ids, dense, X)

    def _with_sequence_source(
        self, q: Query, state: np.ndarray, ids: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The sequence model as a retrieval source beside the index (sequence.candidates > 0): its
        best items for this context that pass the request's categories and exclusions and are not
        among the index's, after them, scored by the query as the index scores them. A request
        filtering on attributes keeps the index's answer alone (the attributes live in the shards)."""
        if q.filters.get("attributes"):
            return ids, scores
        z = self._sequence.items @ state
        gone = self.dense_of(list(q.filter.get("exclude_ids") or []) + ids.tolist())
        cats = q.filters.get("categories")
        if cats:
            z[~np.isin(self.item_category, list(cats))] = -np.inf
        top = top_unseen(z[None, :], [gone[gone >= 0]], self.cfg.sequence.candidates)[0]
        top = top[top >= 0]
        extra = (self.item_vectors[top] @ q.vector[0]).astype(scores.dtype)
        return np.concatenate([ids, self.item_ids[top].astype(ids.dtype)]), np.concatenate([scores, extra])

    # ------------------------------------------------------------------- answer
    @staticmethod
    def ranked(c: Candidates, scores: np.ndarray | None) -> list[int]:
        """Candidate ids in the ranker's order (retrieval order without scores)."""
        if scores is None:
            return c.ids.tolist()
        return c.ids[np.argsort(-scores, kind="stable")].tolist()

    def category_of(self, dense: int, item_id: int) -> str:
        return str(self.item_category[dense]) if dense >= 0 else self.new_items.get(item_id, "")

    def title_of(self, dense: int, item_id: int) -> str:
        return str(self.item_title[dense]) if dense >= 0 else self.new_titles.get(item_id, "")

    def add_items(
        self, items: dict[int, str], vectors: np.ndarray | None = None, titles: dict[int, str] | None = None
    ) -> None:
        """Catalogue items added while serving: their categories (for reasons and the category
        features), titles (for the item lookup) and vectors (for the similarity features);
        statistics come with the next offline run."""
        self.new_items.update(items)
        if titles:
            self.new_titles.update(titles)
        if vectors is not None:
            v = np.asarray(vectors, dtype=np.float32)[:, :-1]
            unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
            stats = self.stats
            for i, u in zip(items, unit):
                self.new_units[int(i)] = u
                if u.shape[0] == stats.unit_vectors.shape[1]:  # its nearest trained items, for its prior
                    self.new_near[int(i)] = np.argsort(-(stats.unit_vectors @ u))[: self.NEW_ITEM_NEIGHBOURS]

    def unfamiliar(self, ids: np.ndarray) -> list[int]:
        """Ids among a search's answer that are neither trained on nor known to this replica as
        added since (added through another ingress replica)."""
        ids = np.asarray(ids).reshape(-1)
        ids = ids[ids >= 0]
        dense = self.dense_of(ids)
        return [int(i) for i, d in zip(ids.tolist(), dense.tolist()) if d < 0 and int(i) not in self.new_units]

    def learn_items(self, found: dict) -> None:
        """Items added since training, as the index holds them ({id: (vector, metadata)})."""
        if found:
            ids = list(found)
            self.add_items(
                {i: str(found[i][1].get("category", "")) for i in ids},
                np.array([found[i][0] for i in ids], dtype=np.float32),
                {i: str(found[i][1]["title"]) for i in ids if found[i][1].get("title")},
            )

    NEW_ITEM_NEIGHBOURS = 5
    BEHAVIOUR_COLS = [
        FEATURE_NAMES.index(n)
        for n in (
            "log_popularity",
            "log_trending",
            "covisit",
            "log_hours_since_item",
            "covisit_history",
            "log_trending_long",
            "sequence_logprob",
        )
    ]

    def _new_item_features(
        self, ctx: SessionContext, ids: np.ndarray, scores: np.ndarray, t_ref: int, logp=lambda d: None
    ) -> np.ndarray:
        """The features of items added since training, which have no statistics of their own: their
        category against the session's and the history's and their cosine with the items just
        seen, from their own category and vector; and for what only use can tell (popularity,
        trending, co-visitation, recency), a prior: the mean of their nearest trained items' (by
        cosine), as if they were used like the items they are like (the sequence model's
        log-probability too: `logp` gives it for trained items). Without it the ranker, which
        never saw an item nobody used, ranks every new item last until the next training."""
        stats = self.stats
        X = np.zeros((len(ids), len(FEATURE_NAMES)), dtype=np.float32)
        X[:, 0] = scores
        codes = [self._cat_codes.get(self.new_items.get(int(i), ""), -1) for i in ids]
        recent = np.asarray(ctx.last_items, dtype=np.int64)
        if len(recent):
            X[:, 3] = np.array([ctx.category_counts.get(c, 0) if c >= 0 else 0 for c in codes], np.float32) / len(
                recent
            )
        X[:, 8] = np.log1p(ctx.n_events)
        total = sum(ctx.history_cats.values())
        X[:, 12] = np.array([ctx.history_cats.get(c, 0) if c >= 0 else 0 for c in codes], np.float32) / max(total, 1)
        for j, i in enumerate(ids.tolist()):
            near = self.new_near.get(int(i))
            if near is None:
                continue
            if len(recent):
                sims = stats.unit_vectors[recent] @ self.new_units[int(i)]
                X[j, 4], X[j, 5] = sims.max(), sims.mean()
            prior = candidate_features(
                ctx, near, np.zeros(len(near), np.float32), stats, t_ref, self.cfg.ranker.trending_window_s, logp(near)
            )
            X[j, self.BEHAVIOUR_COLS] = prior[:, self.BEHAVIOUR_COLS].mean(axis=0)
        return X

    SIMILAR_SEEN = 0.5  # cosine from which a just-seen item is named as similar

    def signals(self, c: Candidates, chosen: list[int], explored: list[bool]) -> list[dict]:
        """What ranked each shown item — the Explainer's input: features by name, title, category,
        whether the bandit explored it, and the item the user just saw that it is most similar to
        (when the cosine passes SIMILAR_SEEN)."""
        pos = {int(i): j for j, i in enumerate(c.ids.tolist())}
        recent = np.asarray(c.query.ctx.last_items, dtype=np.int64)
        unit = self.stats.unit_vectors
        out = []
        for iid, ex in zip(chosen, explored):
            j = pos[iid]
            d = int(c.dense[j])
            similar = []
            if d >= 0 and len(recent):
                sims = unit[recent] @ unit[d]
                b = int(np.argmax(sims))
                if sims[b] >= self.SIMILAR_SEEN and recent[b] != d:
                    similar.append({"item_id": int(self.item_ids[recent[b]]), "title": str(self.item_title[recent[b]])})
            out.append(
                {
                    "item_id": iid,
                    "features": dict(zip(FEATURE_NAMES, c.X[j].tolist())),
                    "title": str(self.item_title[d]) if d >= 0 else "",
                    "category": self.category_of(d, iid),
                    "explored": bool(ex),
                    "similar_seen": similar,
                }
            )
        return out

    @staticmethod
    def items(
        c: Candidates, scores: np.ndarray | None, chosen: list[int], reasons: list[list[str]] | None = None
    ) -> list[dict]:
        """The answer's items: id, the ranker's score (0 without one), reasons when explained."""
        pos = {int(i): j for j, i in enumerate(c.ids.tolist())}
        s = scores.tolist() if scores is not None else None
        return [
            {
                "item_id": iid,
                "score": float(s[pos[iid]]) if s is not None else 0.0,
                "reasons": reasons[n] if reasons is not None else [],
            }
            for n, iid in enumerate(chosen)
        ]

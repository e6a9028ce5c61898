"""Stage `evaluate`: Recall@K, NDCG@K and coverage of every method on the per-user temporal split,
published as an evaluation version with its table and plot."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from recserve.artifacts import (
    event_weights,
    load_embeddings,
    ranker_path,
)
from recserve.config import Config
from recserve.offline.data import dataset_meta
from recserve.offline.jobs.common import Progress, say, train_part
from recserve.offline.jobs.training import sequence_source
from recserve.ranking.interactions import build_interactions
from recserve.registry import Registry

METHODS = (
    "popularity",
    "als",
    "ease",
    "retrieval",
    "retrieval_ranker",
    "anonymous_session",
    "session_vector_seen_excluded",
    "sequence_model",
)
SESSION_ITEMS = 5  # the anonymous-session row: each test user's last 5 training items, no user id


def evaluate(
    cfg: Config,
    dataset_dir: str | Path,
    registry: Registry | None = None,
    out: str | Path | None = None,
    methods: tuple[str, ...] = METHODS,
    versions: dict | None = None,
    log: Progress | None = None,
) -> dict:
    """Recall@K, NDCG@K and coverage of every method on the per-user temporal split. The learned
    methods use the registry's embeddings / index / ranker versions (latest by default), which
    must have been trained on the same split (holdout = eval.holdout)."""
    log = log or say("evaluate")
    from recserve.offline import evaluation as ev

    reg = registry or Registry(cfg.registry_uri, cfg.registry.keep)
    reg.check_writable("evaluation")
    versions = dict(versions or {})
    k = cfg.eval.k
    train, test, items = train_part(cfg, dataset_dir, cfg.eval.holdout)
    data = build_interactions(train, test, items, event_weights(dataset_dir))
    if len(data.test_users) == 0:
        raise ValueError(
            f"no user in {dataset_dir} has held-out events (users need {cfg.eval.min_user_events}+ "
            f"events): nothing to evaluate"
        )
    log(f"{data.n_users} users, {data.n_items} items, {len(data.test_users)} test users")
    results: dict[str, dict] = {}

    def run(name, fn):
        t = time.perf_counter()
        recs = fn()
        m = ev.ranking_metrics(recs, data.test_items, data.n_items, k)
        m = {
            "recall_at_10" if k == 10 else f"recall_at_{k}": m[f"recall_at_{k}"],
            "ndcg_at_10" if k == 10 else f"ndcg_at_{k}": m[f"ndcg_at_{k}"],
            "coverage": m["coverage"],
            "users": m["users"],
            "seconds": round(time.perf_counter() - t, 3),
        }
        results[name] = m
        log(
            f"{name:17s} recall@{k}={m[f'recall_at_{k}']:.4f} ndcg@{k}={m[f'ndcg_at_{k}']:.4f} "
            f"coverage={m['coverage']:.4f} ({m['seconds']:.1f}s)"
        )

    if "popularity" in methods:
        run("popularity", lambda: ev.popularity_recs(data, k))
    if "als" in methods:
        e = cfg.eval
        run("als", lambda: ev.als_recs(data, k, e.als_factors, e.als_iterations, e.als_regularization))
    if "ease" in methods:
        run("ease", lambda: ev.ease_recs(data, k, cfg.eval.ease_lambda))

    if {"retrieval", "retrieval_ranker", "anonymous_session", "sequence_model"} & set(methods):
        view = GenerationView(cfg, reg, versions, data, items)
        versions.update(view.versions)
        emb, shards, item_pos, scorer = view.emb, view.shards, view.item_pos, view.scorer
        if scorer is not None:
            if "sequence_model" in methods:
                run("sequence_model", lambda: _sequence_recs(scorer, data, k))
        else:
            log(
                f"embeddings {versions['embeddings']} have no sequence model (sequence.enabled false?): "
                f"no sequence_model row, and the ranker's sequence feature is 0"
            )
        seen = view.seen(data.test_users)
        n_cand = cfg.ranker.candidates if "retrieval_ranker" in methods else k
        t = time.perf_counter()
        cand, cand_sc = view.retrieve(data.test_users, n_cand)
        log(
            f"index search: {len(data.test_users)} users x top-{n_cand} over {shards.manifest['num_shards']} shards "
            f"({time.perf_counter() - t:.1f}s)"
        )
        id_to_dense = view.id_to_dense
        if "retrieval" in methods:
            run("retrieval", lambda: cand[:, :k])
        if "retrieval_ranker" in methods:
            run("retrieval_ranker", lambda: view.ranked(data.test_users, k, (cand, cand_sc)))
            versions["ranker"] = view.versions["ranker"]
        if "anonymous_session" in methods:
            from recserve.ranking.content import mean_pair_score

            # the anonymous rows' fold-in aims at the pairs whose item the embeddings know too
            tm = data.matrix.tocoo()
            urow = _embedding_rows(emb, data)[tm.row]
            known = (urow >= 0) & (item_pos[tm.col] >= 0)
            session_target = mean_pair_score(
                emb["user_vectors"], emb["item_vectors"], urow[known], item_pos[tm.col][known]
            )
            queries, sessions = _session_queries(cfg, data, train, emb, item_pos, id_to_dense, session_target)
            run("anonymous_session", lambda: _dense(shards.search(queries, k, exclude=sessions)[0], id_to_dense))
            # the same session vectors with the user's whole training history excluded, as the other
            # rows have it: what the session vector is worth, apart from not knowing the history
            run("session_vector_seen_excluded", lambda: _dense(shards.search(queries, k, exclude=seen)[0], id_to_dense))

    report = {
        "dataset": str(dataset_dir),
        "dataset_source": dataset_meta(dataset_dir).get("source"),
        "k": k,
        "holdout": cfg.eval.holdout,
        "test_users": int(len(data.test_users)),
        "n_items": int(data.n_items),
        "versions": versions,
        **results,
    }
    if "retrieval_ranker" in results and "ease" in results and "popularity" in results:
        rr, ez, pp = (results[m][f"recall_at_{k}"] for m in ("retrieval_ranker", "ease", "popularity"))
        report["targets"] = {
            "ranker_vs_ease": rr / ez if ez else None,
            "ranker_vs_popularity": rr / pp if pp else None,
            "ranker_ge_ease": rr >= ez,
            "ranker_ge_1_3x_popularity": rr >= 1.3 * pp,
        }
    with tempfile.TemporaryDirectory() as tmp:
        write_report(report, Path(tmp), k)
        v = reg.publish(
            "evaluation",
            tmp,
            metrics={m: results[m] for m in results},
            lineage={**versions, "dataset": str(Path(dataset_dir).resolve())},
        )
        report["version"] = v
        if out:
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2))
            shutil.copy(Path(tmp) / "eval.md", out.with_suffix(".md"))
            shutil.copy(Path(tmp) / "eval.png", out.with_suffix(".png"))
    log(f"published evaluation {v}")
    return report


class GenerationView:
    """One generation (embeddings, index, ranker versions; latest where not named) ranking for the
    users of `data`, from their history in it, as serving does: the query the trained vector moved
    toward the user's last items, the index's candidates with the seen items excluded, the sequence
    model's candidates beside them, the ranker's order. What `evaluate` measures and what the
    retrain's gate (recserve.offline.gate) compares two generations with on the same split."""

    def __init__(self, cfg: Config, reg: Registry, versions: dict | None, data, items):
        from recserve.index.build import ShardSet
        from recserve.ranking.ranker import load_model, ranking_inputs
        from recserve.ranking.sequence import SequenceScorer

        versions = dict(versions or {})
        self.cfg, self.data = cfg, data
        self.emb = load_embeddings(reg, versions.get("embeddings"))
        self.versions = {
            "embeddings": self.emb["version"],
            "index": reg.resolve("index", versions.get("index")),
        }
        self._ranker = versions.get("ranker")
        self.shards = ShardSet(reg.fetch("index", self.versions["index"]))
        self.item_pos, self.ivec = aligned_items(self.emb, data)
        self.inp = ranking_inputs(data, items, self.ivec, cfg.ranker)
        scorer = SequenceScorer.load(reg.fetch("embeddings", self.versions["embeddings"]), device="cpu")
        self.scorer = scorer.remap(self.item_pos) if scorer is not None else None
        self._model = None

        def model():
            self.versions["ranker"] = reg.resolve("ranker", self._ranker)
            return load_model(ranker_path(reg, self.versions["ranker"]))[0]

        self._load_model = model
        self.id_to_dense = {int(i): d for d, i in enumerate(data.item_ids)}

    def seen(self, users: np.ndarray) -> list[np.ndarray]:
        m = self.data.matrix
        return [self.data.item_ids[m.indices[m.indptr[u] : m.indptr[u + 1]]] for u in users]

    def queries(self, users: np.ndarray) -> np.ndarray:
        return serving_queries(self.cfg, self.data, self.inp, self.emb, self.ivec, users)

    def retrieve(self, users: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's top `n` unseen candidates of each user (dense indexes, -1: none) and scores."""
        ids, sc = self.shards.search(self.queries(users), n, exclude=self.seen(users))
        return _dense(ids, self.id_to_dense), sc

    def ranked(self, users: np.ndarray, k: int, retrieved: tuple | None = None) -> np.ndarray:
        """Each user's top k (dense indexes) in the ranker's order."""
        from recserve.ranking.ranker import feature_tensor, rerank

        if self._model is None:
            self._model = self._load_model()
        cand, cand_sc = retrieved or self.retrieve(users, self.cfg.ranker.candidates)
        c, c_sc = sequence_source(
            self.cfg,
            self.data,
            users,
            self.queries(users),
            self.ivec,
            cand,
            cand_sc,
            self.scorer,
            [self.inp.contexts[u].history for u in users],
        )
        X = feature_tensor(self.inp, users, c, c_sc, self.cfg.ranker, self.scorer)
        return rerank(self._model, X, c, k)


def aligned_items(emb: dict, data) -> tuple[np.ndarray, np.ndarray]:
    """(item_pos, item vectors) over `data`'s dense items: each one's row in the embeddings
    artifact (-1: not in it) and its vector there (zeros when not)."""
    item_pos = np.full(data.n_items, -1, dtype=np.int64)
    common = np.isin(data.item_ids, emb["item_ids"])
    item_pos[common] = np.searchsorted(emb["item_ids"], data.item_ids[common])
    ivec = np.zeros((data.n_items, emb["item_vectors"].shape[1]), dtype=np.float32)
    ivec[common] = emb["item_vectors"][item_pos[common]]
    return item_pos, ivec


def _embedding_rows(emb: dict, data) -> np.ndarray:
    """Each of `data`'s dense users' row in the embeddings artifact (-1: not in it)."""
    e_user = {int(u): i for i, u in enumerate(emb["user_ids"])}
    return np.array([e_user.get(int(u), -1) for u in data.user_ids], dtype=np.int64)


def serving_queries(cfg: Config, data, inp, emb: dict, ivec: np.ndarray, users: np.ndarray) -> np.ndarray:
    """The retrieval query serving sends for each of `users` (dense): the user's trained vector
    moved toward the fold-in of their last items (zeros for a user the embeddings lack)."""
    from recserve.ranking.content import blended_queries, mean_pair_score

    rows = _embedding_rows(emb, data)
    uvec = np.zeros((len(users), emb["user_vectors"].shape[1]), dtype=np.float32)
    have = rows[users] >= 0
    uvec[have] = emb["user_vectors"][rows[users][have]]
    tm = data.matrix.tocoo()
    urow = rows[tm.row]
    ok = urow >= 0
    target = mean_pair_score(emb["user_vectors"], ivec, urow[ok], tm.col[ok])
    return blended_queries(
        uvec,
        np.arange(len(uvec)),
        [inp.contexts[u] for u in users],
        ivec,
        cfg.stream.vector_decay,
        target,
        cfg.ranker.session_weight,
        cfg.ranker.session_items,
    )


def _sequence_recs(scorer, data, k: int) -> np.ndarray:
    """The sequence model alone (the one trained with the embeddings): each test user's top k next
    items after their training history, which is excluded as the other rows have it."""
    from recserve.ranking.sequence import ordered_histories

    hist = ordered_histories(data.train, data.n_users)
    scores = scorer.log_probs(scorer.states([hist[u] for u in data.test_users]))
    for r, u in enumerate(data.test_users):
        scores[r, data.matrix.indices[data.matrix.indptr[u] : data.matrix.indptr[u + 1]]] = -np.inf
    return np.argsort(-scores, axis=1)[:, :k]


def _session_queries(
    cfg: Config, data, train, emb: dict, item_pos: np.ndarray, id_to_dense: dict, target: float
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each test user as an anonymous visitor: (the user vectors folded in from their last
    SESSION_ITEMS training items' vectors, as serving does, and those sessions' item ids)."""
    from recserve.ranking.content import fold_in

    last = (
        train.sort_values("ts", kind="stable")
        .groupby("user_id")["item_id"]
        .apply(lambda s: s.tail(SESSION_ITEMS).tolist())
        .to_dict()
    )
    queries = np.zeros((len(data.test_users), emb["user_vectors"].shape[1]), dtype=np.float32)
    sessions = []
    for r, u in enumerate(data.test_users):
        session = [int(i) for i in last.get(int(data.user_ids[u]), [])]
        pos = item_pos[[id_to_dense[i] for i in session if i in id_to_dense]]
        pos = pos[pos >= 0]
        if len(pos):
            queries[r] = fold_in(emb["item_vectors"][pos], cfg.stream.vector_decay, target)
        sessions.append(np.array(session, dtype=np.int64))
    return queries, sessions


def _dense(ids: np.ndarray, id_to_dense: dict) -> np.ndarray:
    """Item ids as the evaluation's dense indexes (-1: unknown)."""
    return np.vectorize(lambda x: id_to_dense.get(int(x), -1), otypes=[np.int64])(ids) if ids.size else ids


def markdown_table(report: dict, k: int = 10) -> str:
    rows = [f"| method | Recall@{k} | NDCG@{k} | coverage |", "|---|---:|---:|---:|"]
    for m in METHODS:
        if m in report:
            r = report[m]
            rows.append(f"| {m} | {r[f'recall_at_{k}']:.4f} | {r[f'ndcg_at_{k}']:.4f} | {r['coverage']:.4f} |")
    return "\n".join(rows)


def write_report(report: dict, out_dir: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    (out_dir / "eval.md").write_text(markdown_table(report, k) + "\n")
    names = [m for m in METHODS if m in report]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key in zip(axes, (f"recall_at_{k}", f"ndcg_at_{k}", "coverage")):
        ax.bar(names, [report[m][key] for m in names], color="#4477aa")
        ax.set_title(key)
        ax.tick_params(axis="x", rotation=35)
    fig.suptitle(
        f"{report['dataset_source']}: {report['test_users']} test users, last "
        f"{report['holdout']:.0%} of each user's events held out"
    )
    fig.tight_layout()
    fig.savefig(out_dir / "eval.png", dpi=100)
    plt.close(fig)

"""The offline chain, as functions the Ray jobs in `pipelines/` (and `recserve eval`) call:

generate/import data -> train_embeddings -> build_index -> train_ranker -> evaluate

Each publishes one registry version with metrics and lineage. The registry is checked for
writability before any work, and a failure at any point leaves `latest` where it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from recserve.artifacts import (
    DATASET_ITEMS,
    DATASET_META,
    ITEMS_META_FILE,
    RANKER_FILE,
    ROUTING_FILE,
    load_embeddings,
    ranker_path,
    save_embeddings,
)
from recserve.config import Config
from recserve.offline.data import dataset_meta, read_events, read_items, temporal_split
from recserve.ops.stack import ensure_ray
from recserve.ranking.embeddings import item_log_frequency
from recserve.ranking.interactions import Interactions, build_interactions
from recserve.registry import Registry

Progress = Callable[[str], None]


def say(stage: str) -> Progress:
    def p(msg: str) -> None:
        print(f"[{stage}] {msg}", flush=True)

    return p


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    d = Path(dataset_dir)
    h = hashlib.sha256((d / DATASET_META).read_bytes())
    for f in sorted((d / "events").glob("*.parquet")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def train_part(
    cfg: Config, dataset_dir: str | Path, holdout: float, gone: dict[int, float] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, test, items): the temporal split's train part when holdout > 0, else all events;
    without the events of forgotten users (`gone`, else the tombstones in Redis now)."""
    from recserve.privacy import drop_forgotten, forgotten_for_training

    events, items = read_events(dataset_dir), read_items(dataset_dir)
    gone = forgotten_for_training(cfg.redis_url) if gone is None else gone
    if gone:  # users forgotten by DELETE /v1/users/{id}: their events up to then are left out
        events = drop_forgotten(events, gone).reset_index(drop=True)
    if holdout > 0:
        train, test = temporal_split(events, holdout, cfg.eval.min_user_events)
    else:
        train, test = events, events.iloc[:0]
    return train, test, items


def _lineage(dataset_dir, holdout: float, **parents) -> dict:
    return {
        "dataset": str(Path(dataset_dir).resolve()),
        "dataset_fingerprint": dataset_fingerprint(dataset_dir),
        "dataset_source": dataset_meta(dataset_dir).get("source"),
        "holdout": holdout,
        **parents,
    }


# ---------------------------------------------------------------------------------- embeddings
def _train_mf_remote(pairs: tuple[np.ndarray, np.ndarray], n_users: int, n_items: int, cfg: Config, label: str):
    """Train MF in a Ray task that reads its batches from a Ray Dataset."""
    import ray

    from recserve.ranking.embeddings import train_factorization

    uidx, iidx = pairs
    ds = ray.data.from_numpy(np.stack([uidx, iidx], axis=1).astype(np.int64))
    logq = item_log_frequency(iidx, n_items)
    ecfg = cfg.embeddings

    # a fraction of a CPU: the task mostly waits on its own Ray Data shuffle/read tasks, which need
    # whole CPUs — holding one here starves them on a 2-core head that also serves
    @ray.remote(num_cpus=0.25)
    def train_task(ds, n_users, n_items, logq, ecfg, label):
        ray.data.DataContext.get_current().enable_progress_bars = False  # one line per epoch instead

        def batches(epoch):
            # a full Ray Data shuffle per epoch: every epoch sees the pairs in a new order
            for b in ds.random_shuffle(seed=ecfg.seed + epoch).iter_torch_batches(batch_size=ecfg.batch_size):
                yield {"uidx": b["data"][:, 0], "iidx": b["data"][:, 1]}

        def progress(rec):
            print(
                f"[{label}] epoch {rec['epoch']}/{rec['epochs']} loss={rec['loss']:.4f} "
                f"({rec['seconds']:.1f}s, {rec['examples']} pairs)",
                flush=True,
            )

        return train_factorization(batches, n_users, n_items, logq, ecfg, progress)

    return ray.get(train_task.remote(ds, n_users, n_items, logq, ecfg, label))


def sequence_settings(cfg: Config):
    from recserve.ranking.sequence import SequenceSettings

    sc = cfg.sequence
    return SequenceSettings(
        dim=sc.dim,
        max_len=sc.max_len,
        blocks=sc.blocks,
        epochs=sc.epochs,
        batch_size=sc.batch_size,
        lr=sc.lr,
        max_seconds=sc.max_seconds,
        negatives=sc.negatives,
        dropout=sc.dropout,
    )


def _train_sequence_remote(cfg: Config, data: Interactions, label: str, log: Progress):
    """The sequence model on `data`'s training events in time order, in a Ray task (progress
    printed from it per epoch); a SequenceScorer over `data`'s dense items."""
    import ray

    from recserve.ranking.sequence import SeqModel, SequenceScorer, ordered_histories, train_sequence_model

    st = sequence_settings(cfg)

    @ray.remote(num_cpus=1)
    def fit(histories, n_items, st):
        import torch

        torch.set_num_threads(2)

        def progress(rec):
            print(
                f"[{label}] "
                + (
                    f"epoch {rec['epoch']}/{rec['epochs']} loss={rec['loss']:.4f} ({rec['seconds']:.0f}s)"
                    if "epoch" in rec
                    else rec["stopped"]
                ),
                flush=True,
            )

        return train_sequence_model(histories, n_items, st, progress).state_dict()

    t = time.perf_counter()
    state = ray.get(fit.remote(ordered_histories(data.train, data.n_users), data.n_items, st))
    model = SeqModel(data.n_items, st)
    model.load_state_dict(state)
    log(f"sequence model trained ({time.perf_counter() - t:.0f}s)")
    return SequenceScorer(model, st, device="cpu")


def sequence_source(
    cfg: Config,
    data: Interactions,
    users: np.ndarray,
    queries: np.ndarray,
    item_vectors: np.ndarray,
    cand: np.ndarray,
    scores: np.ndarray,
    sequence,
    histories: list,
) -> tuple[np.ndarray, np.ndarray]:
    """The index's candidates of `users` (rows of `queries`) with the sequence model's best
    `sequence.candidates` unseen items after them, scored by the query as the index scores (what
    serving does in Recommender.features)."""
    from recserve.ranking.sequence import top_unseen, with_sequence_candidates

    if sequence is None or cfg.sequence.candidates <= 0:
        return cand, scores
    m = data.matrix
    seen = [m.indices[m.indptr[u] : m.indptr[u + 1]] for u in users.tolist()]
    top = top_unseen(sequence.log_probs(sequence.states(histories)), seen, cfg.sequence.candidates)
    extra_sc = np.einsum("ud,umd->um", queries, item_vectors[np.maximum(top, 0)])
    return with_sequence_candidates(cand, scores, top, extra_sc)


def interaction_pairs(data: Interactions) -> tuple[np.ndarray, np.ndarray]:
    m = data.matrix.tocoo()
    return m.row.astype(np.int64), m.col.astype(np.int64)


def train_embeddings(
    cfg: Config,
    dataset_dir: str | Path,
    holdout: float = 0.0,
    registry: Registry | None = None,
    log: Progress | None = None,
) -> str:
    log = log or say("train_embeddings")
    reg = registry or Registry(cfg.registry_uri, cfg.registry.keep)
    reg.check_writable("embeddings")
    ensure_ray(cfg)
    t0 = time.perf_counter()
    from recserve.privacy import forgotten_for_training

    gone = forgotten_for_training(cfg.redis_url, log)
    train, _, items = train_part(cfg, dataset_dir, holdout, gone)
    data = build_interactions(train, train.iloc[:0], items)
    log(
        f"{data.n_users} users, {data.n_items} items, {data.matrix.nnz} user-item pairs"
        + (f" ({len(gone)} forgotten users' events left out)" if gone else "")
    )
    res = _train_mf_remote(interaction_pairs(data), data.n_users, data.n_items, cfg, "train_embeddings")
    with tempfile.TemporaryDirectory() as tmp:
        save_embeddings(
            tmp,
            user_ids=data.user_ids,
            item_ids=data.item_ids,
            user_vectors=res.user_vectors,
            item_vectors=res.item_vectors,
        )
        # the item-content encoder, for items that will arrive with content and no vector
        from recserve.ranking.content import ContentEncoder

        by_id = items.set_index("item_id").reindex(data.item_ids)
        ContentEncoder.fit(
            by_id["title"].fillna("").tolist(),
            by_id["category"].fillna("").tolist(),
            by_id["attributes"].tolist() if "attributes" in by_id else [None] * len(by_id),
            res.item_vectors,
        ).save(tmp)
        if cfg.sequence.enabled:  # the sequence model, over the same items in the same dense order
            from recserve.ranking.sequence import save_sequence

            scorer = _train_sequence_remote(cfg, data, "train_embeddings/sequence", log)
            save_sequence(scorer.model, scorer.settings, tmp)
        v = reg.publish(
            "embeddings",
            tmp,
            metrics={
                "final_loss": res.history[-1]["loss"],
                "seconds": time.perf_counter() - t0,
                "n_users": data.n_users,
                "n_items": data.n_items,
            },
            params=cfg.embeddings.model_dump(),
            lineage=_lineage(dataset_dir, holdout, forgotten={str(u): t for u, t in gone.items()}),
            extra={
                "history": res.history,
                "dim": int(res.item_vectors.shape[1]),
                "sequence": cfg.sequence.model_dump() if cfg.sequence.enabled else None,
            },
        )
    log(f"published embeddings {v}")
    return v


# ---------------------------------------------------------------------------------- index
def build_index(
    cfg: Config,
    embeddings_version: str | None = None,
    registry: Registry | None = None,
    log: Progress | None = None,
) -> str:
    log = log or say("build_index")
    import ray

    from recserve.index.hashing import even_ranges, shard_of

    reg = registry or Registry(cfg.registry_uri, cfg.registry.keep)
    reg.check_writable("index")
    emb = load_embeddings(reg, embeddings_version)
    ensure_ray(cfg)
    ids, vecs = emb["item_ids"], emb["item_vectors"]
    if not np.isfinite(vecs).all():
        raise ValueError(f"embeddings {emb['version']} hold NaN or infinite vectors; retrain them")
    icfg = cfg.index
    ranges = even_ranges(icfg.num_shards)
    owner = shard_of(ids, ranges)
    t0 = time.perf_counter()

    @ray.remote(num_cpus=1)
    def build_one(s, ids_s, vecs_s, icfg):
        import faiss

        from recserve.index.build import build_shard

        idx = build_shard(ids_s, vecs_s, icfg)
        return s, faiss.serialize_index(idx)

    with tempfile.TemporaryDirectory() as tmp:
        futures = [build_one.remote(s, ids[owner == s], vecs[owner == s], icfg) for s in range(icfg.num_shards)]
        shards = []
        pending = list(futures)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            s, blob = ray.get(done[0])
            fname = f"shard_{s:04d}.faiss"
            Path(tmp, fname).write_bytes(blob.tobytes())
            lo, hi = ranges[s]
            shards.append({"shard": s, "hash_lo": lo, "hash_hi": hi, "file": fname, "count": int((owner == s).sum())})
            log(f"shard {len(shards)}/{icfg.num_shards} built ({shards[-1]['count']} vectors)")
        from recserve.index.build import routing_manifest

        manifest = routing_manifest(icfg, vecs.shape[1], shards, len(ids), embeddings_version=emb["version"])
        Path(tmp, ROUTING_FILE).write_text(json.dumps(manifest, indent=2))
        _write_items_meta(reg, emb["version"], ids, Path(tmp) / ITEMS_META_FILE)
        seconds = time.perf_counter() - t0
        v = reg.publish(
            "index",
            tmp,
            metrics={"build_s": seconds, "count": int(len(ids))},
            params=icfg.model_dump(),
            lineage={"embeddings": emb["version"]},
            extra={"routing": {k: manifest[k] for k in ("kind", "metric", "dim", "num_shards", "shards")}},
        )
    log(f"published index {v} ({icfg.num_shards} shards, {len(ids)} vectors, {seconds:.1f}s)")
    return v


def _write_items_meta(reg: Registry, emb_version: str, ids: np.ndarray, path: Path) -> None:
    """Category and attributes of the indexed items (from the embeddings' dataset), so that the
    shards can filter inside the search."""
    ds = reg.manifest("embeddings", emb_version).get("lineage", {}).get("dataset")
    if not ds or not (Path(ds) / DATASET_ITEMS).exists():
        return
    items = read_items(ds).set_index("item_id")
    items = items[items.index.isin(ids)]
    meta = {
        str(i): {"category": c, "attributes": json.loads(a) if a else {}}
        for i, c, a in zip(items.index.tolist(), items["category"].tolist(), items["attributes"].tolist())
    }
    path.write_text(json.dumps(meta))


# ---------------------------------------------------------------------------------- ranker
def _ranker_examples(
    cfg: Config,
    data: Interactions,
    items: pd.DataFrame,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    sequence=None,
):
    from recserve.ranking.content import blended_queries, mean_pair_score
    from recserve.ranking.ranker import feature_tensor, ranking_inputs, retrieve_exact

    rcfg = cfg.ranker
    inp = ranking_inputs(data, items, item_vectors, rcfg)
    m = data.matrix.tocoo()
    queries = user_vectors.copy()
    queries[data.test_users] = blended_queries(
        user_vectors,
        data.test_users,
        inp.contexts,
        item_vectors,
        cfg.stream.vector_decay,
        mean_pair_score(user_vectors, item_vectors, m.row, m.col),
        rcfg.session_weight,
        rcfg.session_items,
    )
    cand, sc = retrieve_exact(queries, item_vectors, data.matrix, data.test_users, rcfg.candidates)
    cand, sc = sequence_source(
        cfg,
        data,
        data.test_users,
        queries[data.test_users],
        item_vectors,
        cand,
        sc,
        sequence,
        [inp.contexts[u].history for u in data.test_users],
    )
    X = feature_tensor(inp, data.test_users, cand, sc, rcfg, sequence)
    Y = np.zeros(cand.shape, dtype=bool)
    for r, rel in enumerate(data.test_items):
        Y[r] = np.isin(cand[r], rel)
    return X, Y, cand


def train_ranker(
    cfg: Config,
    dataset_dir: str | Path,
    holdout: float = 0.0,
    registry: Registry | None = None,
    embeddings_version: str | None = None,
    log: Progress | None = None,
) -> str:
    """Train the ranker on the future of the training data: the training events are split again
    in time; embeddings are trained on the earlier part, and the ranker learns which of their
    candidates the user went on to take."""
    log = log or say("train_ranker")
    import ray

    from recserve.ranking.features import FEATURE_NAMES
    from recserve.ranking.ranker import save_model, train_ranker_model

    reg = registry or Registry(cfg.registry_uri, cfg.registry.keep)
    reg.check_writable("ranker")
    emb_version = reg.resolve("embeddings", embeddings_version)
    ensure_ray(cfg)
    t0 = time.perf_counter()
    train, _, items = train_part(cfg, dataset_dir, holdout)
    inner, target = temporal_split(train, cfg.eval.holdout, cfg.eval.min_user_events)
    data = build_interactions(inner, target, items)
    if len(data.test_users) == 0:
        raise ValueError(
            f"no user in {dataset_dir} has {cfg.eval.min_user_events}+ events: too little data to train a ranker"
        )
    log(f"inner split: {len(inner)} events to learn from, {len(target)} future events as labels")
    res = _train_mf_remote(interaction_pairs(data), data.n_users, data.n_items, cfg, "train_ranker/embeddings")
    # the sequence model of the inner split too: trained on the labels' future, its feature would lie
    sequence = _train_sequence_remote(cfg, data, "train_ranker/sequence", log) if cfg.sequence.enabled else None
    X, Y, cand = _ranker_examples(cfg, data, items, res.user_vectors, res.item_vectors, sequence)
    cand_recall = float(Y.sum(1).mean())
    log(f"{len(X)} users x {X.shape[1]} candidates, {cand_recall:.2f} future items per candidate list")

    @ray.remote(num_cpus=1)
    def fit(X, Y, mask, rcfg):
        def progress(rec):
            if rec["member"] == 0:
                print(
                    f"[train_ranker] held-out lists' loss lowest after {rec['epoch']} of {rec['epochs']} epochs "
                    f"({rec['loss']:.4f}): every member learns that long",
                    flush=True,
                )
                return
            print(
                f"[train_ranker] member {rec['member']}/{rec['members']} epoch {rec['epoch']}/{rec['epochs']} "
                f"loss={rec['loss']:.4f}",
                flush=True,
            )

        return train_ranker_model(X, Y, mask, rcfg, progress)

    model, history = ray.get(fit.remote(X, Y, cand >= 0, cfg.ranker))
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, Path(tmp) / RANKER_FILE, {"embeddings_version": emb_version})
        v = reg.publish(
            "ranker",
            tmp,
            metrics={
                "final_loss": history[-1]["loss"],
                "seconds": time.perf_counter() - t0,
                "epochs": history[-1]["epochs"],
                "train_users": int(len(X)),
                "positives_per_list": cand_recall,
            },
            params=cfg.ranker.model_dump(),
            lineage=_lineage(dataset_dir, holdout, embeddings=emb_version),
            extra={"history": history, "features": FEATURE_NAMES},
        )
    log(f"published ranker {v}")
    return v


# ---------------------------------------------------------------------------------- evaluate
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
    from recserve.index.build import ShardSet
    from recserve.offline import evaluation as ev
    from recserve.ranking.ranker import feature_tensor, load_model, ranking_inputs, rerank

    reg = registry or Registry(cfg.registry_uri, cfg.registry.keep)
    reg.check_writable("evaluation")
    versions = dict(versions or {})
    k = cfg.eval.k
    train, test, items = train_part(cfg, dataset_dir, cfg.eval.holdout)
    data = build_interactions(train, test, items)
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
        emb = load_embeddings(reg, versions.get("embeddings"))
        versions["embeddings"] = emb["version"]
        versions["index"] = reg.resolve("index", versions.get("index"))
        shards = ShardSet(reg.fetch("index", versions["index"]))
        item_pos, ivec = aligned_items(emb, data)
        inp = ranking_inputs(data, items, ivec, cfg.ranker)
        from recserve.ranking.sequence import SequenceScorer

        scorer = SequenceScorer.load(reg.fetch("embeddings", versions["embeddings"]), device="cpu")
        if scorer is not None:
            scorer = scorer.remap(item_pos)
            if "sequence_model" in methods:
                run("sequence_model", lambda: _sequence_recs(scorer, data, k))
        else:
            log(
                f"embeddings {versions['embeddings']} have no sequence model (sequence.enabled false?): "
                f"no sequence_model row, and the ranker's sequence feature is 0"
            )
        uvec = serving_queries(cfg, data, inp, emb, ivec, data.test_users)
        seen = [
            data.item_ids[data.matrix.indices[data.matrix.indptr[u] : data.matrix.indptr[u + 1]]]
            for u in data.test_users
        ]
        n_cand = cfg.ranker.candidates if "retrieval_ranker" in methods else k
        t = time.perf_counter()
        cand_ids, cand_sc = shards.search(uvec, n_cand, exclude=seen)
        log(
            f"index search: {len(uvec)} users x top-{n_cand} over {shards.manifest['num_shards']} shards "
            f"({time.perf_counter() - t:.1f}s)"
        )
        id_to_dense = {int(i): d for d, i in enumerate(data.item_ids)}
        cand = _dense(cand_ids, id_to_dense)
        if "retrieval" in methods:
            run("retrieval", lambda: cand[:, :k])
        if "retrieval_ranker" in methods:
            versions["ranker"] = reg.resolve("ranker", versions.get("ranker"))
            model, _ = load_model(ranker_path(reg, versions["ranker"]))

            def ranked():
                c, c_sc = sequence_source(
                    cfg,
                    data,
                    data.test_users,
                    uvec,
                    ivec,
                    cand,
                    cand_sc,
                    scorer,
                    [inp.contexts[u].history for u in data.test_users],
                )
                X = feature_tensor(inp, data.test_users, c, c_sc, cfg.ranker, scorer)
                return rerank(model, X, c, k)

            run("retrieval_ranker", ranked)
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

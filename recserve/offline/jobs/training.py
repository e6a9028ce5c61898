"""The learners the stages run in Ray tasks: matrix factorisation over Ray Data batches, the
sequence model, and the sequence model as a retrieval source beside the index."""

from __future__ import annotations

import time

import numpy as np

from recserve.config import Config
from recserve.offline.jobs.common import Progress, epoch_line
from recserve.ranking.embeddings import item_log_frequency
from recserve.ranking.interactions import Interactions


def train_mf_remote(pairs: tuple[np.ndarray, np.ndarray], n_users: int, n_items: int, cfg: Config, label: str):
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
        # one line per epoch instead of Ray Data's bars: the dataset carries the driver's context
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds.context.enable_progress_bars = False

        def batches(epoch):
            # a full Ray Data shuffle per epoch: every epoch sees the pairs in a new order
            for b in ds.random_shuffle(seed=ecfg.seed + epoch).iter_torch_batches(batch_size=ecfg.batch_size):
                yield {"uidx": b["data"][:, 0], "iidx": b["data"][:, 1]}

        def progress(rec):
            detail = f"loss={rec['loss']:.4f} ({rec['seconds']:.1f}s, {rec['examples']} pairs)"
            print(epoch_line(label, rec["epoch"], rec["epochs"], detail), flush=True)

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


def train_sequence_remote(cfg: Config, data: Interactions, label: str, log: Progress):
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
            if "epoch" in rec:
                detail = f"loss={rec['loss']:.4f} ({rec['seconds']:.0f}s)"
                print(epoch_line(label, rec["epoch"], rec["epochs"], detail), flush=True)
            else:
                print(f"[{label}] {rec['stopped']}", flush=True)

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
